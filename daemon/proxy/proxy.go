// Package proxy opens TCP connections through an HTTP proxy with the
// CONNECT method (RFC 9110, section 9.3.6), for gateways whose only way out
// is a site proxy. bootcertd tunnels its MQTT over TLS session (port 8883 or
// 443) and the certificate download through it; TLS runs end to end inside
// the tunnel, so the proxy sees only the host and port.
package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrRefused is a CONNECT the proxy answered with a status other than 2xx.
var ErrRefused = errors.New("proxy refused the tunnel")

// Parse checks a proxy URL from the configuration: http://[user:password@]host:port.
// Errors never repeat the password. "" is no proxy: nil, nil.
func Parse(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("not a URL: %v", redactErr(err, raw))
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("scheme %q: only http:// proxies are supported (the tunnel carries TLS end to end)", u.Scheme)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return nil, fmt.Errorf("%s: give host and port, e.g. http://proxy.example:3128", Redacted(u))
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%s: a proxy URL has no path, query or fragment", Redacted(u))
	}
	return u, nil
}

// Redacted is u without its password.
func Redacted(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.Redacted()
}

func redactErr(err error, raw string) string {
	msg := err.Error()
	if u, perr := url.Parse(raw); perr == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "xxxxx")
		}
	}
	return msg
}

// Dialer dials through the proxy at URL (nil: directly).
type Dialer struct {
	URL     *url.URL
	Timeout time.Duration // for the TCP connect and the CONNECT exchange
}

// DialContext returns a connection to address (host:port): a tunnel through
// the proxy, or a direct TCP connection without one.
func (d Dialer) DialContext(ctx context.Context, address string) (net.Conn, error) {
	nd := net.Dialer{Timeout: d.Timeout}
	if d.URL == nil {
		return nd.DialContext(ctx, "tcp", address)
	}
	c, err := nd.DialContext(ctx, "tcp", d.URL.Host)
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", Redacted(d.URL), err)
	}
	if err := d.connect(ctx, c, address); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (d Dialer) connect(ctx context.Context, c net.Conn, address string) error {
	deadline := time.Now().Add(d.Timeout)
	if dl, ok := ctx.Deadline(); ok && (d.Timeout <= 0 || dl.Before(deadline)) {
		deadline = dl
	}
	if d.Timeout > 0 || !deadline.IsZero() {
		c.SetDeadline(deadline)
		defer c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req := "CONNECT " + address + " HTTP/1.1\r\nHost: " + address + "\r\n"
	if u := d.URL.User; u != nil {
		p, _ := u.Password()
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+p)) + "\r\n"
	}
	req += "\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		return fmt.Errorf("proxy %s: sending CONNECT %s: %w", Redacted(d.URL), address, err)
	}
	// The proxy's answer is read a byte at a time up to the blank line, so
	// that nothing of the tunnel (the TLS server hello) is buffered away.
	br := bufio.NewReaderSize(&byteReader{c}, 1)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return fmt.Errorf("proxy %s: reading the answer to CONNECT %s: %w", Redacted(d.URL), address, err)
	}
	// The body is not read: after a 2xx the bytes that follow are the
	// tunnel's (net/http reads a CONNECT answer's body to EOF), and after a
	// refusal the connection is closed.
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%w: proxy %s answered CONNECT %s with %s", ErrRefused, Redacted(d.URL), address, resp.Status)
	}
	return nil
}

// byteReader reads one byte per call.
type byteReader struct{ c net.Conn }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return r.c.Read(p)
}

// DialTLS opens a TLS connection to address through d (directly when d.URL
// is nil): the handshake runs end to end inside the tunnel.
func (d Dialer) DialTLS(ctx context.Context, address string, cfg *tls.Config) (*tls.Conn, error) {
	raw, err := d.DialContext(ctx, address)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}
