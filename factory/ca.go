// Package factory is the factory side of bootcert: it creates the factory CA,
// issues bootstrap certificates from CSRs made inside device hardware, keeps
// the certificate revocation list, and provisions devices (key in hardware,
// CSR, certificate, manifest line) so that a failure at any step leaves no
// half state.
//
// Nothing here reads the clock: every function takes the time it works at.
package factory

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/bootcert/bootcert/keystore"
)

// Sentinel errors, wrapped with context; test with errors.Is.
var (
	// ErrNotCA is returned when a certificate given as a CA cannot sign
	// certificates (not a CA, or no certSign key usage).
	ErrNotCA = errors.New("certificate is not a signing CA")
	// ErrKeyMismatch is returned when a CA key does not belong to the CA
	// certificate, or a certificate does not belong to a device key.
	ErrKeyMismatch = errors.New("key does not match certificate")
	// ErrBadRequest is returned for a CSR that cannot be signed.
	ErrBadRequest = errors.New("certificate request rejected")
	// ErrNotIssuedByCA is returned when a certificate was not signed by the
	// factory CA given.
	ErrNotIssuedByCA = errors.New("certificate not issued by this CA")
)

// MaxCommonName is the longest subject CN (RFC 5280 ub-common-name).
const MaxCommonName = 64

// Backdate is how far before "now" a certificate becomes valid, to absorb
// clock skew between the station and the devices or the cloud.
const Backdate = 5 * time.Minute

// CreateCA makes a self-signed factory CA certificate for signer's key:
// BasicConstraints CA with MaxPathLen 0 (it signs device certificates only),
// KeyUsage certSign|cRLSign, a random 128-bit serial and a SubjectKeyId. It
// is valid from now (minus Backdate) for days days.
func CreateCA(signer crypto.Signer, cn string, days int, now time.Time) (*x509.Certificate, error) {
	if err := checkCN(cn); err != nil {
		return nil, fmt.Errorf("creating CA: %w", err)
	}
	if days <= 0 {
		return nil, fmt.Errorf("creating CA %q: validity of %d days: must be at least 1", cn, days)
	}
	if _, err := keystore.AlgorithmOf(signer.Public()); err != nil {
		return nil, fmt.Errorf("creating CA %q: %w", cn, err)
	}
	serial, err := RandomSerial()
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(signer.Public())
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-Backdate).UTC(),
		NotAfter:              now.AddDate(0, 0, days).UTC(),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: signing with the CA key: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("creating CA %q: %w", cn, err)
	}
	// A faulty signer (wrong key behind the URI, broken token) is caught
	// here, not by the cloud.
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("creating CA %q: the CA key produced a signature that does not verify: %w", cn, err)
	}
	return cert, nil
}

// CheckCA verifies that cert can act as the factory CA and that signer holds
// its private key.
func CheckCA(cert *x509.Certificate, signer crypto.Signer) error {
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return fmt.Errorf("%w: %q has no CA basic constraint", ErrNotCA, cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%w: %q lacks the certSign key usage", ErrNotCA, cert.Subject.CommonName)
	}
	if signer == nil {
		return fmt.Errorf("%w: no CA key", ErrKeyMismatch)
	}
	if !samePublicKey(cert.PublicKey, signer.Public()) {
		return fmt.Errorf("%w: the CA key's public key differs from the one in CA certificate %q (serial %s): give the key that created this CA", ErrKeyMismatch, cert.Subject.CommonName, hexSerial(cert.SerialNumber))
	}
	return nil
}

// Request is what Issue needs to know about the certificate to make.
type Request struct {
	// PublicKey is the subject's key (from a verified CSR).
	PublicKey crypto.PublicKey
	// CommonName is the subject CN.
	CommonName string
	// Days is the validity in days from now (minus Backdate). The result
	// never outlives the CA: NotAfter is clamped to the CA's NotAfter.
	Days int
	// ExtKeyUsage defaults to ClientAuth (a device's MQTT/TLS identity).
	ExtKeyUsage []x509.ExtKeyUsage
}

