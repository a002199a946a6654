package engine

import (
	"context"
	"errors"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// Attester is what the engine needs to attest a staged key (docs/
// attestation.md): TPM2_Certify under the device's attestation key, and the
// EK certificate. Keys that implement it may attest; KeystoreKeys does.
type Attester interface {
	Certify(ctx context.Context, keyURI, akURI string, qualifyingData []byte) (keystore.Certification, error)
	EKCertificate(ctx context.Context, uri string) ([]byte, error)
}

// Certify certifies a key with an AK of the same TPM.
func (KeystoreKeys) Certify(ctx context.Context, keyURI, akURI string, qd []byte) (keystore.Certification, error) {
	return keystore.Certify(ctx, keyURI, akURI, qd)
}

// EKCertificate reads the EK certificate of the TPM behind uri.
func (KeystoreKeys) EKCertificate(ctx context.Context, uri string) ([]byte, error) {
	return keystore.ReadEKCertificate(ctx, uri)
}

// attestation is the cached evidence of the rotation in progress.
type attestation struct {
	key      string // staged key URI
	qd       []byte // qualifying data it was made for
	evidence *protocol.Attestation
}

// akURI is the attestation key's URI: Config.AttestationKey, else the one
// the factory puts next to a tpm: bootstrap key; "" when there is none.
func (e *Engine) akURI() string {
	if e.cfg.AttestationKey != "" {
		return e.cfg.AttestationKey
	}
	u, err := keystore.DefaultAKURI(e.cfg.BootstrapKey)
	if err != nil {
		return ""
	}
	return u
}

// attest certifies the staged key for this request: TPM2_Certify under the
// AK with qualifying data bound to the thing, the job, the certificate the
// device is connected with and the request's clientToken
// (attest.RotationBinding). It returns nil, without error, when the key
// cannot be attested (not a TPM key, no AK enrolled): the vendor's policy
// decides. A TPM failure is logged and sends no evidence either: under
// AttestationPolicy=required the vendor then refuses, and the rotation
// fails without losing the current credential.
func (s *session) attest(ctx context.Context, keyURI, jobID, clientToken string) *protocol.Attestation {
	e := s.e
	a, ok := e.keys.(Attester)
	ak := e.akURI()
	if !ok || ak == "" {
		return nil
	}
	qd := attest.RotationBinding(e.cfg.Thing, jobID, s.cred.CertificateID(), clientToken).QualifyingData()
	if c := e.rot.attested; c != nil && c.key == keyURI && string(c.qd) == string(qd) {
		return c.evidence
	}
	c, err := a.Certify(ctx, keyURI, ak, qd)
	if err != nil {
		if errors.Is(err, keystore.ErrUnsupported) || errors.Is(err, keystore.ErrNotFound) {
			e.log.Info("staged key not attested", "key", redactURI(keyURI), "why", err.Error())
		} else {
			e.log.Warn("attesting the staged key failed: sending the CSR without evidence", "key", redactURI(keyURI), "err", err.Error())
		}
		return nil
	}
	ev := &protocol.Attestation{Attest: c.Attest, Signature: c.Signature, Public: c.Public}
	if ek, err := a.EKCertificate(ctx, keyURI); err != nil {
		e.log.Warn("reading the EK certificate", "err", err.Error())
	} else {
		ev.EKCert = ek
	}
	e.rot.attested = &attestation{key: keyURI, qd: qd, evidence: ev}
	e.lap("attest")
	return ev
}
