package tpm

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/keystore"
)

func init() { keystore.Register("tpm", &Backend{}) }

// Backend is the tpm: key URI scheme. The zero value is ready to use and is
// what keystore.Register gets; tests make their own to inject the clock.
type Backend struct {
	// Sleep waits between retries of a command the TPM answered with
	// TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING or TPM_RC_NV_RATE.
	// nil means time.Sleep.
	Sleep func(time.Duration)
	// Retries bounds the retries of one command; 0 means DefaultRetries.
	Retries int
}

var (
	_ keystore.Backend   = (*Backend)(nil)
	_ keystore.Generator = (*Backend)(nil)
	_ keystore.Deleter   = (*Backend)(nil)
	_ keystore.Describer = (*Backend)(nil)
)

func (b *Backend) sleep(d time.Duration) {
	if b.Sleep != nil {
		b.Sleep(d)
		return
	}
	time.Sleep(d)
}

func (b *Backend) retries() int {
	if b.Retries > 0 {
		return b.Retries
	}
	return DefaultRetries
}

// Open returns a signer for an existing key, loaded into the TPM (a key file)
// or read from its persistent handle. The signer holds a TPM object slot
// until Close (keystore.CloseSigner).
func (b *Backend) Open(ctx context.Context, u *keystore.URI) (crypto.Signer, error) {
	s, err := b.open(ctx, u, false)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// open opens a key (ak false) or an attestation key (ak true).
func (b *Backend) open(ctx context.Context, u *keystore.URI, ak bool) (*Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := parseSpec(u)
	if err != nil {
		return nil, err
	}
	s := &Signer{b: b, spec: k, ak: ak}
	if k.blob != "" {
		kf, err := readKeyFileAs(k.blob, ak)
		if err != nil {
			return nil, err
		}
		pub, err := kf.Pubkey.Contents()
		if err != nil {
			return nil, fmt.Errorf("key file %s: public area: %w", k.blob, err)
		}
		if err := s.setPublic(pub); err != nil {
			return nil, fmt.Errorf("key file %s: %w", k.blob, err)
		}
		s.kf = kf
	}
	if err := s.withDevice(func(d *device) error {
		if k.handle != 0 {
			return s.readPersistent(d)
		}
		return s.ensureLoaded(d)
	}); err != nil {
		return nil, err
	}
	return s, nil
}

func readKeyFile(path string) (*keyfile.TPMKey, error) { return readKeyFileAs(path, false) }

func readKeyFileAs(path string, ak bool) (*keyfile.TPMKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key file %s: %w", path, keystore.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading key file: %w", err)
	}
	return decodeKeyFileAs(path, data, ak)
}

// decodeKeyFile parses a TSS2 PEM key file and checks it is a key bootcert
// can use: loadable, empty auth, an unrestricted signing key of a supported
// algorithm.
func decodeKeyFile(path string, data []byte) (*keyfile.TPMKey, error) {
	return decodeKeyFileAs(path, data, false)
}

// decodeKeyFileAs is decodeKeyFile for a key (ak false) or an attestation
// key (ak true: a restricted signing key).
func decodeKeyFileAs(path string, data []byte, ak bool) (kf *keyfile.TPMKey, err error) {
	defer func() {
		// The key file parser is third-party code fed outside input.
		if r := recover(); r != nil {
			kf, err = nil, fmt.Errorf("key file %s: malformed TSS2 key: %v", path, r)
		}
	}()
	kf, err = keyfile.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: not a TSS2 PRIVATE KEY PEM file: %v", path, err)
	}
	if !kf.Keytype.Equal(keyfile.OIDLoadableKey) {
		return nil, fmt.Errorf("key file %s: key type %v is not a loadable key (importable and sealed keys are not supported)", path, kf.Keytype)
	}
	if !kf.EmptyAuth {
		return nil, fmt.Errorf("key file %s: the key has an auth value; bootcert uses keys with empty auth only", path)
	}
	pub, err := kf.Pubkey.Contents()
	if err != nil {
		return nil, fmt.Errorf("key file %s: public area: %w", path, err)
	}
	probe := Signer{ak: ak}
	if err := probe.setPublic(pub); err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return kf, nil
}

