package tpm

import (
	"crypto"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"

	"github.com/bootcert/bootcert/keystore"
)

// Signer is a crypto.Signer whose private key stays in the TPM. A key file
// is loaded once per process per device and stays loaded until Close; a
// Sign is then exactly one TPM command (TPM2_Sign), plus retries of
// TPM_RC_RETRY.
type Signer struct {
	b    *Backend
	spec *keySpec
	kf   *keyfile.TPMKey // key file, nil for a persistent key
	ak   bool            // an attestation key (restricted signing), not a TLS key

	pubArea tpm2.TPMTPublic
	pub     crypto.PublicKey

	mu       sync.Mutex // guards the fields below; taken before device.mu
	h        tpm2.TPMHandle
	name     tpm2.TPM2BName
	loadedIn *device // the device h is valid in
}

var _ crypto.Signer = (*Signer)(nil)

// Public returns the public key.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// URI is the key's URI, redacted.
func (s *Signer) URI() string { return s.spec.String() }

func (s *Signer) setPublic(pub *tpm2.TPMTPublic) error {
	if s.ak {
		if !pub.ObjectAttributes.SignEncrypt || !pub.ObjectAttributes.Restricted || pub.ObjectAttributes.Decrypt {
			return fmt.Errorf("TPM object is not an attestation key (a restricted signing key)")
		}
	} else if !pub.ObjectAttributes.SignEncrypt || pub.ObjectAttributes.Restricted {
		return fmt.Errorf("TPM object is not an unrestricted signing key")
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return fmt.Errorf("TPM public area: %w", err)
	}
	if _, err := keystore.AlgorithmOf(k); err != nil {
		return err
	}
	s.pubArea, s.pub = *pub, k
	return nil
}

// withDevice runs fn with the signer's device open and locked.
func (s *Signer) withDevice(fn func(d *device) error) error {
	for attempt := 0; ; attempt++ {
		d, err := getDevice(s.spec.device)
		if err != nil {
			return err
		}
		d.mu.Lock()
		if d.closed { // closed under us by CloseDevice: open it again
			d.mu.Unlock()
			if attempt < 3 {
				continue
			}
			return &Error{Op: "open", Device: s.spec.device, Err: fmt.Errorf("%w: closed while in use", ErrDevice)}
		}
		err = fn(d)
		d.used()
		d.mu.Unlock()
		return err
	}
}

// ensureLoaded loads the key file into d unless it is loaded there already.
// Caller holds d.mu.
func (s *Signer) ensureLoaded(d *device) error {
	if s.kf == nil || (s.loadedIn == d && d.loaded[s.h] == s) {
		return nil
	}
	return s.loadLocked(d)
}

// loadLocked loads the key file under its parent. Caller holds d.mu.
func (s *Signer) loadLocked(d *device) error {
	b, k := s.b, s.spec
	parent := s.kf.Parent
	var (
		ph        tpm2.AuthHandle
		flushPrim tpm2.TPMHandle
	)
	switch {
	case parent == tpm2.TPMRHOwner:
		st, err := d.srk(b, k.srk)
		if err != nil {
			return err
		}
		if st.h2 || st.unknown {
			ph = tpm2.AuthHandle{Handle: k.srk, Name: st.name, Auth: tpm2.PasswordAuth(nil)}
		} else {
			prim, err := runRoom(b, d, s, "create H-2 SRK", createPrimaryH2())
			if err != nil {
				return err
			}
			ph = tpm2.AuthHandle{Handle: prim.ObjectHandle, Name: prim.Name, Auth: tpm2.PasswordAuth(nil)}
			flushPrim = prim.ObjectHandle
		}
	case parent == k.srk:
		st, err := d.srk(b, k.srk)
		if err != nil {
			return err
		}
		ph = tpm2.AuthHandle{Handle: k.srk, Name: st.name, Auth: tpm2.PasswordAuth(nil)}
	case parent>>24 == tpm2.TPMHandle(tpm2.TPMHTPersistent):
		rsp, err := run(b, d, fmt.Sprintf("read parent 0x%08x", uint32(parent)), tpm2.ReadPublic{ObjectHandle: parent})
		if err != nil {
			return err
		}
		ph = tpm2.AuthHandle{Handle: parent, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)}
	default:
		return fmt.Errorf("key file %s: parent handle 0x%08x is not supported (use the owner hierarchy 0x40000001 or a persistent SRK)", k.blob, uint32(parent))
	}
	lrsp, err := runRoom(b, d, s, "load key "+k.blob, tpm2.Load{ParentHandle: ph, InPrivate: s.kf.Privkey, InPublic: s.kf.Pubkey})
	if flushPrim != 0 {
		if _, ferr := run(b, d, "flush H-2 SRK", tpm2.FlushContext{FlushHandle: flushPrim}); ferr != nil && err == nil {
			err = ferr
		}
	}
	if err != nil {
		return err
	}
	s.h, s.name, s.loadedIn = lrsp.ObjectHandle, lrsp.Name, d
	d.loaded[lrsp.ObjectHandle] = s
	return nil
}

