package daemon

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/proxy"
)

// locationFetcher downloads a certificate package from a `location` URL
// (engine.Fetcher): HTTPS only, from verify.location_hosts only, redirects
// (at most 3) checked the same way, through broker.proxy when set (CONNECT),
// 64 KiB at most.
//
// It is one HTTP/1.1 GET per connection over crypto/tls, with the request
// written and the response read by net/http's Request.Write and
// ReadResponse (which paho links anyway for its websocket transport) and
// not by http.Client: the Transport, with HTTP/2, connection pooling and
// the proxy machinery, was 0.5 MiB of bootcertd's binary and resident pages
// for a download the shipped vendor never asks for (its replies carry the
// PEM inline). engine.HTTPFetcher is the same contract over http.Client.
type locationFetcher struct {
	allowed []string
	roots   *x509.CertPool // nil: the system roots
	timeout time.Duration  // for the whole download, redirects included
	maxSize int64
	proxy   *url.URL // nil: direct
}

const (
	maxLocationRedirects = 3
	defaultLocationMax   = 64 << 10
)

// Fetch downloads a location. Errors name the URL without its query (a
// presigned URL carries its credentials there).
func (f *locationFetcher) Fetch(ctx context.Context, raw string) ([]byte, error) {
	u, err := engine.CheckLocation(raw, f.allowed)
	if err != nil {
		return nil, err
	}
	to := f.timeout
	if to <= 0 {
		to = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	for redirects := 0; ; redirects++ {
		data, next, err := f.get(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("fetching %s: %w", engine.Redact(raw), err)
		}
		if next == "" {
			return data, nil
		}
		if redirects == maxLocationRedirects {
			return nil, fmt.Errorf("fetching %s: more than %d redirects", engine.Redact(raw), maxLocationRedirects)
		}
		to, err := u.Parse(next)
		if err != nil {
			return nil, fmt.Errorf("fetching %s: redirect to an unparsable Location", engine.Redact(raw))
		}
		if u, err = engine.CheckLocation(to.String(), f.allowed); err != nil {
			return nil, fmt.Errorf("fetching %s: redirect: %w", engine.Redact(raw), err)
		}
	}
}

// get does one GET. It returns the body of a 200, or the Location of a
// redirect.
func (f *locationFetcher) get(ctx context.Context, u *url.URL) (body []byte, redirect string, err error) {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "443"
	}
	raw, err := proxy.Dialer{URL: f.proxy}.DialContext(ctx, net.JoinHostPort(host, port))
	if err != nil {
		return nil, "", err
	}
	conn := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: f.roots, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}})
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// a cancelled ctx unblocks a read or write in progress
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, "", err
	}
	req := &http.Request{Method: http.MethodGet, URL: u, Host: u.Host, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"User-Agent": {"bootcertd"}}, Close: true}
	if err := req.Write(conn); err != nil {
		return nil, "", ctxErr(ctx, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return nil, "", ctxErr(ctx, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		loc := resp.Header.Get("Location")
		if loc == "" {
			return nil, "", fmt.Errorf("HTTP %s without a Location", resp.Status)
		}
		return nil, loc, nil
	default:
		return nil, "", fmt.Errorf("HTTP %s", resp.Status)
	}
	max := f.maxSize
	if max <= 0 {
		max = defaultLocationMax
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, "", ctxErr(ctx, err)
	}
	if int64(len(data)) > max {
		return nil, "", fmt.Errorf("larger than %d bytes", max)
	}
	return data, "", nil
}

// ctxErr names the timeout or cancellation behind an I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if c := ctx.Err(); c != nil && !errors.Is(err, c) {
		return fmt.Errorf("%w (%v)", c, err)
	}
	return err
}
