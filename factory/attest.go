package factory

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/keystore"
)

// DefaultAKHandle is where the attestation key of a bootstrap key kept at a
// persistent handle goes, unless Provisioning.AKURI says otherwise.
const DefaultAKHandle = keystore.DefaultAKHandle

// Attestation statuses in AttestationReport.Status.
const (
	StatusAttested    = "attested"
	StatusNotAttested = "not-attested"
)

// AttestationReport is what the factory's TPM enrolment recorded.
type AttestationReport struct {
	Status string `json:"status"`        // StatusAttested or StatusNotAttested
	Why    string `json:"why,omitempty"` // why not attested
	EK     string `json:"ek,omitempty"`  // attest.EKCertified, EKUnverified (root unknown here: the cloud decides) or EKFactoryRecored
	EKCert string `json:"ek_cert_sha256,omitempty"`
	EKPub  string `json:"ek_pub_sha256,omitempty"`
	// EKIssuer is the EK certificate's issuer.
	EKIssuer string `json:"ek_issuer,omitempty"`
	// EKCertificate is the DER EK certificate (base64 in JSON): the manifest
	// records only its hash; keep it for the cloud, or let the device send it.
	EKCertificate []byte `json:"ek_certificate,omitempty"`
	AKURI         string `json:"ak_uri,omitempty"`
	AKName        string `json:"ak_name,omitempty"`
}

// akURIFor derives the AK's URI next to the bootstrap key
// (keystore.DefaultAKURI: where bootcertd looks for it).
func akURIFor(keyURI string) (string, error) { return keystore.DefaultAKURI(keyURI) }

// enrol reads the EK, creates the AK next to the bootstrap key, proves the
// AK is in the EK's TPM (credential activation), certifies the bootstrap
// key with it and verifies that output with the cloud's verifier. It
// returns the record for the manifest. created is the AK's URI when this
// call made it (to undo), "" otherwise.
func (p *Provisioner) enrol(ctx context.Context, r Provisioning) (rec *attest.Record, rep *AttestationReport, created string, err error) {
	akURI := r.AKURI
	if akURI == "" {
		if akURI, err = akURIFor(r.KeyURI); err != nil {
			return nil, nil, "", err
		}
	}
	ek, err := keystore.ReadEndorsement(ctx, r.KeyURI)
	if err != nil {
		return nil, nil, "", err
	}
	ak, err := keystore.CreateAK(ctx, akURI)
	if errors.Is(err, keystore.ErrExists) {
		return nil, nil, "", fmt.Errorf("%w; an attestation key is never overwritten: remove it (the file, or evict the handle) to enrol this device again", err)
	}
	if err != nil {
		return nil, nil, "", err
	}
	created = akURI
	ch, err := attest.NewChallenge(ek.Public, ak.Name)
	if err != nil {
		return nil, nil, created, err
	}
	answer, err := keystore.ActivateCredential(ctx, akURI, ek, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return nil, nil, created, err
	}
	trust := attest.Trust{AllowUnverifiedEK: true}
	if r.EKTrust != nil {
		trust = *r.EKTrust
		trust.AllowUnverifiedEK = !r.RequireEKRoot
	}
	rec, res, err := attest.Enrol(attest.Enrolment{EKCert: ek.Certificate, EKPublic: ek.Public, AKPublic: ak.Public}, ch, answer, trust)
	if err != nil {
		return nil, nil, created, err
	}
	// Certify the bootstrap key and check it as the cloud will.
	nonce := make([]byte, 16)
	rand.Read(nonce)
	qd := attest.Binding{Purpose: "enrolment", ThingName: r.DeviceID, Nonce: nonce}.QualifyingData()
	c, err := keystore.Certify(ctx, r.KeyURI, akURI, qd)
	if err != nil {
		return nil, nil, created, err
	}
	s, err := keystore.Open(ctx, r.KeyURI)
	if err != nil {
		return nil, nil, created, err
	}
	pub := s.Public()
	keystore.CloseSigner(s)
	if _, err := attest.Verify(rec, &attest.Evidence{Attest: c.Attest, Signature: c.Signature, Public: c.Public, EKCert: ek.Certificate},
		attest.Expected{QualifyingData: qd, PublicKey: pub}, trust); err != nil {
		return nil, nil, created, fmt.Errorf("the factory's own attestation does not verify: %w", err)
	}
	rep = &AttestationReport{
		Status: StatusAttested, EK: res.EK, EKIssuer: res.EKIssuer, EKCert: rec.EKCertSHA256, EKPub: rec.EKPubSHA256,
		EKCertificate: ek.Certificate, AKURI: redact(akURI), AKName: hex.EncodeToString(rec.AKName),
	}
	return rec, rep, created, nil
}

// removeAK undoes CreateAK for a key-file AK. A persistent AK stays (the
// keystore's Delete refuses restricted keys); the error says so.
func removeAK(uri string) error {
	u, err := keystore.ParseURI(uri)
	if err != nil {
		return err
	}
	if blob, ok := u.Get("blob"); ok {
		if err := os.Remove(blob); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return fmt.Errorf("attestation key %s was left in the TPM (evict it with tpm2_evictcontrol)", u.Redacted())
}
