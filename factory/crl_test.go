package factory

import (
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
)

func TestRevokeAndOpenSSL(t *testing.T) {
	testenv.Require(t, "openssl")
	now := time.Now()
	caKey := testca.ECKey(t, elliptic.P256())
	ca, err := CreateCA(caKey, "CRL CA", 365, now)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, cn := range []string{"gw-1", "gw-2", "gw-3"} {
		c, err := Issue(ca, caKey, testca.Request(t, cn, testca.ECKey(t, elliptic.P256())), 30, now)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	r1, err := Revoke(nil, ca, caKey, certs[:1], now.Add(-time.Hour), 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(r1.Added) != 1 || r1.Total != 1 || r1.Number.Int64() != 1 {
		t.Fatalf("first revoke: %+v", r1)
	}
	r2, err := Revoke(r1.CRL, ca, caKey, certs[:2], now, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(r2.Added) != 1 || len(r2.Already) != 1 || r2.Total != 2 || r2.Number.Int64() != 2 {
		t.Fatalf("second revoke: added %v already %v total %d number %v", r2.Added, r2.Already, r2.Total, r2.Number)
	}
	crl, err := ParseCRL(r2.CRL, ca)
	if err != nil {
		t.Fatal(err)
	}
	if !IsRevoked(crl, certs[0].SerialNumber) || !IsRevoked(crl, certs[1].SerialNumber) || IsRevoked(crl, certs[2].SerialNumber) {
		t.Fatal("CRL content wrong")
	}
	if Stale(crl, now) || !Stale(crl, now.Add(31*24*time.Hour)) {
		t.Fatal("Stale wrong")
	}

	dir := t.TempDir()
	caPath := writePEM(t, dir, "ca.pem", EncodeCertificate(ca))
	crlPath := writePEM(t, dir, "crl.pem", r2.CRL)
	out := openssl(t, "crl", "-in", crlPath, "-CAfile", caPath, "-noout", "-verify")
	if !strings.Contains(out, "verify OK") {
		t.Fatalf("openssl crl -verify: %s", out)
	}
	// openssl verify -crl_check: revoked is refused, the other passes.
	for i, c := range certs {
		p := writePEM(t, dir, "c.pem", EncodeCertificate(c))
		out, err := run("openssl", "verify", "-crl_check", "-CAfile", caPath, "-CRLfile", crlPath, p)
		revoked := i < 2
		if revoked && (err == nil || !strings.Contains(out, "revoked")) {
			t.Errorf("cert %d: openssl accepted a revoked certificate: %s", i, out)
		}
		if !revoked && err != nil {
			t.Errorf("cert %d: %v %s", i, err, out)
		}
	}
}

func TestRevokeFailures(t *testing.T) {
	caKey := testca.ECKey(t, elliptic.P256())
	ca, _ := CreateCA(caKey, "CA", 365, t0)
	otherKey := testca.ECKey(t, elliptic.P256())
	other, _ := CreateCA(otherKey, "Other CA", 365, t0)
	foreign, _ := Issue(other, otherKey, testca.Request(t, "x", testca.ECKey(t, elliptic.P256())), 30, t0)
	foreignCRL, _ := CreateCRL(other, otherKey, nil, big.NewInt(1), t0, t0.Add(time.Hour))
	own, _ := Issue(ca, caKey, testca.Request(t, "y", testca.ECKey(t, elliptic.P256())), 30, t0)
	for _, tc := range []struct {
		name     string
		existing []byte
		certs    []*x509.Certificate
		is       error
		substr   string
	}{
		{"fail/foreign-cert", nil, []*x509.Certificate{foreign}, ErrNotIssuedByCA, `"x"`},
		{"fail/foreign-crl", foreignCRL, []*x509.Certificate{own}, ErrBadCRL, "not signed by CA"},
		{"fail/garbage-crl", []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), []*x509.Certificate{own}, ErrBadCRL, "invalid CRL"},
		{"fail/cert-pem-as-crl", EncodeCertificate(own), []*x509.Certificate{own}, ErrBadCRL, "not an"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Revoke(tc.existing, ca, caKey, tc.certs, t0, time.Hour)
			if err == nil || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if _, err := Revoke(nil, ca, otherKey, []*x509.Certificate{own}, t0, time.Hour); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("wrong CA key: %v", err)
	}
}

func FuzzParseCRL(f *testing.F) {
	k := testca.ECKey(f, elliptic.P256())
	ca, _ := CreateCA(k, "CA", 365, t0)
	crl, _ := CreateCRL(ca, k, []x509.RevocationListEntry{{SerialNumber: big.NewInt(7), RevocationTime: t0}}, big.NewInt(3), t0, t0.Add(time.Hour))
	f.Add(crl)
	f.Add([]byte("-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := ParseCRL(data, ca)
		if err == nil && got.CheckSignatureFrom(ca) != nil {
			t.Fatal("accepted a CRL not signed by the CA")
		}
		if err != nil && !errors.Is(err, ErrBadCRL) {
			t.Fatalf("error not ErrBadCRL: %v", err)
		}
	})
}
