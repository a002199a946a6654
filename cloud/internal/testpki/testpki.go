// Package testpki is the factory PKI cloud tests need, in the shape they use
// (a factory CA valid around a given time, bootstrap Devices with P-256
// keys), on top of internal/testca, which makes every certificate.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/protocol"
)

// CA is a factory CA (Cert, Key, PEM, CRL from testca).
type CA struct{ *testca.CA }

// NewCA makes a factory CA valid from an hour before now for ten years.
func NewCA(t testing.TB, name string, now time.Time) *CA {
	t.Helper()
	return &CA{testca.New(t, name, testca.At(now), testca.Org("bootcert test factory"))}
}

// Device is a bootstrap identity.
type Device struct {
	ID   string
	Key  *ecdsa.PrivateKey
	Cert *x509.Certificate
	DER  []byte
	// CertID is the AWS IoT certificate ID (protocol.CertificateID of DER).
	CertID string
}

// Issue makes a bootstrap certificate with CN = id and a fresh P-256 key,
// valid from an hour before now for twenty years.
func (ca *CA) Issue(t testing.TB, id string, now time.Time) *Device {
	t.Helper()
	k := testca.ECKey(t, elliptic.P256())
	c := ca.CA.Issue(t, id, k.Public(), testca.Valid(now.Add(-time.Hour), now.Add(20*365*24*time.Hour)))
	return &Device{ID: id, Key: k, Cert: c, DER: c.Raw, CertID: protocol.CertificateID(c.Raw)}
}

// The helpers cloud tests call by these names are testca's.
var (
	CSR              = testca.CSR
	RSAKey           = testca.RSAKey
	CorruptSignature = testca.CorruptSignature
	AllowList        = testca.AllowList
	DER              = testca.DER
)
