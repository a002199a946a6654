package fleet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Check failures. Handlers map them to rejection codes.
var (
	ErrNotAllowed = errors.New("device not on the allow list")
	ErrRevoked    = errors.New("certificate revoked by the factory CRL")
	ErrBadCSR     = errors.New("bad certificate request")
	ErrUntrusted  = errors.New("certificate not issued by a factory CA")
	// ErrCRLExpired: a factory CA's CRL is past its nextUpdate plus the
	// configured grace (CRL_GRACE). Revocation cannot be checked, so every
	// check of a certificate of that CA fails closed until a fresh CRL is
	// uploaded (bootcert-admin cloud setup --crl).
	ErrCRLExpired = errors.New("factory CRL expired")
	// ErrDecommissioned: the device was decommissioned (deny list,
	// DecommissionedKey); errors wrapping it also wrap ErrNotAllowed.
	ErrDecommissioned = errors.New("device decommissioned")
)

// MaxCRL bounds the CRL read from the store.
const MaxCRL = 16 << 20

// ObjectReader is what Trust needs of the bucket (ports.Store has it).
type ObjectReader interface {
	// Get reads an object; when ifNoneMatch is its current ETag it returns
	// an error wrapping ports.ErrNotModified.
	Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error)
}

// Trust reads the allow list, the factory CAs and their CRLs from the store
// and caches them by ETag across invocations (a Lambda container keeps it
// warm).
//
// Trust can change (issue 10, item 7): the CA object (Settings.CAKey) is a
// PEM bundle of every factory CA trusted now (several contract
// manufacturers, or the old and the new CA during a rollover), and the CRL
// object (Settings.CRLKey) holds one CRL per CA (PEM blocks, or one DER CRL),
// each verified against the CA whose key signed it. A certificate is checked
// against the CRL of the CA that issued it; a CA without a CRL revokes
// nothing; a CRL past nextUpdate + Settings.CRLGrace is refused
// (ErrCRLExpired).
type Trust struct {
	Store    ObjectReader
	Settings Settings
	// Clock tells CRL freshness; nil is clock.Real.
	Clock clock.Clock

	mu    sync.Mutex
	allow cached[*manifest.List]
	ca    cached[[]*x509.Certificate]
	crl   cached[[]*x509.RevocationList]
	ek    cached[*x509.CertPool]
	deny  cached[map[string]bool]
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

func (t *Trust) now() time.Time {
	if t.Clock == nil {
		return clock.Real{}.Now()
	}
	return t.Clock.Now()
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
// device is not there, and ErrDecommissioned (with ErrNotAllowed) when it is
// on the deny list (DenyListKey), whatever the allow list
// says: a decommissioned device is never admitted again.
func (t *Trust) Lookup(ctx context.Context, thing string) (manifest.Entry, error) {
	t.mu.Lock()
	deny, err := load(ctx, t.Store, DenyListKey, &t.deny, func(b []byte) (map[string]bool, error) {
		var d DenyList
		if err := json.Unmarshal(b, &d); err != nil {
			return nil, err
		}
		out := make(map[string]bool, len(d.Devices))
		for k := range d.Devices {
			out[k] = true
		}
		return out, nil
	})
	t.mu.Unlock()
	if err != nil && !errors.Is(err, ports.ErrNotFound) {
		return manifest.Entry{}, err
	}
	if deny[thing] {
		return manifest.Entry{}, fmt.Errorf("%w: %w: %s is on the deny list (s3://%s/%s)", ErrDecommissioned, ErrNotAllowed, thing, t.Settings.Bucket, DenyListKey)
	}
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

// CAs returns every trusted factory CA (the certificates of the CA object's
// PEM bundle). No CA object is no factory CA trusted (nil, nil): a maker
// that onboards only by claim (fleet provisioning) has none, and
// bootcert-admin cloud setup without --ca-cert uploads none. Then
// VerifyBootstrap refuses every certificate (ErrUntrusted: a JITR of a
// factory certificate fails closed) and Revoked revokes nothing (an
// AWS-issued certificate is checked as before). Only a missing object
// (ports.ErrNotFound: S3's 404 NoSuchKey, which S3 answers only to a caller
// allowed s3:ListBucket, else 403 AccessDenied,
// https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html; every
// function of cloud/template.yaml that reads trust/* has it) means none:
// any other error is returned.
func (t *Trust) CAs(ctx context.Context) ([]*x509.Certificate, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cas, err := load(ctx, t.Store, t.Settings.CAKey, &t.ca, ParseCABundle)
	if errors.Is(err, ports.ErrNotFound) {
		t.ca = cached[[]*x509.Certificate]{}
		return nil, nil
	}
	return cas, err
}

// ParseCABundle parses a PEM bundle of factory CA certificates; each must be
// a CA (basic constraints).
func ParseCABundle(b []byte) ([]*x509.Certificate, error) {
	cas, err := protocol.ParseChain(b)
	if err != nil {
		return nil, err
	}
	for i, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("certificate %d of the factory CA bundle (%q) is not a CA", i+1, c.Subject.String())
		}
	}
	return cas, nil
}

// issuerOf returns the CA of cas that signed cert, or nil. The signature
// decides, not the name: during a rollover the new CA may keep the old one's
// subject.
func issuerOf(cas []*x509.Certificate, cert *x509.Certificate) *x509.Certificate {
	for _, ca := range cas {
		if bytes.Equal(cert.RawIssuer, ca.RawSubject) && cert.CheckSignatureFrom(ca) == nil {
			return ca
		}
	}
	return nil
}

// Revoked reports whether a certificate issued by a factory CA is on that
// CA's CRL. A certificate of no factory CA (an AWS-issued one) is not; a CA
// without a CRL (or no CRL object) revokes nothing. A CRL signed by no
// trusted CA is an error (fail closed), and so is the issuing CA's CRL once
// it is past nextUpdate + Settings.CRLGrace (ErrCRLExpired).
func (t *Trust) Revoked(ctx context.Context, cert *x509.Certificate) (bool, error) {
	cas, err := t.CAs(ctx)
	if err != nil {
		return false, err
	}
	ca := issuerOf(cas, cert)
	if ca == nil {
		return false, nil
	}
	t.mu.Lock()
	crls, err := load(ctx, t.Store, t.Settings.CRLKey, &t.crl, ParseCRLs)
	t.mu.Unlock()
	if errors.Is(err, ports.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	rl, err := crlFor(crls, cas, ca)
	if err != nil || rl == nil {
		return false, err
	}
	if err := Fresh(rl, ca, t.now(), t.Settings.CRLGrace); err != nil {
		return false, err
	}
	for _, e := range rl.RevokedCertificateEntries {
		if e.SerialNumber != nil && e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return true, nil
		}
	}
	return false, nil
}

// crlFor picks ca's CRL among crls. Every CRL must be signed by one of cas
// (a foreign CRL means the object is wrong: fail closed); when a CA has
// several, the highest CRL number (else the latest thisUpdate) wins.
func crlFor(crls []*x509.RevocationList, cas []*x509.Certificate, ca *x509.Certificate) (*x509.RevocationList, error) {
	var best *x509.RevocationList
	for i, rl := range crls {
		var signer *x509.Certificate
		for _, c := range cas {
			if bytes.Equal(rl.RawIssuer, c.RawSubject) && rl.CheckSignatureFrom(c) == nil {
				signer = c
				break
			}
		}
		if signer == nil {
			return nil, fmt.Errorf("CRL %d (issuer %q) is not signed by any trusted factory CA", i+1, rl.Issuer.String())
		}
		if signer != ca {
			continue
		}
		if best == nil || newer(rl, best) {
			best = rl
		}
	}
	return best, nil
}

func newer(a, b *x509.RevocationList) bool {
	if a.Number != nil && b.Number != nil && a.Number.Cmp(b.Number) != 0 {
		return a.Number.Cmp(b.Number) > 0
	}
	return a.ThisUpdate.After(b.ThisUpdate)
}

// Fresh checks a CRL's nextUpdate: past nextUpdate + grace it is refused
// with ErrCRLExpired, naming the CA and the dates. A CRL without nextUpdate
// never expires.
func Fresh(rl *x509.RevocationList, ca *x509.Certificate, now time.Time, grace time.Duration) error {
	if rl.NextUpdate.IsZero() || !now.After(rl.NextUpdate.Add(grace)) {
		return nil
	}
	return fmt.Errorf("%w: the CRL of factory CA %q (CRL number %v) had nextUpdate %s; with the grace of %s it expired at %s (now %s): upload a fresh CRL (bootcert-admin cloud setup --crl)",
		ErrCRLExpired, ca.Subject.String(), rl.Number, rl.NextUpdate.UTC().Format(time.RFC3339), grace, rl.NextUpdate.Add(grace).UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
}

// ParseCRLs parses the CRL object: one DER CRL, or one or more PEM "X509
// CRL" blocks. Signatures are checked against the CAs when used (crlFor).
func ParseCRLs(b []byte) ([]*x509.RevocationList, error) {
	if len(b) > MaxCRL {
		return nil, fmt.Errorf("CRL larger than %d bytes", MaxCRL)
	}
	if !bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----BEGIN")) {
		rl, err := x509.ParseRevocationList(b)
		if err != nil {
			return nil, fmt.Errorf("parsing CRL: %w", err)
		}
		return []*x509.RevocationList{rl}, nil
	}
	var out []*x509.RevocationList
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block %d %q is not an X509 CRL", len(out)+1, blk.Type)
		}
		rl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing CRL %d: %w", len(out)+1, err)
		}
		out = append(out, rl)
	}
	if len(bytes.TrimSpace(rest)) != 0 || len(out) == 0 {
		return nil, errors.New("CRL object: data that is not an X509 CRL PEM block")
	}
	return out, nil
}

