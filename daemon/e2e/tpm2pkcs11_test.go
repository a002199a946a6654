package e2e

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

// TestTPM2PKCS11Renewals: keys in a tpm2-pkcs11 token on swtpm (no resource
// manager, 3 transient object slots): three rotations with a restart in
// between. tpm2-pkcs11 keeps every key it used loaded until C_Logout and
// leaks the slot of a loaded key it destroys; the keystore logs the token
// out and in before generating or destroying a key and at exit, so nothing
// stays loaded in the TPM once bootcertd has stopped.
func TestTPM2PKCS11Renewals(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-tpm2-renew", deviceOpts{kind: onTPM2PKCS11})
	d.start()
	d.waitFor("operational generation 1", operational(1))
	c.addToRotation(d.name)
	d.waitFor("operational generation 2", operational(2))
	d.stop()
	if h := transientHandles(t); len(h) != 0 {
		t.Errorf("transient objects left in the TPM after bootcertd stopped: %v", h)
	}
	d.start()
	d.waitFor("operational generation 2 after restart", operational(2))
	c.addToRotation(d.name)
	st := d.waitFor("operational generation 3", operational(3))
	d.stop()
	if h := transientHandles(t); len(h) != 0 {
		t.Errorf("transient objects left in the TPM after bootcertd stopped: %v", h)
	}
	if strings.Contains(d.Log(), "rotation failed") {
		t.Errorf("a rotation failed:\n%s", tail(d.Log(), 40))
	}
	// the old operational keys are destroyed, the bootstrap key and the
	// active one are kept
	uri := func(obj string) string {
		return strings.Replace(d.bootKey, "object=gw-tpm2-renew-bootstrap", "object=gw-tpm2-renew-"+obj, 1)
	}
	ctx := context.Background()
	defer pkcs11.CloseAll()
	for _, k := range []struct {
		obj  string
		kept bool
	}{{"bootstrap", true}, {"op-1", false}, {"op-2", false}, {"op-3", true}} {
		_, err := keystore.Open(ctx, uri(k.obj))
		if k.kept && err != nil {
			t.Errorf("key %s: %v", k.obj, err)
		}
		if !k.kept && !errors.Is(err, keystore.ErrNotFound) {
			t.Errorf("key %s not destroyed: %v", k.obj, err)
		}
	}
	if st.Active.Generation != 3 {
		t.Errorf("active generation %d", st.Active.Generation)
	}
}

// transientHandles lists the transient objects loaded in the swtpm that
// TPM2TOOLS_TCTI names (set by setupTPM2PKCS11).
func transientHandles(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("tpm2_getcap", "handles-transient").CombinedOutput()
	if err != nil {
		t.Fatalf("tpm2_getcap handles-transient: %v\n%s", err, out)
	}
	var hs []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "-")); l != "" {
			hs = append(hs, l)
		}
	}
	return hs
}
