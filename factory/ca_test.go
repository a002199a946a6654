package factory

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testenv"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func ecKey(t testing.TB, c elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrFor(t testing.TB, k crypto.Signer, cn string) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, k)
	if err != nil {
		t.Fatal(err)
	}
	r, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func writePEM(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// openssl runs openssl and fails the test when it fails.
func openssl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestCreateCAAndIssue(t *testing.T) {
	testenv.Require(t, "openssl")
	// openssl verify checks validity against the real clock: work at now.
	now := time.Now()
	for _, tc := range []struct {
		name   string
		ca, dv crypto.Signer
	}{
		{"ok/p256-ca-p256-device", ecKey(t, elliptic.P256()), ecKey(t, elliptic.P256())},
		{"ok/p384-ca-rsa2048-device", ecKey(t, elliptic.P384()), rsaKey(t, 2048)},
		{"ok/rsa2048-ca-p384-device", rsaKey(t, 2048), ecKey(t, elliptic.P384())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ca, err := CreateCA(tc.ca, "Test Factory CA", 3650, now)
			if err != nil {
				t.Fatal(err)
			}
			if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero || ca.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign || len(ca.SubjectKeyId) == 0 {
				t.Fatalf("CA extensions: IsCA=%v MaxPathLen=%d KeyUsage=%v SKI=%x", ca.IsCA, ca.MaxPathLen, ca.KeyUsage, ca.SubjectKeyId)
			}
			if ca.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %x is not random 128-bit", ca.SerialNumber)
			}
			cert, err := Issue(ca, tc.ca, csrFor(t, tc.dv, "gw-0001"), 365, now)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != "gw-0001" || len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 || cert.IsCA {
				t.Fatalf("device certificate: CN=%q EKU=%v KU=%v IsCA=%v", cert.Subject.CommonName, cert.ExtKeyUsage, cert.KeyUsage, cert.IsCA)
			}
			if !samePublicKey(cert.PublicKey, tc.dv.Public()) {
				t.Fatal("certificate key is not the CSR's key")
			}
			caPath := writePEM(t, dir, "ca.pem", EncodeCertificate(ca))
			certPath := writePEM(t, dir, "cert.pem", EncodeCertificate(cert))
			out := openssl(t, "verify", "-CAfile", caPath, "-purpose", "sslclient", certPath)
			if !strings.Contains(out, ": OK") {
				t.Fatalf("openssl verify: %s", out)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatal(err)
			}
			// the certificateId is what openssl computes
			fpOut := openssl(t, "x509", "-in", certPath, "-noout", "-fingerprint", "-sha256")
			want := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(fpOut[strings.Index(fpOut, "=")+1:]), ":", ""))
			if CertificateID(cert) != want {
				t.Errorf("CertificateID %s, openssl says %s", CertificateID(cert), want)
			}
		})
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestIssueClampsToCA(t *testing.T) {
	k := ecKey(t, elliptic.P256())
	ca, err := CreateCA(k, "short CA", 10, t0)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := Issue(ca, k, csrFor(t, ecKey(t, elliptic.P256()), "gw"), 365, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.NotAfter.Equal(ca.NotAfter) {
		t.Fatalf("NotAfter %s, CA ends %s", cert.NotAfter, ca.NotAfter)
	}
	if want := t0.Add(-Backdate); !cert.NotBefore.Equal(want) {
		t.Fatalf("NotBefore %s want %s", cert.NotBefore, want)
	}
}

func TestIssueFailures(t *testing.T) {
	caKey := ecKey(t, elliptic.P256())
	ca, err := CreateCA(caKey, "CA", 365, t0)
	if err != nil {
		t.Fatal(err)
	}
	dev := ecKey(t, elliptic.P256())
	leaf, err := Issue(ca, caKey, csrFor(t, dev, "leaf"), 30, t0)
	if err != nil {
		t.Fatal(err)
	}
	badSig := csrFor(t, dev, "gw")
	badSig.Signature = append([]byte{}, badSig.Signature...)
	badSig.Signature[len(badSig.Signature)-1] ^= 0xff
	for _, tc := range []struct {
		name   string
		ca     *x509.Certificate
		caKey  crypto.Signer
		csr    *x509.CertificateRequest
		days   int
		now    time.Time
		is     error
		substr string
	}{
		{"fail/wrong-ca-key", ca, ecKey(t, elliptic.P256()), csrFor(t, dev, "gw"), 30, t0, ErrKeyMismatch, "give the key that created this CA"},
		{"fail/not-a-ca", leaf, dev, csrFor(t, dev, "gw"), 30, t0, ErrNotCA, "no CA basic constraint"},
		{"fail/bad-csr-signature", ca, caKey, badSig, 30, t0, ErrBadRequest, "signature does not verify"},
		{"fail/empty-cn", ca, caKey, csrFor(t, dev, ""), 30, t0, ErrBadRequest, "empty common name"},
		{"fail/long-cn", ca, caKey, csrFor(t, dev, strings.Repeat("a", 65)), 30, t0, ErrBadRequest, "at most 64"},
		{"fail/weak-rsa", ca, caKey, csrFor(t, rsaKey(t, 1024), "gw"), 30, t0, ErrBadRequest, "RSA-1024"},
		{"fail/zero-days", ca, caKey, csrFor(t, dev, "gw"), 0, t0, ErrBadRequest, "at least 1"},
		{"fail/ca-expired", ca, caKey, csrFor(t, dev, "gw"), 30, t0.AddDate(2, 0, 0), nil, "create a new CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Issue(tc.ca, tc.caKey, tc.csr, tc.days, tc.now)
			if err == nil {
				t.Fatal("Issue succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v is not %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.substr) {
				t.Errorf("%q does not say %q", err, tc.substr)
			}
		})
	}
}

func TestIssueForVerificationCert(t *testing.T) {
	k := ecKey(t, elliptic.P256())
	ca, _ := CreateCA(k, "CA", 365, t0)
	code := "8a7e1b3f0e2c4d5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f"
	cert, err := IssueFor(ca, k, Request{PublicKey: ecKey(t, elliptic.P256()).Public(), CommonName: code, Days: 1}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != code || cert.CheckSignatureFrom(ca) != nil {
		t.Fatal("verification certificate wrong")
	}
}

func TestCreateCAFailures(t *testing.T) {
	if _, err := CreateCA(ecKey(t, elliptic.P256()), "", 10, t0); err == nil || !strings.Contains(err.Error(), "empty common name") {
		t.Errorf("empty CN: %v", err)
	}
	if _, err := CreateCA(ecKey(t, elliptic.P256()), "CA", 0, t0); err == nil || !strings.Contains(err.Error(), "at least 1") {
		t.Errorf("0 days: %v", err)
	}
	if _, err := CreateCA(ecKey(t, elliptic.P224()), "CA", 10, t0); err == nil || !strings.Contains(err.Error(), "P-224") {
		t.Errorf("P-224: %v", err)
	}
}

func TestRandomSerialDistinct(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		s, err := RandomSerial()
		if err != nil || s.Sign() <= 0 || s.Cmp(new(big.Int).Lsh(big.NewInt(1), 128)) >= 0 {
			t.Fatalf("serial %v, %v", s, err)
		}
		if seen[s.String()] {
			t.Fatal("serial repeated")
		}
		seen[s.String()] = true
	}
}

func TestParseCertificate(t *testing.T) {
	k := ecKey(t, elliptic.P256())
	ca, _ := CreateCA(k, "CA", 365, t0)
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"ok/pem", EncodeCertificate(ca), true},
		{"ok/der", ca.Raw, true},
		{"fail/two-blocks", append(EncodeCertificate(ca), EncodeCertificate(ca)...), false},
		{"fail/csr-pem", []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), false},
		{"fail/garbage", []byte("hello"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCertificate(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

// run runs a command and returns its combined output and error.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
