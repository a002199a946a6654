package testenv

import (
	"bytes"
	"os/exec"
	"testing"
)

// TPM2PKCS11Module is Debian's tpm2-pkcs11 module.
const TPM2PKCS11Module = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"

// TPM2PKCS11 is a tpm2-pkcs11 store with one initialised token on its own
// swtpm.
type TPM2PKCS11 struct {
	TPM    *SWTPM
	Store  string // TPM2_PKCS11_STORE
	Module string
	Token  string
	PIN    string
	SOPIN  string
}

// SetupTPM2PKCS11 starts swtpm, creates a tpm2-pkcs11 store with one token
// and points this process, and the programs it starts, at both (the
// variables are read at C_Initialize, the first pkcs11: call with the
// module). Callers that open the module through keystore/pkcs11 register
// pkcs11.CloseAll with tb.Cleanup after this call, so that it runs before
// swtpm stops.
func SetupTPM2PKCS11(tb testing.TB, token, pin, soPIN string) *TPM2PKCS11 {
	tb.Helper()
	RequireFile(tb, TPM2PKCS11Module)
	Require(tb, "swtpm", "tpm2_ptool", "tpm2_flushcontext", "pkcs11-tool")
	e := &TPM2PKCS11{TPM: StartSWTPM(tb), Store: tb.TempDir(), Module: TPM2PKCS11Module, Token: token, PIN: pin, SOPIN: soPIN}
	tb.Setenv("TPM2_PKCS11_STORE", e.Store)
	tb.Setenv("TPM2_PKCS11_TCTI", e.TPM.TCTI())
	tb.Setenv("TPM2TOOLS_TCTI", e.TPM.TCTI())
	tb.Setenv("TPM2_PKCS11_LOG_LEVEL", "0")
	tb.Setenv("TSS2_LOG", "all+NONE") // wrong-PIN tests make the TSS log errors
	e.Run(tb, "tpm2_ptool", "init", "--path", e.Store)
	// tpm2_ptool leaves transient objects loaded and swtpm has no resource
	// manager: flush them or C_InitToken runs out of object memory.
	e.Run(tb, "tpm2_flushcontext", "-t")
	e.Run(tb, "pkcs11-tool", "--module", e.Module, "--init-token", "--label", token, "--so-pin", soPIN)
	e.Run(tb, "pkcs11-tool", "--module", e.Module, "--token-label", token, "--login", "--login-type", "so", "--so-pin", soPIN, "--init-pin", "--pin", pin)
	return e
}

// Run runs a tool and returns its output with the PINs masked; a failure
// fails the test. swtpm serves one client at a time: never call it while
// this process holds the module open (pkcs11.CloseAll first).
func (e *TPM2PKCS11) Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	for _, secret := range []string{e.PIN, e.SOPIN} {
		out = bytes.ReplaceAll(out, []byte(secret), []byte("***"))
	}
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, args[0], err, out)
	}
	return string(out)
}