// Generate creates a key inside the TPM under the persisted SRK (created
// when missing). It never overwrites: an existing key file or an occupied
// persistent handle gives an error wrapping keystore.ErrExists.
func (b *Backend) Generate(ctx context.Context, u *keystore.URI, alg keystore.Algorithm) (crypto.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := parseSpec(u)
	if err != nil {
		return nil, err
	}
	tmpl, err := keyTemplate(alg)
	if err != nil {
		return nil, err
	}
	s, err := b.create(k, tmpl, string(alg)+" key", false, keystore.FileOptions(ctx))
	if err != nil {
		return nil, err
	}
	return s, nil
}

// create makes a key (or an attestation key, ak) from tmpl under the SRK,
// as a key file or at a persistent handle, and returns it loaded. A key file
// is written with opts (its owner: keystore.WithOwner).
func (b *Backend) create(k *keySpec, tmpl tpm2.TPMTPublic, what string, ak bool, opts []atomicfile.Option) (*Signer, error) {
	if k.blob != "" {
		if _, err := os.Lstat(k.blob); err == nil {
			return nil, fmt.Errorf("key file %s: %w (delete it first, or choose another path)", k.blob, keystore.ErrExists)
		}
		if fi, err := os.Stat(filepath.Dir(k.blob)); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("key file %s: directory %s does not exist", k.blob, filepath.Dir(k.blob))
		}
	}
	s := &Signer{b: b, spec: k, ak: ak}
	err := s.withDevice(func(d *device) error {
		srk, err := d.srk(b, k.srk)
		if err != nil {
			return err
		}
		if k.handle != 0 {
			if _, err := run(b, d, "read persistent handle", tpm2.ReadPublic{ObjectHandle: k.handle}); err == nil {
				return fmt.Errorf("persistent handle 0x%08x on %s: %w (delete it first, or choose another handle)", uint32(k.handle), k.device, keystore.ErrExists)
			} else if !isRC(err, tpm2.TPMRCHandle) {
				return err
			}
		}
		parent := tpm2.AuthHandle{Handle: k.srk, Name: srk.name, Auth: tpm2.PasswordAuth(nil)}
		crsp, err := runRoom(b, d, s, "create "+what, tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)})
		if isRC(err, tpm2.TPMRCValue) || isRC(err, tpm2.TPMRCKeySize) || isRC(err, tpm2.TPMRCCurve) {
			return fmt.Errorf("%w: the TPM on %s refused to make a %s (tpm2_getcap ecc-curves / algorithms shows what it supports): %w", keystore.ErrUnsupportedAlgorithm, k.device, what, err)
		}
		if err != nil {
			return err
		}
		pub, err := crsp.OutPublic.Contents()
		if err != nil {
			return fmt.Errorf("new key's public area: %w", err)
		}
		if err := s.setPublic(pub); err != nil {
			return err
		}
		if k.blob != "" {
			// The key file names the parent tpm2-openssl and other TSS2 readers
			// can find: the owner hierarchy when our SRK is the standard H-2
			// one (they recreate it), else the SRK's persistent handle.
			fileParent := k.srk
			if srk.h2 {
				fileParent = tpm2.TPMRHOwner
			}
			kf := keyfile.NewTPMKey(keyfile.OIDLoadableKey, crsp.OutPublic, crsp.OutPrivate, keyfile.WithParent(fileParent))
			var buf bytes.Buffer
			if err := keyfile.Encode(&buf, kf); err != nil {
				return fmt.Errorf("encoding key file: %w", err)
			}
			if err := atomicfile.CreateExclusiveWith(k.blob, buf.Bytes(), 0o600, opts...); err != nil {
				if errors.Is(err, fs.ErrExist) {
					return fmt.Errorf("key file %s: %w", k.blob, keystore.ErrExists)
				}
				return err
			}
			s.kf = kf
			return s.loadLocked(d)
		}
		lrsp, err := runRoom(b, d, s, "load new key", tpm2.Load{ParentHandle: parent, InPrivate: crsp.OutPrivate, InPublic: crsp.OutPublic})
		if err != nil {
			return err
		}
		_, err = run(b, d, fmt.Sprintf("persist key at 0x%08x", uint32(k.handle)), tpm2.EvictControl{
			Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			ObjectHandle:     tpm2.NamedHandle{Handle: lrsp.ObjectHandle, Name: lrsp.Name},
			PersistentHandle: k.handle,
		})
		if _, ferr := run(b, d, "flush transient key", tpm2.FlushContext{FlushHandle: lrsp.ObjectHandle}); ferr != nil && err == nil {
			err = ferr
		}
		if isRC(err, tpm2.TPMRCNVDefined) {
			return fmt.Errorf("persistent handle 0x%08x on %s: %w", uint32(k.handle), k.device, keystore.ErrExists)
		}
		if err != nil {
			return err
		}
		s.h, s.name, s.loadedIn = k.handle, lrsp.Name, d
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Delete removes a key file (after checking it is one) or evicts a
// persistent key (after checking it is a signing key, not an SRK or EK).
func (b *Backend) Delete(ctx context.Context, u *keystore.URI) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k, err := parseSpec(u)
	if err != nil {
		return err
	}
	if k.blob != "" {
		if _, err := readKeyFile(k.blob); err != nil {
			return err
		}
		if err := os.Remove(k.blob); err != nil {
			return fmt.Errorf("deleting key file: %w", err)
		}
		return atomicfile.SyncDir(filepath.Dir(k.blob))
	}
	s := &Signer{b: b, spec: k}
	return s.withDevice(func(d *device) error {
		rsp, err := run(b, d, fmt.Sprintf("read persistent key 0x%08x", uint32(k.handle)), tpm2.ReadPublic{ObjectHandle: k.handle})
		if isRC(err, tpm2.TPMRCHandle) {
			return fmt.Errorf("persistent handle 0x%08x on %s: %w", uint32(k.handle), k.device, keystore.ErrNotFound)
		}
		if err != nil {
			return err
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return fmt.Errorf("persistent handle 0x%08x: %w", uint32(k.handle), err)
		}
		if !pub.ObjectAttributes.SignEncrypt || pub.ObjectAttributes.Restricted {
			return fmt.Errorf("persistent handle 0x%08x on %s is not an unrestricted signing key (an SRK or EK?): refusing to evict it", uint32(k.handle), k.device)
		}
		_, err = run(b, d, fmt.Sprintf("evict persistent key 0x%08x", uint32(k.handle)), tpm2.EvictControl{
			Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			ObjectHandle:     tpm2.NamedHandle{Handle: k.handle, Name: rsp.Name},
			PersistentHandle: k.handle,
		})
		return err
	})
}

