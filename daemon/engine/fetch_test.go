package engine

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestFetch: the HTTPS GET of a location against a real net/http server:
// Content-Length and chunked bodies, the size limit, redirects (followed
// only to allowed hosts), and errors that never print the query.
func TestFetch(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/plain", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hello")) })
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		for _, part := range []string{"hel", "lo ", "world"} {
			w.Write([]byte(part))
			w.(http.Flusher).Flush() // forces Transfer-Encoding: chunked
		}
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(strings.Repeat("x", 100))) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/plain", http.StatusFound) })
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://evil.example/x", http.StatusFound)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	mux.HandleFunc("/denied", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) })
	srv := httptest.NewTLSServer(mux)
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	f := &HTTPFetcher{AllowedHosts: []string{"127.0.0.1"}, RootCAs: pool, MaxSize: 64}
	ctx := context.Background()
	for _, tc := range []struct {
		path, want, err string
	}{
		{"/plain?X-Amz-Signature=secret", "hello", ""},
		{"/chunked?X-Amz-Signature=secret", "hello world", ""},
		{"/redirect?X-Amz-Signature=secret", "hello", ""},
		{"/big?X-Amz-Signature=secret", "", "larger than 64 bytes"},
		{"/away?X-Amz-Signature=secret", "", "not in verify.location_hosts"},
		{"/loop?X-Amz-Signature=secret", "", "too many redirects"},
		{"/denied?X-Amz-Signature=secret", "", "HTTP 403 Forbidden"},
	} {
		got, err := f.Fetch(ctx, srv.URL+tc.path)
		switch {
		case tc.err == "" && (err != nil || string(got) != tc.want):
			t.Errorf("%s: %q, %v; want %q", tc.path, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: %v, want an error with %q", tc.path, err, tc.err)
		case err != nil && strings.Contains(err.Error(), "secret"):
			t.Errorf("%s: the error shows the query: %v", tc.path, err)
		}
	}
	// an untrusted server certificate
	if _, err := (&HTTPFetcher{AllowedHosts: []string{"127.0.0.1"}, RootCAs: x509.NewCertPool()}).Fetch(ctx, srv.URL+"/plain"); err == nil {
		t.Error("fetched from a server the pool does not trust")
	}
}

func TestReadResponseMalformed(t *testing.T) {
	for _, raw := range []string{
		"SSH-2.0-OpenSSH\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
	} {
		if _, err := readResponse(bufio.NewReader(strings.NewReader(raw)), 64); err == nil {
			t.Errorf("%q: accepted", raw)
		} else if errors.Is(err, context.Canceled) {
			t.Errorf("%q: %v", raw, err)
		}
	}
}
