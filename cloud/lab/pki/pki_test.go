package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testenv"
)

func csr(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gw-1"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestLoadPersistsAndServes(t *testing.T) {
	dir := t.TempDir()
	p1, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p1.ServerCAPEM(), p2.ServerCAPEM()) || !p1.IssuingCA().Equal(p2.IssuingCA()) {
		t.Fatal("CAs changed across a reload")
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, ServerCAFile))
	if err != nil || !bytes.Equal(onDisk, p1.ServerCAPEM()) {
		t.Fatalf("server-ca.pem: %v", err)
	}
	leaf := p2.ServerCertificate().Leaf
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: p1.ServerCAPool()}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "pki", "issuing-ca.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("issuing key mode: %v %v", fi.Mode(), err)
	}
}

func TestIssueFromCSR(t *testing.T) {
	p, err := Load(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	bad := csr(t, p256)
	bad[len(bad)-3] ^= 0xff
	for _, tc := range []struct {
		name string
		der  []byte
		ok   bool
	}{
		{"ok/p256", csr(t, p256), true},
		{"ok/p384", csr(t, p384), true},
		{"fail/p224", csr(t, p224), false},
		{"fail/rsa1024", csr(t, rsa1024), false},
		{"fail/bad-signature", bad, false},
		{"fail/garbage", []byte("nope"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := p.IssueFromCSR(tc.der)
			if !tc.ok {
				if !errors.Is(err, ErrBadCSR) {
					t.Fatalf("err = %v, want ErrBadCSR", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, _ := x509.ParseCertificate(der)
			if c.Subject.CommonName != "AWS IoT Certificate" || !c.NotAfter.Equal(AWSNotAfter) {
				t.Errorf("subject %q notAfter %v", c.Subject.CommonName, c.NotAfter)
			}
			roots := x509.NewCertPool()
			roots.AddCert(p.IssuingCA())
			if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: time.Now()}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOpenSSLVerifies cross-checks an issued certificate with openssl.
func TestOpenSSLVerifies(t *testing.T) {
	testenv.Require(t, "openssl")
	dir := t.TempDir()
	p, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := p.IssueFromCSR(csr(t, k))
	if err != nil {
		t.Fatal(err)
	}
	leaf := filepath.Join(dir, "leaf.pem")
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(leaf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(ca, p.IssuingCAPEM(), 0o600)
	out, err := exec.Command("openssl", "verify", "-purpose", "sslclient", "-CAfile", ca, leaf).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	srv := filepath.Join(dir, "srv.pem")
	os.WriteFile(srv, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ServerCertificate().Leaf.Raw}), 0o600)
	out, err = exec.Command("openssl", "verify", "-purpose", "sslserver", "-verify_ip", "127.0.0.1", "-CAfile", filepath.Join(dir, ServerCAFile), srv).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl verify server: %v\n%s", err, out)
	}
}
