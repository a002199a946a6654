package attest

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/bootcert/bootcert/manifest"
)

// Record is a device's enrolment: the binding of its attestation key to its
// TPM's endorsement key, established once (at the factory, with credential
// activation) and stored (manifest, registry). Every later verification uses
// the stored record; nothing in it is ever taken again from the device.
type Record struct {
	// EKCertSHA256 is the lower-hex SHA-256 of the EK certificate's DER;
	// empty for a TPM without an EK certificate.
	EKCertSHA256 string `json:"ek_cert_sha256,omitempty"`
	// EKPubSHA256 is the lower-hex SHA-256 of the EK's DER
	// SubjectPublicKeyInfo.
	EKPubSHA256 string `json:"ek_pub_sha256"`
	// AKPublic is the AK's TPMT_PUBLIC.
	AKPublic []byte `json:"ak_public"`
	// AKName is nameAlg || H(AKPublic).
	AKName []byte `json:"ak_name"`
	// EKCert is an optional copy of the EK certificate (DER). When absent,
	// the device supplies it in Evidence.EKCert and its hash must match.
	EKCert []byte `json:"ek_cert,omitempty"`
}

// Evidence is what a device sends with a CSR: TPM2_Certify's output for the
// new key, and its EK certificate when the record holds only its hash. JSON
// encodes the byte fields in standard base64.
type Evidence struct {
	Attest    []byte `json:"attest"`            // TPMS_ATTEST
	Signature []byte `json:"signature"`         // TPMT_SIGNATURE by the AK over Attest
	Public    []byte `json:"public"`            // TPMT_PUBLIC of the certified key
	EKCert    []byte `json:"ek_cert,omitempty"` // DER, optional
}

// ParseRecord decodes a JSON record and checks it (CheckRecord).
func ParseRecord(data []byte) (*Record, error) {
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, rejectErr(ReasonRecordInvalid, err, "enrolment record is not JSON")
	}
	if _, err := r.check(); err != nil {
		return nil, err
	}
	return &r, nil
}

// ParseEvidence decodes JSON evidence; the structures inside are parsed by
// Verify.
func ParseEvidence(data []byte) (*Evidence, error) {
	var e Evidence
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, rejectErr(ReasonEvidenceMalformed, err, "attestation evidence is not JSON")
	}
	return &e, nil
}

// FromManifest is the record of a manifest line, nil when the line has no
// attestation columns (a device enrolled without attestation: "not attested").
func FromManifest(e manifest.Entry) *Record {
	a := e.Attestation
	if a == nil {
		return nil
	}
	return &Record{EKCertSHA256: a.EKCertSHA256, EKPubSHA256: a.EKPubSHA256, AKPublic: a.AKPublic, AKName: a.AKName}
}

// Manifest is the record's manifest columns.
func (r *Record) Manifest() *manifest.Attestation {
	return &manifest.Attestation{EKCertSHA256: r.EKCertSHA256, EKPubSHA256: r.EKPubSHA256, AKPublic: r.AKPublic, AKName: r.AKName}
}

// akInfo is a checked AK.
type akInfo struct {
	pub        crypto.PublicKey
	scheme     uint16
	schemeHash uint16
}

// check validates the record on its own: well-formed, and its AK an AK.
func (r *Record) check() (*akInfo, error) {
	if !isHex32(r.EKPubSHA256) {
		return nil, reject(ReasonRecordInvalid, "ek_pub_sha256 is not 64 lower-hex digits")
	}
	if r.EKCertSHA256 != "" && !isHex32(r.EKCertSHA256) {
		return nil, reject(ReasonRecordInvalid, "ek_cert_sha256 is not 64 lower-hex digits")
	}
	return checkAK(r.AKPublic, r.AKName)
}

func isHex32(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32 && hex.EncodeToString(b) == s
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// spkiSHA256 is the lower-hex SHA-256 of a key's DER SubjectPublicKeyInfo.
func spkiSHA256(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("marshalling public key: %w", err)
	}
	return sha256Hex(der), nil
}
