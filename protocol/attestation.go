package protocol

// Key attestation on the wire (docs/attestation.md). A device whose key
// lives in a TPM with an enrolled attestation key (AK) sends, with its CSR,
// the TPM2_Certify output naming the new key; the vendor verifies it against
// the enrolment record it stored (never against anything else the device
// sends) before it issues. Tokens that cannot attest leave the field out.

// Attestation is GetRequest.Attestation. The byte fields are the TPM's own
// encodings, standard base64 in JSON (attest.Evidence has the same shape).
type Attestation struct {
	// Attest is the TPMS_ATTEST (type TPM_ST_ATTEST_CERTIFY) the AK signed.
	Attest []byte `json:"attest"`
	// Signature is the TPMT_SIGNATURE over Attest.
	Signature []byte `json:"signature"`
	// Public is the certified key's TPMT_PUBLIC.
	Public []byte `json:"public"`
	// EKCert is the TPM's EK certificate (DER) when it has one: the
	// enrolment record holds only its hash.
	EKCert []byte `json:"ekCert,omitempty"`
}

// AttestationPurpose is the Binding purpose of a rotation's qualifying
// data; the factory uses "enrolment".
const AttestationPurpose = "rotation"

// AttestationFailed: the CSR's key attestation is missing (the fleet
// requires it) or does not verify; Message starts with the attest reason
// code (for example "BAD_SIGNATURE: ..."). Not retryable: the same evidence
// fails again.
const AttestationFailed Code = "ATTESTATION_FAILED"
