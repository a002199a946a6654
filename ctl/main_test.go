package ctl

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// testCleanups run once after every test of the package (for process-wide
// fixtures such as the SoftHSM2 token, which must outlive single tests).
// Add to it from a sync.Once setup; do not add another TestMain.
var testCleanups []func()

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(testCleanups) - 1; i >= 0; i-- {
		testCleanups[i]()
	}
	os.Exit(code)
}

// runCtl runs bootcertctl in-process and returns what it printed on
// standard output and error, and its error.
func runCtl(t testing.TB, args ...string) (string, string, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// mustCtl is runCtl that fails the test on error.
func mustCtl(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, err := runCtl(t, args...)
	if err != nil {
		t.Fatalf("bootcertctl %v: %v\n%s", args, err, errOut)
	}
	return out
}

// A key subcommand without its URI, or with more than one argument, says
// what it wants.
func TestKeyCommandsNeedOneURI(t *testing.T) {
	for _, args := range [][]string{
		{"key", "info"},
		{"key", "generate", "tpm:device=/dev/tpmrm0", "blob=/tmp/k.tpmkey"},
		{"key", "public"},
		{"key", "csr", "--cn", "gw-1"},
		{"key", "delete"},
	} {
		_, _, err := runCtl(t, args...)
		if err == nil || !strings.Contains(err.Error(), "give exactly one key URI") {
			t.Errorf("bootcertctl %v: err = %v, want one that asks for one key URI", args, err)
		}
	}
}
