// Package testpki makes the factory PKI cloud tests need: a factory CA,
// bootstrap certificates, CRLs, CSRs (good and bad) and allow lists.
package testpki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// CA is a factory CA.
type CA struct {
	Cert   *x509.Certificate
	Key    crypto.Signer
	PEM    []byte
	serial int64
}

// NewCA makes a factory CA valid around now.
func NewCA(t testing.TB, name string, now time.Time) *CA {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name, Organization: []string{"bootcert test factory"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &CA{Cert: c, Key: k, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), serial: 100}
}

// Device is a bootstrap identity.
type Device struct {
	ID   string
	Key  *ecdsa.PrivateKey
	Cert *x509.Certificate
	DER  []byte
	// CertID is the lower-hex SHA-256 of DER (the AWS IoT certificate ID).
	CertID string
}

// Issue makes a bootstrap certificate with CN = id.
func (ca *CA) Issue(t testing.TB, id string, now time.Time) *Device {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: id},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(20 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &k.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &Device{ID: id, Key: k, Cert: c, DER: der, CertID: protocol.CertificateID(der)}
}

// CRL makes a DER CRL revoking the given certificates.
func (ca *CA) CRL(t testing.TB, now time.Time, revoked ...*x509.Certificate) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, c := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(now.Unix()), ThisUpdate: now, NextUpdate: now.Add(30 * 24 * time.Hour), RevokedCertificateEntries: entries}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// CSR makes a PEM CSR with subject CN=cn for key (a new P-256 key when nil).
func CSR(t testing.TB, cn string, key crypto.Signer) []byte {
	t.Helper()
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = k
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// RSAKey makes an RSA key of the given size (1024 for the negative tests).
func RSAKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CorruptSignature flips a bit in the signature of a PEM CSR.
func CorruptSignature(t testing.TB, csrPEM []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(csrPEM)
	der := bytes.Clone(blk.Bytes)
	der[len(der)-3] ^= 0x01
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// AllowList renders a manifest CSV.
func AllowList(t testing.TB, entries ...manifest.Entry) []byte {
	t.Helper()
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.Write(manifest.Header)
	for _, e := range entries {
		w.Write(e.Record())
	}
	w.Flush()
	return b.Bytes()
}

// DER decodes a PEM block.
func DER(b []byte) []byte {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil
	}
	return blk.Bytes
}
