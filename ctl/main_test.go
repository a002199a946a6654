package ctl

import (
	"bytes"
	"context"
	"os"
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
