// Package csr builds and checks PKCS#10 certificate signing requests with any
// crypto.Signer, so that a key held in a TPM or a PKCS#11 token signs its own
// request without leaving the hardware.
package csr

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"strings"

	"github.com/bootcert/bootcert/keystore"
)

// ErrInvalid is wrapped by every error about a malformed or unverifiable
// request, or bad input to Create.
var ErrInvalid = errors.New("invalid certificate request")

// PEMType is the PEM block type of a CSR.
const PEMType = "CERTIFICATE REQUEST"

// Create builds a DER CSR with subject CN=cn, signed by signer. Each SAN is
// classified by its form: an IP address becomes an IP SAN, "scheme://..." or
// "urn:..." a URI SAN, a string with "@" an e-mail SAN, a host name (or
// "*.domain") a DNS name; anything else is an error. The signature algorithm follows the
// key: ECDSA with SHA-256 (P-256) or SHA-384 (P-384), RSA PKCS#1 v1.5 with
// SHA-256.
func Create(signer crypto.Signer, cn string, sans ...string) ([]byte, error) {
	if signer == nil {
		return nil, fmt.Errorf("%w: no signer", ErrInvalid)
	}
	if strings.TrimSpace(cn) == "" {
		return nil, fmt.Errorf("%w: empty common name", ErrInvalid)
	}
	// 128 is the longest AWS IoT thing name, and CN = thing name. RFC 5280's
	// upper bound for a CN is 64: some CAs refuse longer ones, so keep
	// device IDs to 64 characters when you can.
	if len(cn) > 128 {
		return nil, fmt.Errorf("%w: common name %q is longer than 128 characters (the longest AWS IoT thing name)", ErrInvalid, cn)
	}
	alg, err := keystore.AlgorithmOf(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("creating CSR for %q: %w", cn, err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}
	switch alg {
	case keystore.ECDSAP256:
		tmpl.SignatureAlgorithm = x509.ECDSAWithSHA256
	case keystore.ECDSAP384:
		tmpl.SignatureAlgorithm = x509.ECDSAWithSHA384
	default:
		tmpl.SignatureAlgorithm = x509.SHA256WithRSA
	}
	for _, s := range sans {
		if err := addSAN(tmpl, s); err != nil {
			return nil, err
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, fmt.Errorf("signing CSR for %q: %w", cn, err)
	}
	// A signer that produced a bad signature (wrong key, faulty token) is
	// caught here rather than by the CA.
	if _, err := Parse(der); err != nil {
		return nil, fmt.Errorf("signing CSR for %q: the signer produced a request that does not verify: %w", cn, err)
	}
	return der, nil
}

func addSAN(tmpl *x509.CertificateRequest, s string) error {
	if s == "" || strings.TrimSpace(s) != s {
		return fmt.Errorf("%w: subject alternative name %q is empty or has surrounding spaces", ErrInvalid, s)
	}
	if ip := net.ParseIP(s); ip != nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		return nil
	}
	if i := strings.Index(s, ":"); i > 0 && isScheme(s[:i]) && (strings.HasPrefix(s[i:], "://") || strings.EqualFold(s[:i], "urn")) {
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("%w: subject alternative name %q looks like a URI but does not parse: %v", ErrInvalid, s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
		return nil
	}
	if strings.Contains(s, "@") {
		a, err := mail.ParseAddress(s)
		if err != nil || a.Address != s {
			return fmt.Errorf("%w: subject alternative name %q is not a plain e-mail address", ErrInvalid, s)
		}
		tmpl.EmailAddresses = append(tmpl.EmailAddresses, s)
		return nil
	}
	if !validDNSName(s) {
		return fmt.Errorf("%w: subject alternative name %q is neither an IP address, a URI, an e-mail address nor a DNS name", ErrInvalid, s)
	}
	tmpl.DNSNames = append(tmpl.DNSNames, s)
	return nil
}

func isScheme(s string) bool {
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case i > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// validDNSName accepts host names and a leading wildcard label.
func validDNSName(s string) bool {
	if len(s) > 253 {
		return false
	}
	s = strings.TrimSuffix(s, ".")
	for i, label := range strings.Split(s, ".") {
		if label == "*" && i == 0 {
			continue
		}
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// Parse decodes a CSR given as DER or PEM ("CERTIFICATE REQUEST" or the
// older "NEW CERTIFICATE REQUEST") and checks its self-signature.
func Parse(derOrPEM []byte) (*x509.CertificateRequest, error) {
	der := derOrPEM
	trimmed := bytes.TrimSpace(derOrPEM)
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		block, rest := pem.Decode(trimmed)
		if block == nil {
			return nil, fmt.Errorf("%w: PEM does not decode", ErrInvalid)
		}
		if block.Type != PEMType && block.Type != "NEW "+PEMType {
			return nil, fmt.Errorf("%w: PEM block %q is not a %q", ErrInvalid, block.Type, PEMType)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: trailing data after the PEM block", ErrInvalid)
		}
		der = block.Bytes
	}
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalid)
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrInvalid, err)
	}
	return req, nil
}

// EncodePEM returns the PEM form of a DER CSR.
func EncodePEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: PEMType, Bytes: der})
}
