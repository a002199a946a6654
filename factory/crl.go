package factory

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// CRLPEMType is the PEM block type of a CRL.
const CRLPEMType = "X509 CRL"

// MaxCRLSize bounds the CRL bytes ParseCRL accepts (16 MiB).
const MaxCRLSize = 16 << 20

// ErrBadCRL is wrapped by every error about a CRL that does not parse or does
// not verify against the factory CA.
var ErrBadCRL = errors.New("invalid CRL")

// CreateCRL makes a CRL signed by the factory CA listing entries, with CRL
// number number, valid from now until nextUpdate. It returns PEM.
func CreateCRL(caCert *x509.Certificate, caSigner crypto.Signer, entries []x509.RevocationListEntry, number *big.Int, now, nextUpdate time.Time) ([]byte, error) {
	if err := CheckCA(caCert, caSigner); err != nil {
		return nil, fmt.Errorf("creating CRL: %w", err)
	}
	if caCert.KeyUsage != 0 && caCert.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, fmt.Errorf("creating CRL: %w: %q lacks the cRLSign key usage", ErrNotCA, caCert.Subject.CommonName)
	}
	if !nextUpdate.After(now) {
		return nil, fmt.Errorf("creating CRL: next update %s is not after this update %s", nextUpdate.Format(time.RFC3339), now.Format(time.RFC3339))
	}
	if number == nil || number.Sign() <= 0 {
		number = big.NewInt(1)
	}
	tmpl := &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now.UTC(),
		NextUpdate:                nextUpdate.UTC(),
		RevokedCertificateEntries: entries,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, caCert, caSigner)
	if err != nil {
		return nil, fmt.Errorf("creating CRL: signing with the CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: CRLPEMType, Bytes: der}), nil
}

// ParseCRL decodes a PEM or DER CRL and verifies its signature against the
// factory CA. It does not judge freshness: see Stale.
func ParseCRL(data []byte, caCert *x509.Certificate) (*x509.RevocationList, error) {
	if len(data) > MaxCRLSize {
		return nil, fmt.Errorf("%w: %d bytes is more than %d", ErrBadCRL, len(data), MaxCRLSize)
	}
	der := data
	if t := bytes.TrimSpace(data); bytes.HasPrefix(t, []byte("-----BEGIN")) {
		block, rest := pem.Decode(t)
		if block == nil {
			return nil, fmt.Errorf("%w: PEM does not decode", ErrBadCRL)
		}
		if block.Type != CRLPEMType {
			return nil, fmt.Errorf("%w: PEM block %q is not an %q", ErrBadCRL, block.Type, CRLPEMType)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: trailing data after the PEM block", ErrBadCRL)
		}
		der = block.Bytes
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCRL, err)
	}
	if caCert != nil {
		if err := crl.CheckSignatureFrom(caCert); err != nil {
			return nil, fmt.Errorf("%w: not signed by CA %q: %v", ErrBadCRL, caCert.Subject.CommonName, err)
		}
	}
	return crl, nil
}

// Stale reports whether a CRL is past its next update at now.
func Stale(crl *x509.RevocationList, now time.Time) bool {
	return !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate)
}

// IsRevoked reports whether serial is listed in crl.
func IsRevoked(crl *x509.RevocationList, serial *big.Int) bool {
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil && e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// RevokeResult says what Revoke did.
type RevokeResult struct {
	CRL     []byte     // the new CRL, PEM
	Number  *big.Int   // its CRL number
	Added   []*big.Int // serials newly listed
	Already []*big.Int // serials that were listed before
	Total   int        // entries in the new CRL
}

// Revoke adds certs to the CRL in existing (PEM or DER, nil or empty to start
// a new one) and returns a new CRL with the next CRL number, this update now
// and next update now+validity. Every certificate must have been issued by
// caCert; an already listed one is left as it was. The existing CRL must
// verify against caCert.
func Revoke(existing []byte, caCert *x509.Certificate, caSigner crypto.Signer, certs []*x509.Certificate, now time.Time, validity time.Duration) (RevokeResult, error) {
	var res RevokeResult
	if err := CheckCA(caCert, caSigner); err != nil {
		return res, fmt.Errorf("revoking: %w", err)
	}
	var entries []x509.RevocationListEntry
	number := big.NewInt(1)
	if len(bytes.TrimSpace(existing)) > 0 {
		old, err := ParseCRL(existing, caCert)
		if err != nil {
			return res, fmt.Errorf("revoking: existing CRL: %w", err)
		}
		for _, e := range old.RevokedCertificateEntries {
			entries = append(entries, x509.RevocationListEntry{
				SerialNumber:   e.SerialNumber,
				RevocationTime: e.RevocationTime,
				ReasonCode:     e.ReasonCode,
			})
		}
		if old.Number != nil {
			number = new(big.Int).Add(old.Number, big.NewInt(1))
		}
	}
	listed := func(s *big.Int) bool {
		for _, e := range entries {
			if e.SerialNumber.Cmp(s) == 0 {
				return true
			}
		}
		return false
	}
	for _, c := range certs {
		if err := c.CheckSignatureFrom(caCert); err != nil || !bytes.Equal(c.RawIssuer, caCert.RawSubject) {
			return res, fmt.Errorf("revoking %q (serial %x): %w %q", c.Subject.CommonName, c.SerialNumber, ErrNotIssuedByCA, caCert.Subject.CommonName)
		}
		if listed(c.SerialNumber) {
			res.Already = append(res.Already, c.SerialNumber)
			continue
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: now.UTC()})
		res.Added = append(res.Added, c.SerialNumber)
	}
	if validity <= 0 {
		return res, fmt.Errorf("revoking: CRL validity %s must be positive", validity)
	}
	pemCRL, err := CreateCRL(caCert, caSigner, entries, number, now, now.Add(validity))
	if err != nil {
		return res, err
	}
	res.CRL = pemCRL
	res.Number = number
	res.Total = len(entries)
	return res, nil
}
