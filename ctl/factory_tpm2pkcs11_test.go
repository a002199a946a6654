//go:build cgo

package ctl

import (
	"path/filepath"
	"testing"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

const tpm2PKCS11Module = testenv.TPM2PKCS11Module

// A device whose hardware token is tpm2-pkcs11 (a PKCS#11 token backed by
// the TPM, here swtpm): the bootstrap key is made through PKCS#11 and
// provision accepts it as non-extractable.
func TestFactoryTPM2PKCS11Device(t *testing.T) {
	testenv.Require(t, "openssl")
	const (
		label = "device"
		pin   = "Dev-User-3141"
		so    = "Dev-SO-2718"
	)
	testenv.SetupTPM2PKCS11(t, label, pin, so)
	t.Cleanup(func() { pkcs11.CloseAll() }) // before swtpm stops

	dir := t.TempDir()
	mustCtl(t, "ca", "create", "--out", filepath.Join(dir, "ca"))
	caKey := "file:" + filepath.Join(dir, "ca", "ca.key")
	key := "pkcs11:token=" + label + ";object=bootstrap?module-path=" + tpm2PKCS11Module + "&pin-value=" + pin
	rep := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-t2p", key)...))
	if rep.Status != "provisioned" || !rep.Hardware || rep.Backend != "pkcs11" || !rep.Attributes["neverExtractable"] {
		t.Fatalf("report %+v", rep)
	}
	opensslOK(t, ": OK", "verify", "-CAfile", filepath.Join(dir, "ca", "ca.pem"), rep.Certificate)
	again := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-t2p", key)...))
	if again.Status != "exists" || again.KeyFingerprint != rep.KeyFingerprint {
		t.Fatalf("re-run %+v", again)
	}
}
