package pkcs11_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/internal/testkit"
)

// cgoOnly are the packages that must not be linked into a CGO_ENABLED=0
// build.
var cgoOnly = []string{"github.com/miekg/pkcs11", "github.com/ThalesGroup/crypto11"}

// TestNoCgoDeps proves the cgo build tag drops the PKCS#11 dependency: the
// daemon and CLI still build without cgo, with the TPM and file backends.
func TestNoCgoDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("builds bootcertctl; skipped with -short")
	}
	for _, pkg := range []string{"./keystore/all", "./cmd/bootcertctl"} {
		if bad := testkit.ForbiddenDeps(testkit.Deps(t, pkg, "", "CGO_ENABLED=0"), cgoOnly...); len(bad) > 0 {
			t.Errorf("CGO_ENABLED=0 go list -deps %s contains %v", pkg, bad)
		}
	}
	// The check above can fail: with cgo the same packages are there.
	deps := testkit.Deps(t, "./keystore/all", "", "CGO_ENABLED=1")
	for _, want := range cgoOnly {
		if !deps[want] {
			t.Errorf("CGO_ENABLED=1 go list -deps ./keystore/all lacks %s: is the pkcs11 backend linked?", want)
		}
	}
	bin := filepath.Join(t.TempDir(), "bootcertctl")
	testkit.Go(t, []string{"CGO_ENABLED=0"}, "build", "-o", bin, "./cmd/bootcertctl")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("CGO_ENABLED=0 build produced no binary: %v", err)
	}
	// and in that build a pkcs11: URI gets the stub's clear error
	out := testkit.Go(t, []string{"CGO_ENABLED=0"}, "test", "-count=1", "-run", "^TestNoCgoStub$", "-v", "./keystore/pkcs11")
	if !strings.Contains(out, "--- PASS: TestNoCgoStub") {
		t.Fatalf("TestNoCgoStub did not run in the CGO_ENABLED=0 build:\n%s", out)
	}
}
