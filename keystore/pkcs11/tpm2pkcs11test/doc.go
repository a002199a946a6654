// Package tpm2pkcs11test tests the pkcs11 keystore backend against
// tpm2-pkcs11 (libtpm2_pkcs11.so) on a software TPM (swtpm). It is a
// separate package so that its environment (TPM2_PKCS11_STORE,
// TPM2_PKCS11_TCTI) and its module live in their own test binary, away from
// the SoftHSM2 tests.
package tpm2pkcs11test
