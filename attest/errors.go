package attest

import (
	"errors"
	"fmt"
)

// Reason is a stable code for a rejected attestation: the vendor can send
// it to the device and operators can count it. The strings never change
// meaning; new ones may be added.
type Reason string

// Reasons, grouped by what they are about. Each names the check of
// docs/attestation.md that failed.
const (
	// The enrolment record (from the manifest or the registry).
	ReasonRecordInvalid       Reason = "RECORD_INVALID"            // not a usable record: missing or malformed fields
	ReasonAKNotRestrictedSign Reason = "AK_NOT_RESTRICTED_SIGNING" // the AK is not a restricted signing key (or can decrypt)
	ReasonAKNotFixed          Reason = "AK_NOT_FIXED"              // the AK lacks fixedTPM or fixedParent: it can leave its TPM
	ReasonAKNotTPMGenerated   Reason = "AK_NOT_TPM_GENERATED"      // the AK lacks sensitiveDataOrigin: made outside the TPM
	ReasonAKAlgorithm         Reason = "AK_ALGORITHM"              // the AK's algorithm, size, scheme or name algorithm is not accepted
	ReasonAKNameMismatch      Reason = "AK_NAME_MISMATCH"          // the recorded AK name is not nameAlg || H(AK public)
	ReasonEKCertMissing       Reason = "EK_CERT_MISSING"           // the record names an EK certificate nobody supplied
	ReasonEKCertMismatch      Reason = "EK_CERT_MISMATCH"          // the EK certificate is not the recorded one (hash differs)
	ReasonEKCertInvalid       Reason = "EK_CERT_INVALID"           // the EK certificate does not parse
	ReasonEKKeyMismatch       Reason = "EK_KEY_MISMATCH"           // the EK public key is not the key in the EK certificate
	ReasonEKUntrusted         Reason = "EK_UNTRUSTED"              // the EK certificate does not chain to a trusted manufacturer root
	ReasonEKNotEndorsementKey Reason = "EK_NOT_ENDORSEMENT_KEY"    // the EK public area is not a restricted decryption key of a TPM
	ReasonActivationFailed    Reason = "ACTIVATION_FAILED"         // credential activation did not return the secret: the AK is not in the EK's TPM
	ReasonEvidenceMalformed   Reason = "EVIDENCE_MALFORMED"        // the attestation, signature or public area does not parse
	ReasonBadSignature        Reason = "BAD_SIGNATURE"             // the attestation is not signed by the recorded AK
	ReasonAttestBadMagic      Reason = "ATTEST_BAD_MAGIC"          // not TPM_GENERATED_VALUE: the AK signed data the TPM did not make
	ReasonAttestNotCertify    Reason = "ATTEST_NOT_CERTIFY"        // a quote or other attestation in place of TPM2_Certify
	ReasonQualifyingData      Reason = "QUALIFYING_DATA_MISMATCH"  // replayed, or made for another job, thing or nonce
	ReasonNameMismatch        Reason = "NAME_MISMATCH"             // the certified name is not the name of the presented public area
	ReasonNameAlgorithm       Reason = "NAME_ALGORITHM"            // the key's name algorithm is weak (SHA-1) or unknown
	ReasonKeyNotTPMGenerated  Reason = "KEY_NOT_TPM_GENERATED"     // the key lacks sensitiveDataOrigin: imported, made outside the TPM
	ReasonKeyExportable       Reason = "KEY_EXPORTABLE"            // the key lacks fixedTPM or fixedParent: it can be duplicated out
	ReasonKeyUsage            Reason = "KEY_USAGE"                 // the key is restricted, cannot sign, or can also decrypt
	ReasonKeyAlgorithm        Reason = "KEY_ALGORITHM"             // the key's algorithm or size is not accepted
	ReasonCSRBadSignature     Reason = "CSR_BAD_SIGNATURE"         // the CSR's self-signature does not verify
	ReasonCSRKeyMismatch      Reason = "CSR_KEY_MISMATCH"          // the CSR is for another key than the certified one
	ReasonKeyReused           Reason = "KEY_REUSED"                // the device used this key before
	ReasonClockRollback       Reason = "CLOCK_ROLLBACK"            // the TPM's reset/restart counts went backwards since the last rotation
)

// Error is a rejected attestation. Reason is for machines; the message
// says what was wrong, for people. It never contains secrets.
type Error struct {
	Reason Reason
	Msg    string
	Err    error // underlying cause, may be nil
}

func (e *Error) Error() string {
	s := fmt.Sprintf("attestation rejected (%s): %s", e.Reason, e.Msg)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf is the reason of a rejection anywhere in err's chain, "" when
// err is not one.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func reject(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

func rejectErr(r Reason, err error, format string, args ...any) *Error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...), Err: err}
}
