package keystore

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// Attestation abilities. A backend whose keys live in a TPM 2.0 can prove it:
// an attestation key (AK), a restricted signing key that never leaves the
// TPM, signs a TPM-made statement (TPM2_Certify) naming another key of the
// same TPM. The structures are handed out as the TPM's own bytes so that
// this package does not depend on a TPM library; package attest parses and
// verifies them. PKCS#11 and file backends implement none of these: their
// keys are "not attested" (errors wrap ErrUnsupported).

// Attester is implemented by backends that can make attestation keys and
// certify keys with them.
type Attester interface {
	// CreateAK makes an attestation key at ak (restricted signing,
	// fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, noDA, an
	// empty auth value). It never overwrites: an existing ak gives an error
	// wrapping ErrExists.
	CreateAK(ctx context.Context, ak *URI) (AttestationKey, error)
	// Certify has the AK at ak sign a TPMS_ATTEST (TPM2_Certify) that names
	// the key at key, with qualifyingData as its extraData (at most 64
	// bytes; a digest binding the attestation to its purpose).
	Certify(ctx context.Context, key, ak *URI, qualifyingData []byte) (Certification, error)
}

// Endorser is implemented by backends that can read the TPM's endorsement
// key (EK) and answer a credential-activation challenge with it.
type Endorser interface {
	// Endorsement reads the EK of the TPM that u's key lives on: its
	// certificate from NV when the manufacturer stored one, and its public
	// area recreated from the standard template.
	Endorsement(ctx context.Context, u *URI) (Endorsement, error)
	// ActivateCredential runs TPM2_ActivateCredential with the EK described
	// by ek and the AK at ak, and returns the secret the challenge carried.
	// It succeeds only when the AK is loaded in the TPM that holds ek.
	ActivateCredential(ctx context.Context, ak *URI, ek Endorsement, credentialBlob, encryptedSecret []byte) ([]byte, error)
}

// LockoutReporter is implemented by backends that can report the
// dictionary-attack lockout state of their device.
type LockoutReporter interface {
	Lockout(ctx context.Context, u *URI) (Lockout, error)
}

// AttestationKey is a new AK.
type AttestationKey struct {
	URI    string `json:"uri"`    // redacted
	Public []byte `json:"public"` // TPMT_PUBLIC, as the TPM marshals it
	Name   []byte `json:"name"`   // TPM2B_NAME contents: nameAlg || H(public)
}

// Certification is what TPM2_Certify returned.
type Certification struct {
	Attest    []byte `json:"attest"`    // TPMS_ATTEST, the signed bytes
	Signature []byte `json:"signature"` // TPMT_SIGNATURE over Attest, by the AK
	Public    []byte `json:"public"`    // TPMT_PUBLIC of the certified key
}

// Endorsement is a TPM's endorsement key.
type Endorsement struct {
	// Certificate is the DER EK certificate read from NV, nil when the TPM
	// has none.
	Certificate []byte `json:"certificate,omitempty"`
	// NVIndex is where Certificate was read, 0 when there is none.
	NVIndex uint32 `json:"nv_index,omitempty"`
	// Public is the EK's TPMT_PUBLIC, recreated from Template.
	Public []byte `json:"public"`
	// Template names the TCG EK Credential Profile template: "rsa-2048"
	// (L-1), "ecc-p256" (L-2) or "ecc-p384" (H-3).
	Template string `json:"template"`
}

// Lockout is the TPM's dictionary-attack state (TPM2_GetCapability,
// TPM_PT_LOCKOUT_COUNTER, TPM_PT_MAX_AUTH_FAIL, TPM_PT_LOCKOUT_INTERVAL,
// TPM_PT_LOCKOUT_RECOVERY, TPM_PT_PERMANENT inLockout).
type Lockout struct {
	Counter         uint32 `json:"counter"`          // failed authorizations counted now
	MaxTries        uint32 `json:"max_tries"`        // failures before lockout
	IntervalSeconds uint32 `json:"interval_seconds"` // one failure forgotten every interval
	RecoverySeconds uint32 `json:"recovery_seconds"` // wait after a lockoutAuth failure
	InLockout       bool   `json:"in_lockout"`
}

// CreateAK creates an attestation key at raw.
func CreateAK(ctx context.Context, raw string) (AttestationKey, error) {
	u, b, err := lookup(raw)
	if err != nil {
		return AttestationKey{}, err
	}
	a, ok := b.(Attester)
	if !ok {
		return AttestationKey{}, fmt.Errorf("creating attestation key %s: %w (only tpm: keys can be attested)", u.Redacted(), ErrUnsupported)
	}
	ak, err := a.CreateAK(ctx, u)
	if err != nil {
		return AttestationKey{}, fmt.Errorf("creating attestation key %s: %w", u.Redacted(), err)
	}
	return ak, nil
}

