//go:build cgo

package ctl

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

const tpm2PKCS11Module = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"

// A device whose hardware token is tpm2-pkcs11 (a PKCS#11 token backed by
// the TPM, here swtpm): the bootstrap key is made through PKCS#11 and
// provision accepts it as non-extractable.
func TestFactoryTPM2PKCS11Device(t *testing.T) {
	testenv.RequireFile(t, tpm2PKCS11Module)
	testenv.Require(t, "swtpm", "tpm2_ptool", "tpm2_flushcontext", "pkcs11-tool", "openssl")
	const (
		label = "device"
		pin   = "Dev-User-3141"
		so    = "Dev-SO-2718"
	)
	sw := testenv.StartSWTPM(t)
	store := t.TempDir()
	// read at C_Initialize of the module, the first pkcs11: call with it
	t.Setenv("TPM2_PKCS11_STORE", store)
	t.Setenv("TPM2_PKCS11_TCTI", sw.TCTI())
	t.Setenv("TPM2TOOLS_TCTI", sw.TCTI())
	t.Setenv("TPM2_PKCS11_LOG_LEVEL", "0")
	t.Setenv("TSS2_LOG", "all+NONE")
	t.Cleanup(func() { pkcs11.CloseAll() }) // before swtpm stops
	run := func(name string, args ...string) {
		out, err := exec.Command(name, args...).CombinedOutput()
		out = bytes.ReplaceAll(bytes.ReplaceAll(out, []byte(pin), []byte("***")), []byte(so), []byte("***"))
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, args[0], err, out)
		}
	}
	run("tpm2_ptool", "init", "--path", store)
	run("tpm2_flushcontext", "-t") // no resource manager on swtpm
	run("pkcs11-tool", "--module", tpm2PKCS11Module, "--init-token", "--label", label, "--so-pin", so)
	run("pkcs11-tool", "--module", tpm2PKCS11Module, "--token-label", label, "--login", "--login-type", "so", "--so-pin", so, "--init-pin", "--pin", pin)

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