// Issue signs a device certificate for a CSR: subject CN taken from the CSR,
// ClientAuth, DigitalSignature, random serial. The CSR's self-signature and
// key type (ECDSA P-256/P-384, RSA 2048/3072) are checked.
func Issue(caCert *x509.Certificate, caSigner crypto.Signer, csr *x509.CertificateRequest, days int, now time.Time) (*x509.Certificate, error) {
	if csr == nil {
		return nil, fmt.Errorf("%w: no CSR", ErrBadRequest)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: CSR for %q: signature does not verify: %v", ErrBadRequest, csr.Subject.CommonName, err)
	}
	return IssueFor(caCert, caSigner, Request{PublicKey: csr.PublicKey, CommonName: csr.Subject.CommonName, Days: days}, now)
}

// IssueFor signs a leaf certificate for any public key with an explicit
// subject CN, e.g. the AWS IoT CA verification certificate whose CN is the
// registration code.
func IssueFor(caCert *x509.Certificate, caSigner crypto.Signer, r Request, now time.Time) (*x509.Certificate, error) {
	if err := CheckCA(caCert, caSigner); err != nil {
		return nil, fmt.Errorf("issuing certificate for %q: %w", r.CommonName, err)
	}
	if err := checkCN(r.CommonName); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if _, err := keystore.AlgorithmOf(r.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: key of %q: %v", ErrBadRequest, r.CommonName, err)
	}
	if r.Days <= 0 {
		return nil, fmt.Errorf("%w: validity of %d days for %q: must be at least 1", ErrBadRequest, r.Days, r.CommonName)
	}
	if now.After(caCert.NotAfter) {
		return nil, fmt.Errorf("issuing certificate for %q: CA %q expired on %s: create a new CA", r.CommonName, caCert.Subject.CommonName, caCert.NotAfter.Format(time.RFC3339))
	}
	serial, err := RandomSerial()
	if err != nil {
		return nil, err
	}
	notAfter := now.AddDate(0, 0, r.Days).UTC()
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	eku := r.ExtKeyUsage
	if len(eku) == 0 {
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	ku := x509.KeyUsageDigitalSignature
	if alg, _ := keystore.AlgorithmOf(r.PublicKey); alg.IsRSA() {
		ku |= x509.KeyUsageKeyEncipherment // TLS 1.2 RSA key exchange
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: r.CommonName},
		NotBefore:             now.Add(-Backdate).UTC(),
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, r.PublicKey, caSigner)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for %q: signing with the CA key: %w", r.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate for %q: %w", r.CommonName, err)
	}
	if err := cert.CheckSignatureFrom(caCert); err != nil {
		return nil, fmt.Errorf("issuing certificate for %q: the CA key produced a signature that does not verify: %w", r.CommonName, err)
	}
	return cert, nil
}

// RandomSerial returns a random positive 128-bit serial number.
func RandomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generating a serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// CertificateID is the lower-hex SHA-256 of a certificate's DER: the AWS IoT
// certificateId and the manifest's bootstrap_sha256.
func CertificateID(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// EncodeCertificate returns the PEM form of a certificate.
func EncodeCertificate(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

// ParseCertificate decodes exactly one certificate, PEM or DER.
func ParseCertificate(data []byte) (*x509.Certificate, error) {
	der := data
	if t := bytes.TrimSpace(data); bytes.HasPrefix(t, []byte("-----BEGIN")) {
		block, rest := pem.Decode(t)
		if block == nil {
			return nil, errors.New("PEM does not decode")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q is not a CERTIFICATE", block.Type)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, errors.New("more than one PEM block: give one certificate")
		}
		der = block.Bytes
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate does not parse: %w", err)
	}
	return cert, nil
}

// ReadCertificate reads one PEM or DER certificate from a file.
func ReadCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading certificate %s: %w", path, err)
	}
	cert, err := ParseCertificate(data)
	if err != nil {
		return nil, fmt.Errorf("reading certificate %s: %w", path, err)
	}
	return cert, nil
}

func checkCN(cn string) error {
	if strings.TrimSpace(cn) == "" {
		return errors.New("empty common name")
	}
	if len(cn) > MaxCommonName {
		return fmt.Errorf("common name %q is %d characters; at most %d fit in a certificate", cn, len(cn), MaxCommonName)
	}
	return nil
}

func samePublicKey(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}

// subjectKeyID is the leftmost 160 bits of the SHA-256 of the DER
// SubjectPublicKeyInfo (in the spirit of RFC 7093 method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshalling public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func hexSerial(n *big.Int) string {
	if n == nil {
		return ""
	}
	return fmt.Sprintf("%x", n)
}
