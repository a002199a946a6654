package s3

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/lab/api"
	"github.com/bootcert/bootcert/internal/clock"
)

// TestChunkedPutStoresTheObject: a PutObject with a trailing checksum (what
// the SDK sends with the default RequestChecksumCalculation of
// config.LoadDefaultConfig, e.g. from bootcertctl cloud setup) is stored as
// the object's bytes, not as the aws-chunked framing, with and without
// signature checking.
func TestChunkedPutStoresTheObject(t *testing.T) {
	body := []byte("device_id,bootstrap_sha256,final_csr\ngw-0001,ab12,\n")
	for _, creds := range []*api.Credentials{nil, {AccessKeyID: "AK", SecretAccessKey: "SK"}} {
		e := startWith(t, t.TempDir(), clock.NewFake(time.Now()), creds, "AK", "SK")
		var sent http.Header
		ctx := context.Background()
		_, err := e.client.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("trust/allow-list.csv"),
			Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))}, func(o *awss3.Options) {
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenSupported
			o.HTTPClient = recordingClient{e.http, &sent}
		})
		if err != nil {
			t.Fatalf("PutObject (credentials %v): %v", creds != nil, err)
		}
		if sent.Get("Content-Encoding") != "aws-chunked" {
			t.Logf("the SDK did not send aws-chunked (Content-Encoding %q): nothing to decode", sent.Get("Content-Encoding"))
		}
		out, err := e.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("trust/allow-list.csv")})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(out.Body)
		out.Body.Close()
		if !bytes.Equal(got, body) {
			t.Errorf("stored object (credentials %v) = %q, want %q", creds != nil, got, body)
		}
	}
}

type recordingClient struct {
	c    *http.Client
	sent *http.Header
}

func (r recordingClient) Do(req *http.Request) (*http.Response, error) {
	*r.sent = req.Header.Clone()
	return r.c.Do(req)
}

func TestReadChunksRejectsBadFraming(t *testing.T) {
	for _, in := range []string{"zz\r\nabc\r\n0\r\n\r\n", "3\r\nab", "3\r\nabcX\r\n0\r\n\r\n"} {
		if _, err := readChunks(bufioReader(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	got, err := readChunks(bufioReader("3;chunk-signature=00\r\nabc\r\n2\r\nde\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n"))
	if err != nil || string(got) != "abcde" {
		t.Errorf("got %q, %v", got, err)
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
