package pkcs11_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// cgoOnly are the packages that must not be linked into a CGO_ENABLED=0
// build.
var cgoOnly = []string{"github.com/miekg/pkcs11", "github.com/ThalesGroup/crypto11"}

func goTool(t *testing.T) (string, string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside the bootcert module")
	}
	return gobin, filepath.Dir(gomod)
}

func run(t *testing.T, gobin, root string, cgo bool, args ...string) string {
	t.Helper()
	cmd := exec.Command(gobin, args...)
	cmd.Dir = root
	v := "0"
	if cgo {
		v = "1"
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+v)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("CGO_ENABLED=%s go %s: %v\n%s", v, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestNoCgoDeps proves the cgo build tag drops the PKCS#11 dependency: the
// daemon and CLI still build without cgo, with the TPM and file backends.
func TestNoCgoDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("builds bootcertctl; skipped with -short")
	}
	gobin, root := goTool(t)
	for _, pkg := range []string{"./keystore/all", "./cmd/bootcertctl"} {
		deps := run(t, gobin, root, false, "list", "-deps", pkg)
		for _, bad := range cgoOnly {
			if strings.Contains(deps, bad) {
				t.Errorf("CGO_ENABLED=0 go list -deps %s contains %s", pkg, bad)
			}
		}
	}
	// The check above can fail: with cgo the same packages are there.
	deps := run(t, gobin, root, true, "list", "-deps", "./keystore/all")
	for _, want := range cgoOnly {
		if !strings.Contains(deps, want) {
			t.Errorf("CGO_ENABLED=1 go list -deps ./keystore/all lacks %s: is the pkcs11 backend linked?", want)
		}
	}
	bin := filepath.Join(t.TempDir(), "bootcertctl")
	run(t, gobin, root, false, "build", "-o", bin, "./cmd/bootcertctl")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("CGO_ENABLED=0 build produced no binary: %v", err)
	}
	// and in that build a pkcs11: URI gets the stub's clear error
	out := run(t, gobin, root, false, "test", "-count=1", "-run", "^TestNoCgoStub$", "-v", "./keystore/pkcs11")
	if !strings.Contains(out, "--- PASS: TestNoCgoStub") {
		t.Fatalf("TestNoCgoStub did not run in the CGO_ENABLED=0 build:\n%s", out)
	}
}
