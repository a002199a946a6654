package factory

import (
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

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
		{"ok/p256-ca-p256-device", testca.ECKey(t, elliptic.P256()), testca.ECKey(t, elliptic.P256())},
		{"ok/p384-ca-rsa2048-device", testca.ECKey(t, elliptic.P384()), testca.RSAKey(t, 2048)},
		{"ok/rsa2048-ca-p384-device", testca.RSAKey(t, 2048), testca.ECKey(t, elliptic.P384())},
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
			cert, err := Issue(ca, tc.ca, testca.Request(t, "gw-0001", tc.dv), 365, now)
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
	k := testca.ECKey(t, elliptic.P256())
	ca, err := CreateCA(k, "short CA", 10, t0)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := Issue(ca, k, testca.Request(t, "gw", testca.ECKey(t, elliptic.P256())), 365, t0)
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
	caKey := testca.ECKey(t, elliptic.P256())
	ca, err := CreateCA(caKey, "CA", 365, t0)
	if err != nil {
		t.Fatal(err)
	}
	dev := testca.ECKey(t, elliptic.P256())
	leaf, err := Issue(ca, caKey, testca.Request(t, "leaf", dev), 30, t0)
	if err != nil {
		t.Fatal(err)
	}
	badSig := testca.Request(t, "gw", dev)
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
		{"fail/wrong-ca-key", ca, testca.ECKey(t, elliptic.P256()), testca.Request(t, "gw", dev), 30, t0, ErrKeyMismatch, "give the key that created this CA"},
		{"fail/not-a-ca", leaf, dev, testca.Request(t, "gw", dev), 30, t0, ErrNotCA, "no CA basic constraint"},
		{"fail/bad-csr-signature", ca, caKey, badSig, 30, t0, ErrBadRequest, "signature does not verify"},
		{"fail/empty-cn", ca, caKey, testca.Request(t, "", dev), 30, t0, ErrBadRequest, "empty common name"},
		{"fail/long-cn", ca, caKey, testca.Request(t, strings.Repeat("a", 65), dev), 30, t0, ErrBadRequest, "at most 64"},
		{"fail/weak-rsa", ca, caKey, testca.Request(t, "gw", testca.RSAKey(t, 1024)), 30, t0, ErrBadRequest, "RSA-1024"},
		{"fail/zero-days", ca, caKey, testca.Request(t, "gw", dev), 0, t0, ErrBadRequest, "at least 1"},
		{"fail/ca-expired", ca, caKey, testca.Request(t, "gw", dev), 30, t0.AddDate(2, 0, 0), nil, "create a new CA"},
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
	k := testca.ECKey(t, elliptic.P256())
	ca, _ := CreateCA(k, "CA", 365, t0)
	code := "8a7e1b3f0e2c4d5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f"
	cert, err := IssueFor(ca, k, Request{PublicKey: testca.ECKey(t, elliptic.P256()).Public(), CommonName: code, Days: 1}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != code || cert.CheckSignatureFrom(ca) != nil {
		t.Fatal("verification certificate wrong")
	}
}

func TestCreateCAFailures(t *testing.T) {
	if _, err := CreateCA(testca.ECKey(t, elliptic.P256()), "", 10, t0); err == nil || !strings.Contains(err.Error(), "empty common name") {
		t.Errorf("empty CN: %v", err)
	}
	if _, err := CreateCA(testca.ECKey(t, elliptic.P256()), "CA", 0, t0); err == nil || !strings.Contains(err.Error(), "at least 1") {
		t.Errorf("0 days: %v", err)
	}
	if _, err := CreateCA(testca.ECKey(t, elliptic.P224()), "CA", 10, t0); err == nil || !strings.Contains(err.Error(), "P-224") {
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
	k := testca.ECKey(t, elliptic.P256())
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
