package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Sentinel errors, matched with errors.Is on an *Error.
var (
	// ErrAuth is an authorization failure (TPM_RC_AUTH_FAIL, TPM_RC_BAD_AUTH,
	// TPM_RC_LOCKOUT). Such commands are never retried: retrying would walk
	// the TPM into its dictionary-attack lockout.
	ErrAuth = errors.New("TPM authorization failed")
	// ErrDevice means the TPM device could not be opened or stopped
	// answering (connection refused, no such device, transport error).
	ErrDevice = errors.New("TPM device unavailable")
	// ErrNotAnswering (also ErrDevice) is a TPM that took a command and
	// gave no answer within the command timeout: a hung or stopped TPM, or
	// a swtpm busy with another client.
	ErrNotAnswering = fmt.Errorf("%w: the TPM is not answering", ErrDevice)
)

// Error is a failed TPM operation. Callers ask Retryable and AuthFailure
// rather than matching strings.
type Error struct {
	Op     string     // what was being done: "sign", "load key", "create key", ...
	Device string     // the device string (tcp:HOST:PORT, /dev/tpmrm0, sim)
	Code   tpm2.TPMRC // the TPM response code, 0 when the failure is not a TPM response
	Err    error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("TPM %s: %s: %v", e.Device, e.Op, e.Err)
	switch {
	case e.AuthFailure():
		msg += " (authorization failed and was not retried: bootcert uses empty passwords for its keys, the SRK and the owner hierarchy; check those, and the dictionary-attack lockout with tpm2_getcap properties-variable)"
	case e.Code == tpm2.TPMRCObjectMemory:
		msg += " (the TPM's object slots are full: close unused signers, or use /dev/tpmrm0, whose resource manager swaps objects)"
	case e.Code == tpm2.TPMRCIntegrity:
		msg += " (the key blob does not belong to this TPM or was made under a different parent)"
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrAuth) true for authorization failures.
func (e *Error) Is(target error) bool {
	return target == ErrAuth && e.AuthFailure()
}

// Retryable reports whether the same command may succeed when sent again a
// little later: the TPM answered TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING
// or TPM_RC_NV_RATE. Authorization failures are never retryable.
func (e *Error) Retryable() bool { return retryableRC(e.Code) }

// AuthFailure reports whether the TPM refused the authorization.
func (e *Error) AuthFailure() bool { return authRC(e.Code) }

func retryableRC(rc tpm2.TPMRC) bool {
	switch rc {
	case tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting, tpm2.TPMRCNVRate:
		return true
	}
	return false
}

func authRC(rc tpm2.TPMRC) bool {
	for _, t := range []tpm2.TPMRC{tpm2.TPMRCAuthFail, tpm2.TPMRCBadAuth, tpm2.TPMRCLockout} {
		if errors.Is(rc, t) {
			return true
		}
	}
	return false
}

// rcOf extracts the TPM response code from an error, 0 when there is none.
func rcOf(err error) tpm2.TPMRC {
	var rc tpm2.TPMRC
	if errors.As(err, &rc) {
		return rc
	}
	return 0
}

// isRC reports whether err carries the (canonical) response code want.
func isRC(err error, want tpm2.TPMRC) bool {
	rc := rcOf(err)
	return rc != 0 && errors.Is(rc, want)
}
