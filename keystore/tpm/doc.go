// Package tpm keeps bootcert keys in a TPM 2.0 and registers the "tpm" key
// URI scheme with keystore. Import it (or keystore/all) for its side effect.
//
// # URIs
//
//	tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-3.tpmkey
//	tpm:device=tcp:127.0.0.1:2321;handle=0x81000101;srk=0x81000001
//
// Attributes (unknown ones are rejected):
//
//   - device: /dev/tpmrm0 (default; the kernel resource manager), another
//     device path such as /dev/tpm0, tcp:HOST:PORT for swtpm's TCP protocol
//     (PORT is the command port; the control port PORT+1 is not used; run
//     swtpm with --flags not-need-init,startup-clear; it serves one client
//     at a time, and a command left unanswered for 90 s fails with an error
//     saying so), or sim for the in-process
//     reference simulator (cgo builds only; demos and tests: its seed is
//     fixed, so its keys are not secret, and key files load again after a
//     restart; persistent handles live only as long as the process, or
//     until CloseDevice("sim")).
//   - blob=PATH: the key is a TSS2 PEM key file ("-----BEGIN TSS2 PRIVATE
//     KEY-----", mode 0600), the format tpm2-openssl and tpm2-tss-engine read.
//     The file holds the key wrapped by the TPM; it is useless without that
//     TPM.
//   - handle=0x81xxxxxx: the key is persistent in the TPM's NV memory, owner
//     range 0x81000000-0x817fffff.
//   - srk=0x81xxxxxx: the persistent handle of the storage root key the keys
//     are made under, default 0x81000001.
//
// Exactly one of blob and handle is given.
//
// # Keys
//
// Keys are made inside the TPM (TPM2_Create) with fixedTPM, fixedParent,
// sensitiveDataOrigin and userWithAuth, an empty auth value, as unrestricted
// signing keys with a NULL scheme so that Sign picks ECDSA, RSASSA (PKCS #1
// v1.5) or RSAPSS (when opts is *rsa.PSSOptions; salt length = hash length,
// as TLS 1.3 requires) per call. ECDSA P-256 is the default; P-384, RSA-2048
// and RSA-3072 are options (the reference simulator lacks RSA-3072).
// Generate never overwrites: an existing file or an occupied handle gives
// keystore.ErrExists. Delete removes a key file (only if it parses as a TSS2
// key) or evicts a persistent key (only if it is an unrestricted signing key,
// never an SRK or EK).
//
// # SRK and the key file's parent
//
// Keys are created under the persisted SRK at srk=. When that handle is
// empty, the backend creates the SRK with the TCG "H-2" template (ECC P-256,
// AES-128-CFB, empty unique: keyfile.ECCSRK_H2_Template) and persists it
// there. An existing SRK is checked once per process by recreating the H-2
// primary and comparing names.
//
// The key file records its parent. When the SRK is the H-2 one, bootcert
// writes the owner hierarchy, 0x40000001: every TSS2-key-file reader
// (tpm2-openssl, tpm2-tss-engine) recreates the H-2 SRK from it, and the key
// keeps working if the persisted SRK is evicted. When the SRK is something
// else (an RSA SRK provisioned by another tool), the file names the SRK's
// persistent handle, and the key works only while that SRK stays there.
// bootcert itself loads an owner-parented key under the persisted SRK when it
// is H-2 (no CreatePrimary per load), else under a transient H-2 primary.
// Only the bare fields are written (type, emptyAuth, parent, public,
// private): tpm2-openssl refuses files with the optional ones.
//
// # Devices and TPM commands
//
// A device is opened once per process and shared by every signer on it;
// commands are serialised by a mutex. swtpm serves one client at a time, so
// a tcp: device is released after TCPIdleRelease (200 ms) without use, and
// CloseDevice releases any device at once: another process (bootcertctl next
// to bootcertd, tpm2-tools, tpm2-openssl) can then use the swtpm. Released
// devices flush this process's keys; signers reopen the device and load
// their key again on next use. Opening a device without a
// resource manager (tcp:, sim, /dev/tpm0) first flushes the transient
// objects and sessions a dead client left behind; when the TPM's object
// slots are full (swtpm has 3), the backend flushes its own idle keys, which
// load again on next use.
//
// A key file is loaded once (at Open or Generate) and stays loaded until
// the signer's Close (or the device's release); a Sign is then exactly one
// TPM command. Commands the
// TPM answers with TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING or
// TPM_RC_NV_RATE (swtpm answers the first Sign after each start with
// TPM_RC_RETRY) are retried a bounded number of times with jittered backoff;
// authorization failures (TPM_RC_AUTH_FAIL, TPM_RC_BAD_AUTH, TPM_RC_LOCKOUT)
// are never retried, so as not to walk into the dictionary-attack lockout.
// Errors are *Error, with Retryable and AuthFailure methods; errors.Is(err,
// ErrAuth) and errors.Is(err, ErrDevice) work.
//
// Counter counts the commands sent to a device by command code; install it
// with OpenDevice(device, counter.Wrap). The benchmarks report tpmcmds/op
// with it.
//
// Commands travel without parameter encryption (password sessions with an
// empty auth): a Sign costs one command. On a discrete TPM this leaves the
// digest and signature visible on the bus, neither of which is secret.
package tpm