// Describe reads the key's public area back from the TPM.
func (b *Backend) Describe(ctx context.Context, u *keystore.URI) (keystore.Info, error) {
	sg, err := b.Open(ctx, u)
	if err != nil {
		return keystore.Info{}, err
	}
	s := sg.(*Signer)
	defer s.Close()
	var attrs tpm2.TPMAObject
	err = s.withDevice(func(d *device) error {
		if err := s.ensureLoaded(d); err != nil {
			return err
		}
		rsp, err := run(b, d, "read public area", tpm2.ReadPublic{ObjectHandle: s.h})
		if err != nil {
			return err
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return err
		}
		attrs = pub.ObjectAttributes
		return nil
	})
	if err != nil {
		return keystore.Info{}, err
	}
	info, err := keystore.DescribePublic(s.pub)
	if err != nil {
		return keystore.Info{}, err
	}
	info.URI = u.Redacted()
	info.Backend = "tpm"
	info.Attributes = map[string]bool{
		"fixedTPM":            attrs.FixedTPM,
		"fixedParent":         attrs.FixedParent,
		"sensitiveDataOrigin": attrs.SensitiveDataOrigin,
		"userWithAuth":        attrs.UserWithAuth,
		"noDA":                attrs.NoDA,
	}
	info.Hardware = attrs.FixedTPM && attrs.SensitiveDataOrigin
	return info, nil
}

