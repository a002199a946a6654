// Package file is the development-only keystore backend: a private key kept
// in software as a PKCS#8 PEM file, mode 0600, named by a file: URI
// (file:/var/lib/bootcert/keys/dev.pem). It offers none of the protection of
// the tpm and pkcs11 backends; Describe reports Hardware=false so that callers
// can warn about it.
package file

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/keystore"
)

// Scheme is the URI scheme of this backend.
const Scheme = "file"

// pemType is the PEM block type written and accepted.
const pemType = "PRIVATE KEY"

// ErrPermissions is wrapped when a key file is readable or writable by group
// or others.
var ErrPermissions = errors.New("key file permissions too open")

// Backend implements keystore.Backend, Generator, Deleter and Describer for
// file: URIs.
type Backend struct{}

func init() { keystore.Register(Scheme, Backend{}) }

var (
	_ keystore.Backend   = Backend{}
	_ keystore.Generator = Backend{}
	_ keystore.Deleter   = Backend{}
	_ keystore.Describer = Backend{}
)

func path(u *keystore.URI) (string, error) {
	if u.Scheme != Scheme {
		return "", u.Error("scheme", fmt.Sprintf("the file backend handles file: URIs, not %s:", u.Scheme))
	}
	if err := u.CheckAttrs(nil, nil); err != nil {
		return "", err
	}
	p := u.Opaque
	if !filepath.IsAbs(p) {
		return "", u.Error("path", fmt.Sprintf("%q is not an absolute path", p))
	}
	return filepath.Clean(p), nil
}

// Open reads the PKCS#8 PEM key at the URI's path. The file must exist and
// must not be accessible by group or others.
func (Backend) Open(_ context.Context, u *keystore.URI) (crypto.Signer, error) {
	p, err := path(u)
	if err != nil {
		return nil, err
	}
	return load(p)
}

func load(p string) (crypto.Signer, error) {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("key file %s: %w (generate it first)", p, keystore.ErrNotFound)
		}
		return nil, fmt.Errorf("key file %s: %w", p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", p, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s: not a regular file (mode %s)", p, st.Mode())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s: mode %04o: %w: group or others can access it; run `chmod 600 %s`", p, perm, ErrPermissions, p)
	}
	data, err := readAll(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", p, err)
	}
	s, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", p, err)
	}
	return s, nil
}

func readAll(f *os.File, size int64) ([]byte, error) {
	const max = 1 << 20
	if size > max {
		return nil, fmt.Errorf("%d bytes is too large for a private key", size)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if len(data) > max {
		return nil, fmt.Errorf("more than %d bytes is too large for a private key", max)
	}
	return data, nil
}

// parse decodes a PKCS#8 PEM private key. Errors never contain key material.
func parse(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found (expected \"-----BEGIN PRIVATE KEY-----\", PKCS#8)")
	}
	if block.Type != pemType {
		return nil, fmt.Errorf("PEM block %q is not a PKCS#8 private key (expected %q; convert with `openssl pkcs8 -topk8 -nocrypt`)", block.Type, pemType)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("PKCS#8 private key does not parse")
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: private key type %T", keystore.ErrUnsupportedAlgorithm, k)
	}
	if _, err := keystore.AlgorithmOf(s.Public()); err != nil {
		return nil, err
	}
	return s, nil
}

// Generate creates a key of the given algorithm and writes it as PKCS#8 PEM,
// mode 0600, creating the parent directory (0700) when needed. It never
// replaces an existing file: it returns an error wrapping keystore.ErrExists.
func (Backend) Generate(ctx context.Context, u *keystore.URI, alg keystore.Algorithm) (crypto.Signer, error) {
	p, err := path(u)
	if err != nil {
		return nil, err
	}
	if err := alg.Validate(); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(p); err == nil {
		return nil, fmt.Errorf("key file %s: %w; delete it first to replace it", p, keystore.ErrExists)
	}
	var key crypto.Signer
	if alg.IsRSA() {
		key, err = rsa.GenerateKey(rand.Reader, alg.Bits())
	} else {
		key, err = ecdsa.GenerateKey(alg.Curve(), rand.Reader)
	}
	if err != nil {
		return nil, fmt.Errorf("generating %s key: %w", alg, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding %s key: %w", alg, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der})
	if err := atomicfile.MkdirAll(filepath.Dir(p), 0o700, keystore.FileOptions(ctx)...); err != nil {
		return nil, fmt.Errorf("key file %s: creating directory: %w", p, err)
	}
	if err := atomicfile.CreateExclusiveWith(p, data, 0o600, keystore.FileOptions(ctx)...); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("key file %s: %w; delete it first to replace it", p, keystore.ErrExists)
		}
		return nil, fmt.Errorf("key file %s: %w", p, err)
	}
	return key, nil
}

// Delete removes the key file. A missing file is an error wrapping
// keystore.ErrNotFound.
func (Backend) Delete(_ context.Context, u *keystore.URI) error {
	p, err := path(u)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("key file %s: %w", p, keystore.ErrNotFound)
		}
		return fmt.Errorf("key file %s: %w", p, err)
	}
	return atomicfile.SyncDir(filepath.Dir(p))
}

// Describe reports the key's algorithm and fingerprint. A file key has no
// hardware protection: Hardware is false and every attribute is false.
func (Backend) Describe(_ context.Context, u *keystore.URI) (keystore.Info, error) {
	p, err := path(u)
	if err != nil {
		return keystore.Info{}, err
	}
	s, err := load(p)
	if err != nil {
		return keystore.Info{}, err
	}
	info, err := keystore.DescribePublic(s.Public())
	if err != nil {
		return keystore.Info{}, fmt.Errorf("key file %s: %w", p, err)
	}
	info.URI = u.Redacted()
	info.Backend = Scheme
	info.Hardware = false
	info.Attributes = map[string]bool{
		"sensitive":        false,
		"neverExtractable": false,
		"alwaysSensitive":  false,
		"local":            false,
	}
	return info, nil
}