// readPersistent reads a persistent key's public area. Caller holds d.mu.
func (s *Signer) readPersistent(d *device) error {
	rsp, err := run(s.b, d, fmt.Sprintf("read persistent key 0x%08x", uint32(s.spec.handle)), tpm2.ReadPublic{ObjectHandle: s.spec.handle})
	if isRC(err, tpm2.TPMRCHandle) {
		return fmt.Errorf("persistent handle 0x%08x on %s: %w", uint32(s.spec.handle), s.spec.device, keystore.ErrNotFound)
	}
	if err != nil {
		return err
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return fmt.Errorf("persistent handle 0x%08x: %w", uint32(s.spec.handle), err)
	}
	if err := s.setPublic(pub); err != nil {
		return fmt.Errorf("persistent handle 0x%08x on %s: %w", uint32(s.spec.handle), s.spec.device, err)
	}
	s.h, s.name, s.loadedIn = s.spec.handle, rsp.Name, d
	return nil
}

var hashAlgs = map[crypto.Hash]tpm2.TPMAlgID{
	crypto.SHA256: tpm2.TPMAlgSHA256,
	crypto.SHA384: tpm2.TPMAlgSHA384,
	crypto.SHA512: tpm2.TPMAlgSHA512,
}

// Sign signs digest, which must be the hash named by opts.HashFunc().
// ECDSA signatures are ASN.1 DER; RSA signatures are PKCS #1 v1.5, or PSS
// (salt length = hash length) when opts is *rsa.PSSOptions.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := opts.HashFunc()
	halg, ok := hashAlgs[h]
	if !ok {
		return nil, fmt.Errorf("signing with %s: hash %v is not supported (use SHA-256, SHA-384 or SHA-512)", s.spec, h)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("signing with %s: digest is %d bytes, %v needs %d", s.spec, len(digest), h, h.Size())
	}
	var scheme tpm2.TPMAlgID
	switch s.pubArea.Type {
	case tpm2.TPMAlgECC:
		scheme = tpm2.TPMAlgECDSA
	case tpm2.TPMAlgRSA:
		scheme = tpm2.TPMAlgRSASSA
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			if pss.SaltLength != rsa.PSSSaltLengthAuto && pss.SaltLength != rsa.PSSSaltLengthEqualsHash && pss.SaltLength != h.Size() {
				return nil, fmt.Errorf("signing with %s: the TPM makes RSA-PSS signatures with salt length = hash length, not %d", s.spec, pss.SaltLength)
			}
			scheme = tpm2.TPMAlgRSAPSS
		}
	default:
		return nil, fmt.Errorf("signing with %s: unsupported key type %v", s.spec, s.pubArea.Type)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var sig *tpm2.TPMTSignature
	err := s.withDevice(func(d *device) error {
		if err := s.ensureLoaded(d); err != nil {
			return err
		}
		rsp, err := run(s.b, d, "sign with "+s.spec.String(), tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: s.h, Name: s.name, Auth: tpm2.PasswordAuth(nil)},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  scheme,
				Details: tpm2.NewTPMUSigScheme(scheme, &tpm2.TPMSSchemeHash{HashAlg: halg}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		})
		if err != nil {
			return err
		}
		sig = &rsp.Signature
		return nil
	})
	if err != nil {
		return nil, err
	}
	return encodeSignature(sig)
}

func encodeSignature(sig *tpm2.TPMTSignature) ([]byte, error) {
	switch sig.SigAlg {
	case tpm2.TPMAlgECDSA:
		e, err := sig.Signature.ECDSA()
		if err != nil {
			return nil, err
		}
		return asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(e.SignatureR.Buffer),
			new(big.Int).SetBytes(e.SignatureS.Buffer),
		})
	case tpm2.TPMAlgRSASSA:
		r, err := sig.Signature.RSASSA()
		if err != nil {
			return nil, err
		}
		return r.Sig.Buffer, nil
	case tpm2.TPMAlgRSAPSS:
		r, err := sig.Signature.RSAPSS()
		if err != nil {
			return nil, err
		}
		return r.Sig.Buffer, nil
	}
	return nil, errors.New("TPM returned an unexpected signature algorithm")
}

// Close flushes the loaded key from the TPM (key files only; a persistent
// key stays). The signer loads it again if used after Close.
func (s *Signer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.loadedIn
	s.loadedIn = nil
	if s.kf == nil || d == nil {
		return nil
	}
	if d.broken.Load() {
		// the transport failed (a TPM not answering): a flush would wait
		// for the command timeout again. The next open of the device
		// flushes what is left (flushStale).
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.broken.Load() {
		return nil
	}
	if d.loaded[s.h] != s {
		return nil
	}
	delete(d.loaded, s.h)
	_, err := run(s.b, d, "flush key "+s.spec.blob, tpm2.FlushContext{FlushHandle: s.h})
	return err
}
