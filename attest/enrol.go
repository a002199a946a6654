package attest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"io"

	"github.com/google/go-tpm/tpm2"
)

// Enrolment is what the factory read from a device's TPM.
type Enrolment struct {
	EKCert   []byte // DER EK certificate, nil when the TPM has none
	EKPublic []byte // the EK's TPMT_PUBLIC
	AKPublic []byte // the new AK's TPMT_PUBLIC
}

// Challenge is a credential-activation challenge (TPM2_MakeCredential done
// in software): a fresh 32-byte secret encrypted to the EK and bound to the
// AK's name. Only the TPM that holds the EK, with that AK loaded, recovers
// it. It is single use.
type Challenge struct {
	CredentialBlob  []byte // TPM2B_ID_OBJECT contents
	EncryptedSecret []byte // TPM2B_ENCRYPTED_SECRET contents
	ekPublic        []byte
	akName          []byte
	secret          []byte
}

// NewChallenge makes a challenge for the EK ekPublic and the AK named akName.
func NewChallenge(ekPublic, akName []byte) (*Challenge, error) {
	ek, err := ParsePublic(ekPublic)
	if err != nil {
		return nil, rejectErr(ReasonEKNotEndorsementKey, err, "EK public area")
	}
	if err := checkEK(ek); err != nil {
		return nil, err
	}
	k, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, rejectErr(ReasonEKNotEndorsementKey, err, "EK")
	}
	secret := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, secret); err != nil {
		return nil, err
	}
	blob, enc, err := tpm2.CreateCredential(rand.Reader, k, akName, secret)
	if err != nil {
		return nil, rejectErr(ReasonEKNotEndorsementKey, err, "making the credential")
	}
	return &Challenge{CredentialBlob: blob, EncryptedSecret: enc, ekPublic: bytes.Clone(ekPublic), akName: bytes.Clone(akName), secret: secret}, nil
}

// check compares the answer in constant time and spends the challenge.
func (c *Challenge) check(ekPublic, akName, answer []byte) error {
	if c == nil || c.secret == nil {
		return reject(ReasonActivationFailed, "no challenge, or a challenge used before (challenges are single use)")
	}
	secret := c.secret
	c.secret = nil
	if !bytes.Equal(c.ekPublic, ekPublic) || !bytes.Equal(c.akName, akName) {
		return reject(ReasonActivationFailed, "the challenge was made for another EK or AK")
	}
	if subtle.ConstantTimeCompare(secret, answer) != 1 {
		return reject(ReasonActivationFailed, "the TPM did not return the challenge's secret: the AK is not in the EK's TPM")
	}
	return nil
}

// checkEK: the EK is a storage key of a TPM (restricted decrypt, fixedTPM).
func checkEK(ek *tpm2.TPMTPublic) error {
	a := ek.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return reject(ReasonEKNotEndorsementKey, "the EK public area is not a TPM-resident restricted decryption key")
	}
	return nil
}

// EnrolResult says how the EK was established.
type EnrolResult struct {
	EK       string // EKCertified, EKUnverified or EKFactoryRecored
	EKIssuer string
}

// Enrol checks a device's enrolment (docs/attestation.md, once per device)
// and returns the record to store:
//  1. the EK certificate (if any) chains to trust (or trust allows it unverified);
//  2. the EK public area is the key in the EK certificate;
//  3. the AK is a restricted signing key made in and fixed to the TPM;
//  4. answer is the secret of ch, a challenge for this EK and AK;
//
// and 5. the record binds the EK to the AK name once.
func Enrol(e Enrolment, ch *Challenge, answer []byte, trust Trust) (*Record, *EnrolResult, error) {
	ek, err := ParsePublic(e.EKPublic)
	if err != nil {
		return nil, nil, rejectErr(ReasonEKNotEndorsementKey, err, "EK public area")
	}
	if err := checkEK(ek); err != nil {
		return nil, nil, err
	}
	ekKey, err := publicKey(ek)
	if err != nil {
		return nil, nil, rejectErr(ReasonEKNotEndorsementKey, err, "EK public key")
	}
	ekFP, err := spkiSHA256(ekKey)
	if err != nil {
		return nil, nil, rejectErr(ReasonEKNotEndorsementKey, err, "EK public key")
	}
	rec := &Record{EKPubSHA256: ekFP, AKPublic: bytes.Clone(e.AKPublic)}
	res := &EnrolResult{EK: EKFactoryRecored}
	if e.EKCert != nil {
		cert, status, err := checkEKCert(e.EKCert, trust)
		if err != nil {
			return nil, nil, err
		}
		if fp, err := spkiSHA256(cert.PublicKey); err != nil || fp != ekFP {
			return nil, nil, reject(ReasonEKKeyMismatch, "the EK read from the TPM is not the key in its EK certificate")
		}
		rec.EKCertSHA256 = sha256Hex(e.EKCert)
		res.EK, res.EKIssuer = status, cert.Issuer.String()
	}
	if _, err := checkAK(e.AKPublic, nil); err != nil {
		return nil, nil, err
	}
	name, err := Name(e.AKPublic)
	if err != nil {
		return nil, nil, rejectErr(ReasonAKAlgorithm, err, "AK")
	}
	rec.AKName = name
	if err := ch.check(e.EKPublic, name, answer); err != nil {
		return nil, nil, err
	}
	return rec, res, nil
}

// Binding is what an attestation's qualifying data binds it to. Purpose
// separates uses ("enrolment" at the factory, "rotation" for a CSR).
type Binding struct {
	Purpose   string
	ThingName string
	JobID     string
	Nonce     []byte // at the factory: 16 random bytes; at a rotation: the request's clientToken
	// Certificate is, at a rotation, the AWS IoT ID of the certificate the
	// device is connected with (the broker authenticated it; the vendor
	// reads it as the rule's principal()). It changes at every committed
	// rotation, so an attestation made for one rotation never verifies in
	// another even though the continuous job keeps its ID.
	Certificate string
}

// RotationBinding is the binding of a rotation's attestation: the thing,
// the job, the certificate the request came over and the request's
// clientToken. Device and vendor both compute it from what they know:
// nothing in it is taken from the attestation itself.
func RotationBinding(thing, jobID, certificateID, clientToken string) Binding {
	return Binding{Purpose: "rotation", ThingName: thing, JobID: jobID, Nonce: []byte(clientToken), Certificate: certificateID}
}

// QualifyingData is SHA-256 over a version label and each field preceded by
// its 32-bit length. (ATTESTATION.md writes H(nonce || jobId || thingName);
// plain concatenation is ambiguous — "ab"+"c" = "a"+"bc" — so the fields
// are length-prefixed.)
func (b Binding) QualifyingData() []byte {
	h := sha256.New()
	h.Write([]byte("bootcert-attest-v1"))
	for _, f := range [][]byte{[]byte(b.Purpose), []byte(b.ThingName), []byte(b.JobID), b.Nonce, []byte(b.Certificate)} {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f))))
		h.Write(f)
	}
	return h.Sum(nil)
}
