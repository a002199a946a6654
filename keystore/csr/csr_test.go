package csr_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore/csr"
)

// opensslVerify runs `openssl req -verify` on a DER CSR and returns its
// text dump.
func opensslVerify(t *testing.T, der []byte) string {
	t.Helper()
	testenv.Require(t, "openssl")
	p := filepath.Join(t.TempDir(), "req.pem")
	if err := os.WriteFile(p, csr.EncodePEM(der), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "req", "-verify", "-noout", "-text", "-in", p).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl req -verify did not say OK:\n%s", out)
	}
	return string(out)
}

var (
	p256, _  = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _  = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2k, _ = rsa.GenerateKey(rand.Reader, 2048)
)

func TestCreate(t *testing.T) {
	tests := []struct {
		name   string
		signer crypto.Signer
		cn     string
		sans   []string
		want   []string // substrings of openssl's dump
	}{
		{"ok/p256-no-sans", p256, "gw-0001", nil, []string{"CN = gw-0001", "ecdsa-with-SHA256"}},
		{"ok/p384", p384, "gw-0002", nil, []string{"CN = gw-0002", "ecdsa-with-SHA384"}},
		{"ok/rsa2048", rsa2k, "gw-0003", nil, []string{"CN = gw-0003", "sha256WithRSAEncryption"}},
		{"ok/cn-128", p256, strings.Repeat("g", 128), nil, []string{"CN = " + strings.Repeat("g", 128)}},
		{"ok/sans", p256, "gw-0004", []string{"gw-0004.example.com", "*.lan", "10.0.0.7", "::1", "spiffe://bootcert/gw-0004", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "ops@example.com"},
			[]string{"DNS:gw-0004.example.com", "DNS:*.lan", "IP Address:10.0.0.7", "IP Address:0:0:0:0:0:0:0:1", "URI:spiffe://bootcert/gw-0004", "URI:urn:uuid:6e8bc430", "email:ops@example.com"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			der, err := csr.Create(tc.signer, tc.cn, tc.sans...)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			req, err := csr.Parse(der)
			if err != nil {
				t.Fatalf("Parse(DER): %v", err)
			}
			if req.Subject.CommonName != tc.cn {
				t.Errorf("CN = %q", req.Subject.CommonName)
			}
			if _, err := csr.Parse(csr.EncodePEM(der)); err != nil {
				t.Fatalf("Parse(PEM): %v", err)
			}
			dump := opensslVerify(t, der)
			for _, w := range tc.want {
				if !strings.Contains(dump, w) {
					t.Errorf("openssl dump lacks %q:\n%s", w, dump)
				}
			}
		})
	}
}

// lyingSigner signs with a different key than it claims.
type lyingSigner struct{ pub, priv crypto.Signer }

func (l lyingSigner) Public() crypto.PublicKey { return l.pub.Public() }
func (l lyingSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return l.priv.Sign(r, d, o)
}

func TestCreateErrors(t *testing.T) {
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	tests := []struct {
		name    string
		signer  crypto.Signer
		cn      string
		sans    []string
		contain string
	}{
		{"fail/empty-cn", p256, "", nil, "empty common name"},
		{"fail/long-cn", p256, strings.Repeat("a", 129), nil, "longer than 128"},
		{"fail/nil-signer", nil, "gw", nil, "no signer"},
		{"fail/bad-dns", p256, "gw", []string{"not a host"}, `"not a host"`},
		{"fail/empty-san", p256, "gw", []string{""}, "empty"},
		{"fail/host-port", p256, "gw", []string{"gw.local:8883"}, "neither"},
		{"fail/space-in-uri", p256, "gw", []string{"spiffe://a b"}, "URI"},
		{"fail/bad-email", p256, "gw", []string{"Ops <ops@example.com>"}, "e-mail"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := csr.Create(tc.signer, tc.cn, tc.sans...)
			if !errors.Is(err, csr.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.contain) {
				t.Errorf("err = %q, want %q", err, tc.contain)
			}
		})
	}
	t.Run("fail/wrong-key", func(t *testing.T) {
		_, err := csr.Create(lyingSigner{pub: p256, priv: other}, "gw")
		if err == nil || !strings.Contains(err.Error(), "signature") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("fail/unsupported-curve", func(t *testing.T) {
		if _, err := csr.Create(p224, "gw"); err == nil || !strings.Contains(err.Error(), "P-224") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestParseErrors(t *testing.T) {
	good, err := csr.Create(p256, "gw-0001")
	if err != nil {
		t.Fatal(err)
	}
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	tests := []struct {
		name string
		in   []byte
	}{
		{"fail/empty", nil},
		{"fail/garbage", []byte("hello")},
		{"fail/tampered-signature", tampered},
		{"fail/cert-pem", []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")},
		{"fail/trailing", append(csr.EncodePEM(good), csr.EncodePEM(good)...)},
		{"fail/bad-pem", []byte("-----BEGIN CERTIFICATE REQUEST-----\n!!!\n")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := csr.Parse(tc.in); !errors.Is(err, csr.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	good, _ := csr.Create(p256, "gw-0001", "gw.example.com", "10.0.0.1")
	f.Add(good)
	f.Add(csr.EncodePEM(good))
	f.Add([]byte(""))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := csr.Parse(in)
		if err == nil && req == nil {
			t.Fatal("nil request without error")
		}
		if err == nil {
			if err := req.CheckSignature(); err != nil {
				t.Fatalf("Parse accepted a request whose signature does not verify: %v", err)
			}
		}
	})
}

func BenchmarkCreate(b *testing.B) {
	for b.Loop() {
		if _, err := csr.Create(p256, "gw-0001", "gw.example.com"); err != nil {
			b.Fatal(err)
		}
	}
}
