// Package keystore names private keys by URI and hands them out as
// crypto.Signer. Backends (keystore/tpm, keystore/pkcs11, keystore/file)
// register a URI scheme; nothing above this package knows which backend holds
// a key.
//
// The core interface is Backend.Open. Optional abilities are separate small
// interfaces a backend may implement, found by type assertion: Generator,
// Deleter, Describer.
package keystore

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Sentinel errors. Backends wrap them with context so that callers can use
// errors.Is.
var (
	ErrNotFound             = errors.New("key not found")
	ErrExists               = errors.New("key already exists")
	ErrUnsupportedAlgorithm = errors.New("unsupported key algorithm")
	ErrUnsupported          = errors.New("operation not supported by this backend")
	ErrUnknownScheme        = errors.New("unknown key URI scheme")
)

// Backend opens keys named by URIs of one scheme.
type Backend interface {
	// Open returns a signer for an existing key. It returns an error wrapping
	// ErrNotFound when the key does not exist.
	Open(ctx context.Context, u *URI) (crypto.Signer, error)
}

// Generator is implemented by backends that can create keys. Generate never
// overwrites: when the key already exists it returns an error wrapping
// ErrExists and leaves the key untouched.
type Generator interface {
	Generate(ctx context.Context, u *URI, alg Algorithm) (crypto.Signer, error)
}

// Deleter is implemented by backends that can destroy keys.
type Deleter interface {
	Delete(ctx context.Context, u *URI) error
}

// Describer is implemented by backends that can report a key's hardware
// protection attributes.
type Describer interface {
	Describe(ctx context.Context, u *URI) (Info, error)
}

// Closer is implemented by backends that keep handles open across keys (a
// PKCS#11 module's logged-in sessions): CloseAll releases them at shutdown.
type Closer interface {
	CloseAll(ctx context.Context) error
}

// Info describes a key without revealing it.
type Info struct {
	URI         string          `json:"uri"` // redacted: never contains a PIN
	Backend     string          `json:"backend"`
	Algorithm   Algorithm       `json:"algorithm"`
	Fingerprint string          `json:"fingerprint"` // lower-hex SHA-256 of the DER SubjectPublicKeyInfo
	Attributes  map[string]bool `json:"attributes"`  // e.g. fixedTPM, sensitive, neverExtractable
	// Hardware is true when the private key cannot leave a hardware device.
	Hardware bool `json:"hardware"`
}

var (
	mu       sync.RWMutex
	backends = map[string]Backend{}
)

// Register makes a backend available for a URI scheme. It panics when the
// scheme is registered twice, as that is a programming error.
func Register(scheme string, b Backend) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := backends[scheme]; dup {
		panic("keystore: scheme registered twice: " + scheme)
	}
	backends[scheme] = b
}

// Schemes lists the registered schemes, sorted.
func Schemes() []string {
	mu.RLock()
	defer mu.RUnlock()
	var s []string
	for k := range backends {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

func lookup(raw string) (*URI, Backend, error) {
	u, err := ParseURI(raw)
	if err != nil {
		return nil, nil, err
	}
	mu.RLock()
	b, ok := backends[u.Scheme]
	mu.RUnlock()
	if !ok {
		return nil, nil, fmt.Errorf("key %s: %w %q (known: %v)", u.Redacted(), ErrUnknownScheme, u.Scheme, Schemes())
	}
	return u, b, nil
}

// Open returns the signer for the key named by raw.
func Open(ctx context.Context, raw string) (crypto.Signer, error) {
	u, b, err := lookup(raw)
	if err != nil {
		return nil, err
	}
	s, err := b.Open(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("opening key %s: %w", u.Redacted(), err)
	}
	return s, nil
}

// Generate creates a key. It never overwrites an existing key.
func Generate(ctx context.Context, raw string, alg Algorithm) (crypto.Signer, error) {
	u, b, err := lookup(raw)
	if err != nil {
		return nil, err
	}
	if err := alg.Validate(); err != nil {
		return nil, fmt.Errorf("generating key %s: %w", u.Redacted(), err)
	}
	g, ok := b.(Generator)
	if !ok {
		return nil, fmt.Errorf("generating key %s: %w", u.Redacted(), ErrUnsupported)
	}
	s, err := g.Generate(ctx, u, alg)
	if err != nil {
		return nil, fmt.Errorf("generating key %s: %w", u.Redacted(), err)
	}
	return s, nil
}

// Delete destroys a key.
func Delete(ctx context.Context, raw string) error {
	u, b, err := lookup(raw)
	if err != nil {
		return err
	}
	d, ok := b.(Deleter)
	if !ok {
		return fmt.Errorf("deleting key %s: %w", u.Redacted(), ErrUnsupported)
	}
	if err := d.Delete(ctx, u); err != nil {
		return fmt.Errorf("deleting key %s: %w", u.Redacted(), err)
	}
	return nil
}

// Describe reports what is known about a key. Backends without a Describer
// get the generic description (algorithm and fingerprint only).
func Describe(ctx context.Context, raw string) (Info, error) {
	u, b, err := lookup(raw)
	if err != nil {
		return Info{}, err
	}
	if d, ok := b.(Describer); ok {
		info, err := d.Describe(ctx, u)
		if err != nil {
			return Info{}, fmt.Errorf("describing key %s: %w", u.Redacted(), err)
		}
		info.URI = u.Redacted()
		return info, nil
	}
	s, err := b.Open(ctx, u)
	if err != nil {
		return Info{}, fmt.Errorf("describing key %s: %w", u.Redacted(), err)
	}
	defer CloseSigner(s)
	info, err := DescribePublic(s.Public())
	if err != nil {
		return Info{}, err
	}
	info.URI = u.Redacted()
	info.Backend = u.Scheme
	return info, nil
}

// DescribePublic fills Algorithm and Fingerprint from a public key.
func DescribePublic(pub crypto.PublicKey) (Info, error) {
	alg, err := AlgorithmOf(pub)
	if err != nil {
		return Info{}, err
	}
	fp, err := Fingerprint(pub)
	if err != nil {
		return Info{}, err
	}
	return Info{Algorithm: alg, Fingerprint: fp, Attributes: map[string]bool{}}, nil
}

// Fingerprint is the lower-hex SHA-256 of the DER SubjectPublicKeyInfo.
func Fingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("marshalling public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// CloseAll asks every registered backend that keeps handles open across keys
// (Closer) to release them: orderly shutdown, after every signer is closed.
// Signers obtained before stop working. Errors are joined, naming the scheme.
func CloseAll(ctx context.Context) error {
	mu.RLock()
	closers := map[string]Closer{}
	for scheme, b := range backends {
		if c, ok := b.(Closer); ok {
			closers[scheme] = c
		}
	}
	mu.RUnlock()
	var errs []error
	for scheme, c := range closers {
		if err := c.CloseAll(ctx); err != nil {
			errs = append(errs, fmt.Errorf("closing %s keys: %w", scheme, err))
		}
	}
	return errors.Join(errs...)
}

// CloseSigner releases resources held by a signer (a TPM object handle, a
// PKCS#11 session) when it has any. Signers that need closing implement
// interface{ Close() error }.
func CloseSigner(s crypto.Signer) error {
	if c, ok := s.(interface{ Close() error }); ok {
		return c.Close()
	}
	return nil
}
