package fleet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Check failures. Handlers map them to rejection codes.
var (
	ErrNotAllowed = errors.New("device not on the allow list")
	ErrRevoked    = errors.New("certificate revoked by the factory CRL")
	ErrBadCSR     = errors.New("bad certificate request")
	ErrUntrusted  = errors.New("certificate not issued by the factory CA")
)

// MaxCRL bounds the CRL read from the store.
const MaxCRL = 16 << 20

// ObjectReader is what Trust needs of the bucket (ports.Store has it).
type ObjectReader interface {
	// Get reads an object; when ifNoneMatch is its current ETag it returns
	// an error wrapping ports.ErrNotModified.
	Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error)
}

// Trust reads the allow list, factory CA and CRL from the store and caches
// them by ETag across invocations (a Lambda container keeps it warm).
type Trust struct {
	Store    ObjectReader
	Settings Settings

	mu    sync.Mutex
	allow cached[*manifest.List]
	ca    cached[*x509.Certificate]
	crl   cached[map[string]bool] // revoked serials (hex) of the factory CA
	ek    cached[*x509.CertPool]
}

// EKRoots returns the TPM manufacturers' EK roots (Settings.EKRootsKey, a
// PEM bundle). A missing object is no roots (nil): EK certificates are then
// untrusted and only factory-recorded EKs verify.
func (t *Trust) EKRoots(ctx context.Context) (*x509.CertPool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := t.Settings.EKRootsKey
	if key == "" {
		key = DefaultEKRootsKey
	}
	p, err := load(ctx, t.Store, key, &t.ek, ParseEKRoots)
	if errors.Is(err, ports.ErrNotFound) {
		return nil, nil
	}
	return p, err
}

// ParseEKRoots parses a PEM bundle of CA certificates; anything else in it,
// or none at all, is an error.
func ParseEKRoots(b []byte) (*x509.CertPool, error) {
	p := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, errors.New("EK roots: trailing data that is not PEM")
			}
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("EK roots: PEM block %d is %q, not CERTIFICATE", n+1, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("EK roots: certificate %d: %w", n+1, err)
		}
		p.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("EK roots: no certificate")
	}
	return p, nil
}

type cached[T any] struct {
	etag string
	v    T
	ok   bool
}

func load[T any](ctx context.Context, st ObjectReader, key string, c *cached[T], parse func([]byte) (T, error)) (T, error) {
	etag := ""
	if c.ok {
		etag = c.etag
	}
	obj, err := st.Get(ctx, key, etag)
	if errors.Is(err, ports.ErrNotModified) && c.ok {
		return c.v, nil
	}
	if err != nil {
		var zero T
		return zero, fmt.Errorf("reading s3 object %s: %w", key, err)
	}
	v, err := parse(obj.Body)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("s3 object %s: %w", key, err)
	}
	*c = cached[T]{etag: obj.ETag, v: v, ok: obj.ETag != ""}
	return v, nil
}

// AllowList returns the current allow list.
func (t *Trust) AllowList(ctx context.Context) (*manifest.List, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return load(ctx, t.Store, t.Settings.AllowListKey, &t.allow, func(b []byte) (*manifest.List, error) {
		return manifest.Parse(bytes.NewReader(b))
	})
}

// Lookup finds a device on the allow list; it wraps ErrNotAllowed when the
// device is not there.
func (t *Trust) Lookup(ctx context.Context, thing string) (manifest.Entry, error) {
	l, err := t.AllowList(ctx)
	if err != nil {
		return manifest.Entry{}, err
	}
	e, ok := l.Lookup(thing)
	if !ok {
		return e, fmt.Errorf("%w: %s (allow list s3://%s/%s)", ErrNotAllowed, thing, t.Settings.Bucket, t.Settings.AllowListKey)
	}
	return e, nil
}

// CA returns the factory CA certificate (the first of the object's PEM).
func (t *Trust) CA(ctx context.Context) (*x509.Certificate, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return load(ctx, t.Store, t.Settings.CAKey, &t.ca, func(b []byte) (*x509.Certificate, error) {
		chain, err := protocol.ParseChain(b)
		if err != nil {
			return nil, err
		}
		return chain[0], nil
	})
}

// Revoked reports whether a certificate issued by the factory CA is on the
// CRL. A missing CRL object means nothing is revoked; a CRL that does not
// verify against the factory CA is an error (fail closed).
func (t *Trust) Revoked(ctx context.Context, cert *x509.Certificate) (bool, error) {
	ca, err := t.CA(ctx)
	if err != nil {
		return false, err
	}
	if !bytes.Equal(cert.RawIssuer, ca.RawSubject) {
		return false, nil // not a factory certificate (e.g. an AWS-issued one)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	revoked, err := load(ctx, t.Store, t.Settings.CRLKey, &t.crl, func(b []byte) (map[string]bool, error) {
		return ParseCRL(b, ca)
	})
	if errors.Is(err, ports.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return revoked[serialKey(cert.SerialNumber)], nil
}

func serialKey(n *big.Int) string { return n.Text(16) }

// ParseCRL parses a DER or PEM X.509 CRL, checks it is signed by ca and
// returns the revoked serial numbers.
func ParseCRL(b []byte, ca *x509.Certificate) (map[string]bool, error) {
	if len(b) > MaxCRL {
		return nil, fmt.Errorf("CRL larger than %d bytes", MaxCRL)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %q is not an X509 CRL", blk.Type)
		}
		b = blk.Bytes
	}
	rl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("parsing CRL: %w", err)
	}
	if ca == nil {
		return nil, errors.New("no factory CA to verify the CRL against")
	}
	if err := rl.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("CRL is not signed by the factory CA %q: %w", ca.Subject.String(), err)
	}
	out := make(map[string]bool, len(rl.RevokedCertificateEntries))
	for _, e := range rl.RevokedCertificateEntries {
		if e.SerialNumber != nil {
			out[serialKey(e.SerialNumber)] = true
		}
	}
	return out, nil
}

// VerifyBootstrap checks that cert was issued by the factory CA and is valid
// at now.
func (t *Trust) VerifyBootstrap(ctx context.Context, cert *x509.Certificate, now time.Time) error {
	ca, err := t.CA(ctx)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	return nil
}

// CheckCSR parses a PEM or DER certificate request and enforces the policy:
// the signature verifies, the subject CN is the thing name, the key is ECDSA
// P-256 or P-384 or RSA of 2048 to 4096 bits. It returns the DER.
func CheckCSR(b []byte, thing string) (*x509.CertificateRequest, error) {
	der := b
	if blk, rest := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block %q is not a CERTIFICATE REQUEST", ErrBadCSR, blk.Type)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: data after the CERTIFICATE REQUEST block", ErrBadCSR)
		}
		der = blk.Bytes
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrBadCSR, err)
	}
	if req.Subject.CommonName != thing {
		return nil, fmt.Errorf("%w: subject CN %q is not the thing name %q", ErrBadCSR, req.Subject.CommonName, thing)
	}
	switch k := req.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s not allowed (P-256 or P-384)", ErrBadCSR, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > 4096 {
			return nil, fmt.Errorf("%w: RSA-%d not allowed (2048 to 4096 bits)", ErrBadCSR, n)
		}
	default:
		return nil, fmt.Errorf("%w: key type %T not allowed (ECDSA P-256/P-384 or RSA >= 2048)", ErrBadCSR, req.PublicKey)
	}
	return req, nil
}

// CSRPEM encodes a DER request as PEM.
func CSRPEM(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}
