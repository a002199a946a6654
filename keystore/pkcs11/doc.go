// Package pkcs11 is the keystore backend for PKCS#11 tokens (HSMs, smart
// cards, SoftHSM2, tpm2-pkcs11), through github.com/ThalesGroup/crypto11.
// Keys are named by RFC 7512 URIs and handed out as crypto.Signer; private
// keys never leave the token.
//
// # Build
//
// PKCS#11 needs cgo. The backend is compiled only with cgo (build tag
// "cgo"); a CGO_ENABLED=0 build registers a stub whose every call returns
// ErrNotBuilt ("bootcert was built without PKCS#11 support ..."), so that
// the daemon and CLI still build without cgo with the tpm and file backends.
// TestNoCgoDeps proves the stub build links neither crypto11 nor
// miekg/pkcs11.
//
// # URIs
//
//	pkcs11:token=bootcert;object=op-3?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/pin
//
// Path attributes (before "?", separated by ";"):
//
//	token    token label (CKA_LABEL of the token). Required unless slot-id is given.
//	slot-id  decimal slot number; with token as well, both must agree.
//	object   key label (CKA_LABEL). Labels are not unique in PKCS#11.
//	id       key id (CKA_ID), percent-encoded bytes: id=%01%a2.
//	type     only "private" is accepted (a key URI names a private key).
//
// At least one of object and id is required. Open, Describe and Delete match
// every attribute given; when several key pairs match (two keys with one
// label) they fail with ErrAmbiguous and ask for id=.
//
// Query attributes (after "?", separated by "&"):
//
//	module-path  absolute path of the PKCS#11 module. Without it the
//	             BOOTCERT_PKCS11_MODULE environment variable is used.
//	pin-source   file:/path/to/pin (or /path/to/pin): the user PIN is read
//	             from the file, one trailing newline removed. Keep the file
//	             0600 or 0400 and owned by the daemon's user.
//	pin-value    the PIN itself. For tests only: it ends up in config files
//	             and shell history. It is never printed: URIs are redacted
//	             ("pin-value=***") in errors and logs.
//
// pin-source and pin-value together, an attribute in the path and the query
// at once, and any other attribute are errors (keystore.URIError naming the
// part).
//
// # Keys
//
// Generate makes ECDSA P-256 (default), P-384, RSA-2048 or RSA-3072 key
// pairs inside the token with CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE true,
// CKA_EXTRACTABLE false and CKA_SIGN true (RSA: CKA_DECRYPT false), then
// reads the attributes back and deletes the key if the token did not apply
// them. It never overwrites: when a private key with the same label, or the
// same id, exists it fails with keystore.ErrExists. Without id= it picks a
// random 16-byte CKA_ID and the key is found by its label. Rotation does not
// rely on C_CopyObject (tpm2-pkcs11 lacks it): generate under a new label,
// switch, then Delete the old key.
//
// Describe reports the attributes token, private, sensitive, extractable,
// neverExtractable, alwaysSensitive and local, and
// Hardware = sensitive && !extractable && neverExtractable. Note that this
// says the key cannot be exported through PKCS#11; SoftHSM2 itself is
// software and reports Hardware=true too.
//
// # Sessions and concurrency
//
// crypto11 initialises a module once per process. This package keeps one
// logged-in crypto11 context per (module, token label) -- or (module, slot)
// for URIs with slot-id and no token -- for the life of the process and
// shares it between all keys on that token; it is safe for concurrent use.
// Name a token the same way (by label, preferably) everywhere in a process:
// a second context on the same token skips the PIN check (the token is
// already logged in) and does not share the Generate/Delete lock. Opening the same token again with a different PIN is refused (the
// token is already logged in, the new PIN cannot be checked): restart the
// process after changing the PIN. CloseAll closes every context (tests,
// orderly shutdown); signers obtained before stop working.
//
// Generate and Delete exclude lookups and signatures on the same token for
// their duration: SoftHSM2's file store returns CKR_GENERAL_ERROR when
// objects are created while other sessions read (softhsm/SoftHSMv2#573).
// The existence check and the generation are atomic within one process, not
// across processes.
//
// # Errors
//
// A wrong PIN gives ErrPINRejected naming the token and where the PIN came
// from, never the PIN; a locked or expired PIN says so. A missing or
// unloadable module gives ErrModuleNotFound naming the path. An unknown
// token gives ErrTokenNotFound and lists the tokens the module has. An
// unsupported algorithm gives keystore.ErrUnsupportedAlgorithm.
//
// # SoftHSM2 (development and tests)
//
//	mkdir -p /tmp/hsm/tokens
//	printf 'directories.tokendir = /tmp/hsm/tokens\nobjectstore.backend = file\n' > /tmp/hsm/softhsm2.conf
//	export SOFTHSM2_CONF=/tmp/hsm/softhsm2.conf   # before the first C_Initialize
//	softhsm2-util --init-token --free --label bootcert --pin 1234 --so-pin 5678
//	# pkcs11:token=bootcert;object=op-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234
//
// The tests (softhsm_test.go) do this in TestMain with a private
// configuration, one token per test binary.
//
// # tpm2-pkcs11 (keys in the TPM through PKCS#11)
//
//	export TPM2_PKCS11_STORE=/var/lib/bootcert/tpm2-pkcs11
//	export TPM2_PKCS11_TCTI=device:/dev/tpmrm0     # swtpm: swtpm:host=127.0.0.1,port=P
//	export TPM2TOOLS_TCTI=$TPM2_PKCS11_TCTI
//	tpm2_ptool init --path $TPM2_PKCS11_STORE
//	M=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
//	pkcs11-tool --module $M --init-token --label bootcert --so-pin SO
//	pkcs11-tool --module $M --token-label bootcert --login --login-type so --so-pin SO --init-pin --pin PIN
//
// The daemon must see the same TPM2_PKCS11_STORE and TPM2_PKCS11_TCTI
// (tpm2-pkcs11 reads them at C_Initialize). tpm2-pkcs11 keeps every key it
// creates or uses loaded in the TPM until C_Logout, the only call that
// flushes them (C_DestroyObject and C_Finalize do not): without a resource
// manager (swtpm, /dev/tpm0; swtpm has 3 transient object slots) a process
// that has used two keys could not create a third (TPM_RC_OBJECT_MEMORY),
// and a destroyed or exiting process's keys stayed loaded for good. For this
// module (C_GetInfo manufacturer "tpm2-software...") the backend therefore
// logs the token out and in again before and after Generate, before
// Delete and when a signer is closed, and out before CloseAll closes a
// context; keys load again on their next use
// (tpm2-pkcs11 keeps object handles valid across logout). A TCTI with a
// resource manager (/dev/tpmrm0, or tpm2-abrmd) is still the better choice.
// tpm2_ptool leaves transient objects behind (run `tpm2_flushcontext -t`
// after it). Wrong PINs increment the TPM's
// dictionary-attack counter. The native tpm: backend (keystore/tpm) needs
// neither cgo nor a store and is the default choice for TPM keys.
//
// Debian 12's pkcs11-tool (OpenSC) matches --token-label by prefix (the first slot
// whose token label starts with it): with tokens "bootcert-2" and "bootcert"
// in that slot order, --token-label bootcert picks "bootcert-2". bootcert
// matches token labels exactly.
package pkcs11
