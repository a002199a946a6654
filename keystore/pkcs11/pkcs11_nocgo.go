//go:build !cgo

package pkcs11

import (
	"context"
	"crypto"

	"github.com/bootcert/bootcert/keystore"
)

// Backend is the stub registered in binaries built with CGO_ENABLED=0: every
// call fails with ErrNotBuilt, so that a pkcs11: URI gets a clear answer
// instead of "unknown scheme".
type Backend struct{}

func init() { keystore.Register(Scheme, Backend{}) }

// Open fails: no PKCS#11 support in this build.
func (Backend) Open(context.Context, *keystore.URI) (crypto.Signer, error) { return nil, ErrNotBuilt }

// Generate fails: no PKCS#11 support in this build.
func (Backend) Generate(context.Context, *keystore.URI, keystore.Algorithm) (crypto.Signer, error) {
	return nil, ErrNotBuilt
}

// Delete fails: no PKCS#11 support in this build.
func (Backend) Delete(context.Context, *keystore.URI) error { return ErrNotBuilt }

// Describe fails: no PKCS#11 support in this build.
func (Backend) Describe(context.Context, *keystore.URI) (keystore.Info, error) {
	return keystore.Info{}, ErrNotBuilt
}

// CloseAll does nothing in a build without PKCS#11 support.
func CloseAll() error { return nil }

// CloseAll is keystore.Closer: keystore.CloseAll closes the cached token
// contexts through it.
func (Backend) CloseAll(context.Context) error { return CloseAll() }
