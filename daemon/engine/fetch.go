package engine

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// A location is one small HTTPS GET (a presigned S3 URL). It is done here
// with crypto/tls and an HTTP/1.1 reader of its own rather than net/http,
// whose client (with HTTP/2) would add about 1 MiB to the daemon's binary
// and as much to its resident memory, for one request per rotation at most.

// Fetch downloads a location.
func (f *HTTPFetcher) Fetch(ctx context.Context, raw string) ([]byte, error) {
	u, err := CheckLocation(raw, f.AllowedHosts)
	if err != nil {
		return nil, err
	}
	max := f.MaxSize
	if max <= 0 {
		max = 64 << 10
	}
	to := f.Timeout
	if to <= 0 {
		to = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	for redirects := 0; ; redirects++ {
		resp, err := f.get(ctx, u, max)
		if err != nil {
			return nil, fmt.Errorf("fetching %s: %w", Redact(raw), err)
		}
		switch resp.code {
		case 200:
			return resp.body, nil
		case 301, 302, 303, 307, 308:
			if redirects == 3 {
				return nil, fmt.Errorf("fetching %s: too many redirects", Redact(raw))
			}
			next, err := u.Parse(resp.location)
			if err != nil || resp.location == "" {
				return nil, fmt.Errorf("fetching %s: HTTP %s without a usable Location", Redact(raw), resp.status)
			}
			if u, err = CheckLocation(next.String(), f.AllowedHosts); err != nil {
				return nil, fmt.Errorf("fetching %s: redirected: %w", Redact(raw), err)
			}
		default:
			return nil, fmt.Errorf("fetching %s: HTTP %s", Redact(raw), resp.status)
		}
	}
}

type response struct {
	code     int
	status   string // "403 Forbidden"
	location string
	body     []byte
}

// get is one GET over a new TLS connection (Connection: close).
func (f *HTTPFetcher) get(ctx context.Context, u *url.URL, max int64) (*response, error) {
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	d := &tls.Dialer{Config: &tls.Config{RootCAs: f.RootCAs, ServerName: u.Hostname(), MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := "GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: bootcertd\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return nil, ctxErr(ctx, err)
	}
	resp, err := readResponse(bufio.NewReader(c), max)
	return resp, ctxErr(ctx, err)
}

func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

var errHTTP = errors.New("malformed HTTP response")

// readResponse reads an HTTP/1.x response to a GET, its body at most max
// bytes (Content-Length, chunked, or up to the end of the connection).
func readResponse(r *bufio.Reader, max int64) (*response, error) {
	tp := textproto.NewReader(r)
	var resp response
	var h textproto.MIMEHeader
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return nil, err
		}
		proto, status, ok := strings.Cut(line, " ")
		code, cerr := strconv.Atoi(strings.SplitN(status, " ", 2)[0])
		if !ok || !strings.HasPrefix(proto, "HTTP/1.") || cerr != nil || code < 100 || code > 599 {
			return nil, fmt.Errorf("%w: status line %q", errHTTP, clip(line, 40))
		}
		if h, err = tp.ReadMIMEHeader(); err != nil {
			return nil, fmt.Errorf("%w: headers: %v", errHTTP, err)
		}
		if code >= 200 {
			resp.code, resp.status = code, status
			break
		}
	}
	resp.location = h.Get("Location")
	if resp.code != 200 {
		return &resp, nil
	}
	tooBig := fmt.Errorf("larger than %d bytes", max)
	switch te := strings.ToLower(h.Get("Transfer-Encoding")); {
	case te == "chunked":
		for {
			line, err := tp.ReadLine()
			if err != nil {
				return nil, noEOF(err)
			}
			sz, _, _ := strings.Cut(line, ";")
			n, err := strconv.ParseInt(strings.TrimSpace(sz), 16, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("%w: chunk size %q", errHTTP, clip(line, 20))
			}
			if n == 0 {
				return &resp, nil // trailers are not read: the connection closes
			}
			if int64(len(resp.body))+n > max {
				return nil, tooBig
			}
			chunk := make([]byte, n+2)
			if _, err := io.ReadFull(r, chunk); err != nil {
				return nil, noEOF(err)
			}
			if string(chunk[n:]) != "\r\n" {
				return nil, fmt.Errorf("%w: chunk not followed by CRLF", errHTTP)
			}
			resp.body = append(resp.body, chunk[:n]...)
		}
	case te != "" && te != "identity":
		return nil, fmt.Errorf("%w: transfer encoding %q", errHTTP, te)
	case h.Get("Content-Length") != "":
		n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: Content-Length %q", errHTTP, clip(h.Get("Content-Length"), 20))
		}
		if n > max {
			return nil, tooBig
		}
		resp.body = make([]byte, n)
		if _, err := io.ReadFull(r, resp.body); err != nil {
			return nil, noEOF(err)
		}
	default:
		b, err := io.ReadAll(io.LimitReader(r, max+1))
		if err != nil {
			return nil, err
		}
		if int64(len(b)) > max {
			return nil, tooBig
		}
		resp.body = b
	}
	return &resp, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