// Certify certifies the key at keyRaw with the AK at akRaw.
func Certify(ctx context.Context, keyRaw, akRaw string, qualifyingData []byte) (Certification, error) {
	u, b, err := lookup(keyRaw)
	if err != nil {
		return Certification{}, err
	}
	aku, ab, err := lookup(akRaw)
	if err != nil {
		return Certification{}, err
	}
	a, ok := b.(Attester)
	if !ok || ab != b {
		return Certification{}, fmt.Errorf("certifying key %s with %s: %w (only a tpm: key can be certified, by an AK of the same TPM)", u.Redacted(), aku.Redacted(), ErrUnsupported)
	}
	c, err := a.Certify(ctx, u, aku, qualifyingData)
	if err != nil {
		return Certification{}, fmt.Errorf("certifying key %s with %s: %w", u.Redacted(), aku.Redacted(), err)
	}
	return c, nil
}

// ReadEndorsement reads the EK of the TPM behind raw.
func ReadEndorsement(ctx context.Context, raw string) (Endorsement, error) {
	u, b, err := lookup(raw)
	if err != nil {
		return Endorsement{}, err
	}
	e, ok := b.(Endorser)
	if !ok {
		return Endorsement{}, fmt.Errorf("reading the endorsement key behind %s: %w (only tpm: keys have one)", u.Redacted(), ErrUnsupported)
	}
	ek, err := e.Endorsement(ctx, u)
	if err != nil {
		return Endorsement{}, fmt.Errorf("reading the endorsement key behind %s: %w", u.Redacted(), err)
	}
	return ek, nil
}

// ActivateCredential answers a credential-activation challenge with the AK
// at akRaw and the EK ek.
func ActivateCredential(ctx context.Context, akRaw string, ek Endorsement, credentialBlob, encryptedSecret []byte) ([]byte, error) {
	u, b, err := lookup(akRaw)
	if err != nil {
		return nil, err
	}
	e, ok := b.(Endorser)
	if !ok {
		return nil, fmt.Errorf("activating a credential with %s: %w", u.Redacted(), ErrUnsupported)
	}
	secret, err := e.ActivateCredential(ctx, u, ek, credentialBlob, encryptedSecret)
	if err != nil {
		return nil, fmt.Errorf("activating a credential with %s: %w", u.Redacted(), err)
	}
	return secret, nil
}

// ReadLockout reports the dictionary-attack state of the device behind raw.
func ReadLockout(ctx context.Context, raw string) (Lockout, error) {
	u, b, err := lookup(raw)
	if err != nil {
		return Lockout{}, err
	}
	l, ok := b.(LockoutReporter)
	if !ok {
		return Lockout{}, fmt.Errorf("reading the lockout state behind %s: %w", u.Redacted(), ErrUnsupported)
	}
	lo, err := l.Lockout(ctx, u)
	if err != nil {
		return Lockout{}, fmt.Errorf("reading the lockout state behind %s: %w", u.Redacted(), err)
	}
	return lo, nil
}

// EKCertificateReader is implemented by backends that can read the EK
// certificate alone (NV reads, no key creation): what a device sends with
// each attestation, cheaply.
type EKCertificateReader interface {
	// EKCertificate is the DER EK certificate of the TPM behind u, nil when
	// the TPM has none.
	EKCertificate(ctx context.Context, u *URI) ([]byte, error)
}

// ReadEKCertificate reads the EK certificate of the TPM behind raw (nil
// when it has none).
func ReadEKCertificate(ctx context.Context, raw string) ([]byte, error) {
	u, b, err := lookup(raw)
	if err != nil {
		return nil, err
	}
	r, ok := b.(EKCertificateReader)
	if !ok {
		return nil, fmt.Errorf("reading the EK certificate behind %s: %w", u.Redacted(), ErrUnsupported)
	}
	der, err := r.EKCertificate(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("reading the EK certificate behind %s: %w", u.Redacted(), err)
	}
	return der, nil
}

// DefaultAKHandle is where the attestation key of a key kept at a
// persistent handle goes by default.
const DefaultAKHandle = "0x81000002"

// DefaultAKURI is where the factory puts the attestation key of the
// (bootstrap) key at keyURI, and where bootcertd looks for it: next to it,
// on the same device. blob=DIR/X.tpmkey gives blob=DIR/X.ak.tpmkey;
// handle= gives handle=DefaultAKHandle; device= and srk= are kept.
func DefaultAKURI(keyURI string) (string, error) {
	u, err := ParseURI(keyURI)
	if err != nil {
		return "", err
	}
	if u.Scheme != "tpm" {
		return "", fmt.Errorf("%s: %w (only tpm: keys have an attestation key)", u.Redacted(), ErrUnsupported)
	}
	parts := []string{}
	if d, ok := u.Get("device"); ok {
		parts = append(parts, "device="+d)
	}
	if blob, ok := u.Get("blob"); ok {
		if strings.ContainsAny(blob, ";?%") {
			return "", fmt.Errorf("cannot derive the attestation key's file from %s: name it explicitly", u.Redacted())
		}
		ext := filepath.Ext(blob)
		parts = append(parts, "blob="+strings.TrimSuffix(blob, ext)+".ak"+ext)
	} else {
		parts = append(parts, "handle="+DefaultAKHandle)
	}
	if s, ok := u.Get("srk"); ok {
		parts = append(parts, "srk="+s)
	}
	return "tpm:" + strings.Join(parts, ";"), nil
}
