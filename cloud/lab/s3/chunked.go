package s3

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// maxChunkedBody bounds a decoded aws-chunked body (the lab stores small
// objects: certificates, allow lists, CRLs).
const maxChunkedBody = 64 << 20

// decodeChunked replaces an aws-chunked request body (SigV4 streaming, as
// the SDK sends a PutObject with a trailing checksum:
// X-Amz-Content-Sha256: STREAMING-..., Content-Encoding: aws-chunked) by the
// object's bytes, as S3 does
// (https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html).
// gofakes3 would otherwise store the chunk framing and trailers as the
// object. Chunk signatures are not checked (the seed signature is, when the
// store has credentials); trailing checksums are dropped.
func decodeChunked(r *http.Request) error {
	sha := r.Header.Get("X-Amz-Content-Sha256")
	enc := r.Header.Get("Content-Encoding")
	if !strings.HasPrefix(sha, "STREAMING-") && !strings.Contains(enc, "aws-chunked") {
		return nil
	}
	body, err := readChunks(bufio.NewReader(io.LimitReader(r.Body, maxChunkedBody+1<<20)))
	r.Body.Close()
	if err != nil {
		return fmt.Errorf("aws-chunked body: %w", err)
	}
	if want := r.Header.Get("X-Amz-Decoded-Content-Length"); want != "" && want != strconv.Itoa(len(body)) {
		return fmt.Errorf("aws-chunked body: %d bytes decoded, X-Amz-Decoded-Content-Length says %s", len(body), want)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	r.Header.Del("X-Amz-Decoded-Content-Length")
	r.Header.Del("X-Amz-Trailer")
	r.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
	var rest []string
	for _, e := range strings.Split(enc, ",") {
		if e = strings.TrimSpace(e); e != "" && e != "aws-chunked" {
			rest = append(rest, e)
		}
	}
	if len(rest) == 0 {
		r.Header.Del("Content-Encoding")
	} else {
		r.Header.Set("Content-Encoding", strings.Join(rest, ","))
	}
	return nil
}

// readChunks reads "SIZE-HEX[;ext]\r\nDATA\r\n" chunks up to the zero-size
// one, then the trailers up to an empty line (or the end of the body).
func readChunks(br *bufio.Reader) ([]byte, error) {
	var out bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, fmt.Errorf("reading a chunk header: %w", err)
		}
		sizeHex, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), ";")
		size, err := strconv.ParseInt(strings.TrimSpace(sizeHex), 16, 64)
		if err != nil || size < 0 {
			return nil, fmt.Errorf("chunk size %q is not hexadecimal", sizeHex)
		}
		if size == 0 {
			break
		}
		if int64(out.Len())+size > maxChunkedBody {
			return nil, errors.New("larger than the lab's limit")
		}
		if _, err := io.CopyN(&out, br, size); err != nil {
			return nil, fmt.Errorf("reading a %d-byte chunk: %w", size, err)
		}
		if crlf, err := br.ReadString('\n'); err != nil || strings.TrimRight(crlf, "\r\n") != "" {
			return nil, errors.New("chunk data not followed by CRLF")
		}
	}
	for { // trailers (x-amz-checksum-*, x-amz-trailer-signature)
		line, err := br.ReadString('\n')
		if strings.TrimRight(line, "\r\n") == "" || err != nil {
			return out.Bytes(), nil
		}
	}
}