// keyTemplate is the public template of a bootcert key: made and kept in
// the TPM (fixedTPM, fixedParent, sensitiveDataOrigin), usable with an empty
// password (userWithAuth), a signing key with a NULL scheme so that Sign
// chooses ECDSA, RSASSA or RSAPSS per call.
//
// noDA: the key's auth value is empty, so dictionary-attack protection
// guards nothing (anyone who can send commands can use it), while a power
// cut during its use can count as a failed authorization at the next
// TPM2_Startup and walk a headless gateway into lockout. noDA would be
// unsafe on a key with a secret auth value (a PIN: noDA would allow
// unlimited guessing) or a policy with PolicyAuthValue/PolicyPassword;
// bootcert makes neither. Keys made before noDA was set keep working.
func keyTemplate(alg keystore.Algorithm) (tpm2.TPMTPublic, error) {
	attrs := tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		SignEncrypt:         true,
	}
	switch alg {
	case keystore.ECDSAP256, keystore.ECDSAP384:
		curve := tpm2.TPMECCNistP256
		if alg == keystore.ECDSAP384 {
			curve = tpm2.TPMECCNistP384
		}
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgECC,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				CurveID: curve,
				Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
				KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
		}, nil
	case keystore.RSA2048, keystore.RSA3072:
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgRSA,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Scheme:  tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits: tpm2.TPMKeyBits(alg.Bits()),
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}, nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("%w %q for a TPM key (use one of %v)", keystore.ErrUnsupportedAlgorithm, string(alg), keystore.Algorithms)
}

// srk returns the persisted SRK at handle, creating it with the TCG H-2
// template (ECC P-256, empty unique) when missing, and finds out once per
// process whether an existing one is the H-2 SRK. Caller holds d.mu.
func (d *device) srk(b *Backend, handle tpm2.TPMHandle) (*srkState, error) {
	if st := d.srks[handle]; st != nil && st.checked {
		return st, nil
	}
	st := d.srks[handle]
	if st == nil {
		rsp, err := run(b, d, fmt.Sprintf("read SRK 0x%08x", uint32(handle)), tpm2.ReadPublic{ObjectHandle: handle})
		switch {
		case err == nil:
			pub, err := rsp.OutPublic.Contents()
			if err != nil {
				return nil, fmt.Errorf("SRK 0x%08x: %w", uint32(handle), err)
			}
			if !pub.ObjectAttributes.Restricted || !pub.ObjectAttributes.Decrypt {
				return nil, fmt.Errorf("persistent handle 0x%08x on %s is not a storage key; give srk= the handle of your SRK", uint32(handle), d.name)
			}
			st = &srkState{name: rsp.Name}
		case isRC(err, tpm2.TPMRCHandle):
			return d.createSRK(b, handle)
		default:
			return nil, err
		}
		d.srks[handle] = st
	}
	// An existing SRK: is it the H-2 one? Recreate H-2 and compare names.
	prim, err := runRoom(b, d, nil, "create H-2 SRK to compare", createPrimaryH2())
	var te *Error
	if errors.As(err, &te) && te.AuthFailure() {
		// The owner hierarchy has a password: use the persisted SRK as it is
		// and name it, not the owner hierarchy, as the key files' parent.
		slog.Warn("tpm: cannot check whether the SRK is the standard H-2 one (owner hierarchy has a password); key files will name the SRK handle as parent", "device", d.name, "srk", fmt.Sprintf("0x%08x", uint32(handle)))
		st.checked, st.unknown = true, true
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if _, err := run(b, d, "flush H-2 SRK", tpm2.FlushContext{FlushHandle: prim.ObjectHandle}); err != nil {
		return nil, err
	}
	st.h2 = bytes.Equal(prim.Name.Buffer, st.name.Buffer)
	st.checked = true
	return st, nil
}

func (d *device) createSRK(b *Backend, handle tpm2.TPMHandle) (*srkState, error) {
	prim, err := runRoom(b, d, nil, "create SRK", createPrimaryH2())
	if err != nil {
		return nil, err
	}
	_, err = run(b, d, fmt.Sprintf("persist SRK at 0x%08x", uint32(handle)), tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: prim.ObjectHandle, Name: prim.Name},
		PersistentHandle: handle,
	})
	if _, ferr := run(b, d, "flush SRK", tpm2.FlushContext{FlushHandle: prim.ObjectHandle}); ferr != nil && err == nil {
		err = ferr
	}
	if err != nil {
		return nil, err
	}
	st := &srkState{name: prim.Name, checked: true, h2: true}
	d.srks[handle] = st
	return st, nil
}

func createPrimaryH2() tpm2.CreatePrimary {
	return tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(keyfile.ECCSRK_H2_Template),
	}
}
