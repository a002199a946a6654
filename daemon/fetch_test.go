package daemon

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/daemon/engine"
)

// The location fetcher against a real TLS server: what it downloads, what
// it refuses, and that no error carries the presigned query.
func TestLocationFetcher(t *testing.T) {
	pkg := []byte(`{"certificatePem":"-----BEGIN CERTIFICATE-----"}`)
	release := make(chan struct{})
	reached := make(chan struct{}, 1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("X-Amz-Signature") != "topsecret" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		switch r.URL.Path {
		case "/pkg":
			w.Write(pkg)
		case "/chunked": // no Content-Length: chunked, larger than the limit
			for i := 0; i < 20; i++ {
				w.Write(bytes.Repeat([]byte("A"), 8<<10))
				w.(http.Flusher).Flush()
			}
		case "/moved": // relative, to an allowed host (this one)
			http.Redirect(w, r, "/pkg?"+r.URL.RawQuery, http.StatusFound)
		case "/away":
			http.Redirect(w, r, "https://evil.example/pkg?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
		case "/loop":
			http.Redirect(w, r, "/loop?"+r.URL.RawQuery, http.StatusFound)
		case "/hang":
			reached <- struct{}{}
			<-release
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	defer close(release)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	f := &locationFetcher{allowed: []string{"127.0.0.1"}, roots: pool}
	q := "?X-Amz-Signature=topsecret"
	ctx := context.Background()

	got, err := f.Fetch(ctx, srv.URL+"/pkg"+q)
	if err != nil || !bytes.Equal(got, pkg) {
		t.Fatalf("Fetch /pkg = %q, %v; want the package", got, err)
	}
	if got, err = f.Fetch(ctx, srv.URL+"/moved"+q); err != nil || !bytes.Equal(got, pkg) {
		t.Errorf("Fetch /moved = %q, %v; want the package after the redirect", got, err)
	}

	for _, tc := range []struct {
		name, url, want string
		location        bool // wraps engine.ErrLocation
	}{
		{"http", strings.Replace(srv.URL, "https:", "http:", 1) + "/pkg" + q, "not https", true},
		{"host", "https://bucket.example/pkg" + q, "not in verify.location_hosts", true},
		{"redirect-away", srv.URL + "/away" + q, `host "evil.example" is not in verify.location_hosts`, true},
		{"redirect-loop", srv.URL + "/loop" + q, "more than 3 redirects", false},
		{"status", srv.URL + "/missing" + q, "HTTP 404", false},
		{"oversized", srv.URL + "/chunked" + q, "larger than 65536 bytes", false},
		{"untrusted", srv.URL + "/pkg" + q, "certificate", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ff := f
			if tc.name == "untrusted" {
				ff = &locationFetcher{allowed: f.allowed, roots: x509.NewCertPool()}
			}
			_, err := ff.Fetch(ctx, tc.url)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Fetch: %v, want an error with %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "topsecret") {
				t.Errorf("the presigned query is in the error: %v", err)
			}
			if errors.Is(err, engine.ErrLocation) != tc.location {
				t.Errorf("errors.Is(%v, ErrLocation) = %v", err, !tc.location)
			}
		})
	}

	t.Run("cancel", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		go func() { <-reached; cancel() }()
		_, err := f.Fetch(cctx, srv.URL+"/hang"+q)
		if !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "topsecret") {
			t.Fatalf("Fetch of a hanging server, cancelled: %v", err)
		}
	})
}