// ParseCRL parses a DER or PEM X.509 CRL, checks it is signed by ca and
// returns the revoked serial numbers.
func ParseCRL(b []byte, ca *x509.Certificate) (map[string]bool, error) {
	rl, err := ParseOneCRL(b, ca)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(rl.RevokedCertificateEntries))
	for _, e := range rl.RevokedCertificateEntries {
		if e.SerialNumber != nil {
			out[serialKey(e.SerialNumber)] = true
		}
	}
	return out, nil
}

// ParseOneCRL parses a single DER or PEM CRL and checks it is signed by ca.
func ParseOneCRL(b []byte, ca *x509.Certificate) (*x509.RevocationList, error) {
	crls, err := ParseCRLs(b)
	if err != nil {
		return nil, err
	}
	if len(crls) != 1 {
		return nil, fmt.Errorf("%d CRLs where one was expected", len(crls))
	}
	if ca == nil {
		return nil, errors.New("no factory CA to verify the CRL against")
	}
	if err := crls[0].CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("CRL is not signed by the factory CA %q: %w", ca.Subject.String(), err)
	}
	return crls[0], nil
}

func serialKey(n *big.Int) string { return n.Text(16) }

// VerifyBootstrap checks that cert was issued by one of the factory CAs and
// is valid at now.
func (t *Trust) VerifyBootstrap(ctx context.Context, cert *x509.Certificate, now time.Time) error {
	cas, err := t.CAs(ctx)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	if len(cas) == 0 {
		return fmt.Errorf("%w: no factory CA is trusted (no CA object s3://%s/%s: a fleet set up without --ca-cert onboards by claim only)", ErrUntrusted, t.Settings.Bucket, t.Settings.CAKey)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %v (%d factory CAs trusted, s3://%s/%s)", ErrUntrusted, err, len(cas), t.Settings.Bucket, t.Settings.CAKey)
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
