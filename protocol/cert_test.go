package protocol

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func TestCertificateID(t *testing.T) {
	// FIPS 180-2 test vector: SHA-256("abc").
	if got, want := CertificateID([]byte("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Fatalf("CertificateID(abc) = %s, want %s", got, want)
	}
	leaf, _ := testChain(t)
	id := CertificateID(leaf.Raw)
	if !ValidCertificateID(id) {
		t.Fatalf("CertificateID %q is not a ValidCertificateID", id)
	}
	if CertificateID(leaf.RawTBSCertificate) == id {
		t.Fatalf("the ID does not depend on the whole DER")
	}
}

func TestValidCertificateID(t *testing.T) {
	good := strings.Repeat("0123456789abcdef", 4)
	for _, tc := range []struct {
		name string
		in   string
		ok   bool
	}{
		{"ok/lower-hex", good, true},
		{"ok/all-f", strings.Repeat("f", 64), true},
		{"fail/empty", "", false},
		{"fail/63", good[:63], false},
		{"fail/65", good + "0", false},
		{"fail/upper-hex", strings.ToUpper(good), false},
		{"fail/0x-prefix", "0x" + good[:62], false},
		{"fail/g", good[:63] + "g", false},
		{"fail/space", " " + good[:63], false},
		{"fail/non-ascii", good[:62] + "é", false}, // 64 bytes, 63 runes
		{"fail/path", "../" + good[:61], false},
	} {
		if got := ValidCertificateID(tc.in); got != tc.ok {
			t.Errorf("%s: ValidCertificateID(%q) = %v", tc.name, tc.in, got)
		}
	}
}

// testChain makes a CA and a leaf it signs.
func testChain(t testing.TB) (leaf, ca *x509.Certificate) {
	t.Helper()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: now, NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "gw-1"}, NotBefore: now, NotAfter: now.Add(time.Hour)}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ = x509.ParseCertificate(leafDER)
	return leaf, ca
}

func pemBlock(typ string, b []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})
}

func TestParseChain(t *testing.T) {
	leaf, ca := testChain(t)
	chainPEM := EncodeChain([]*x509.Certificate{leaf, ca})
	if want := append(pemBlock("CERTIFICATE", leaf.Raw), pemBlock("CERTIFICATE", ca.Raw)...); !bytes.Equal(chainPEM, want) {
		t.Fatalf("EncodeChain is not the PEM of each certificate in order:\n%s", chainPEM)
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		want    []*x509.Certificate
		errPart string
	}{
		{"ok/leaf-first", chainPEM, []*x509.Certificate{leaf, ca}, ""},
		{"ok/one", pemBlock("CERTIFICATE", ca.Raw), []*x509.Certificate{ca}, ""},
		{"ok/text-around", append(append([]byte("subject=gw-1\n"), chainPEM...), "trailing\n"...), []*x509.Certificate{leaf, ca}, ""},
		{"fail/empty", nil, nil, "no PEM certificate"},
		{"fail/not-pem", leaf.Raw, nil, "no PEM certificate"},
		{"fail/key-block", append(pemBlock("CERTIFICATE", leaf.Raw), pemBlock("EC PRIVATE KEY", []byte{1})...), nil, `"EC PRIVATE KEY"`},
		{"fail/csr-block", pemBlock("CERTIFICATE REQUEST", []byte{1}), nil, `"CERTIFICATE REQUEST"`},
		{"fail/first-corrupt", pemBlock("CERTIFICATE", []byte{0x30, 0x03, 0x02, 0x01, 0x00}), nil, "certificate 1"},
		{"fail/second-corrupt", append(pemBlock("CERTIFICATE", leaf.Raw), pemBlock("CERTIFICATE", leaf.Raw[:20])...), nil, "certificate 2"},
	} {
		got, err := ParseChain(tc.in)
		if tc.errPart != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errPart) {
				t.Errorf("%s: err %v, want one naming %s", tc.name, err, tc.errPart)
			}
			if got != nil {
				t.Errorf("%s: a chain returned with the error", tc.name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d certificates, want %d", tc.name, len(got), len(tc.want))
			continue
		}
		for i := range got {
			if !got[i].Equal(tc.want[i]) {
				t.Errorf("%s: certificate %d is %s, want %s", tc.name, i, got[i].Subject, tc.want[i].Subject)
			}
		}
	}
}

// FuzzParseChain: ParseChain never panics; what it accepts is at least one
// certificate, and encoding it back parses to the same certificates.
func FuzzParseChain(f *testing.F) {
	leaf, ca := testChain(f)
	f.Add(EncodeChain([]*x509.Certificate{leaf, ca}))
	f.Add(pemBlock("CERTIFICATE", leaf.Raw))
	f.Add(pemBlock("CERTIFICATE", []byte{0x30, 0x03, 0x02, 0x01, 0x00}))
	f.Add(pemBlock("PRIVATE KEY", []byte{1, 2, 3}))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		chain, err := ParseChain(b)
		if err != nil {
			if chain != nil {
				t.Fatal("a chain returned with an error")
			}
			return
		}
		if len(chain) == 0 {
			t.Fatal("accepted an empty chain")
		}
		again, err := ParseChain(EncodeChain(chain))
		if err != nil {
			t.Fatalf("the encoding of an accepted chain does not parse: %v", err)
		}
		if len(again) != len(chain) {
			t.Fatalf("round trip: %d certificates, want %d", len(again), len(chain))
		}
		for i := range chain {
			if !bytes.Equal(again[i].Raw, chain[i].Raw) {
				t.Fatalf("round trip changed certificate %d", i)
			}
		}
	})
}
