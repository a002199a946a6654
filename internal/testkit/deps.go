package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ModuleRoot is the directory of the bootcert go.mod and the go command to
// use (PATH's, else the one in /usr/local/go).
func ModuleRoot(t testing.TB) (root, gobin string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside the bootcert module")
	}
	return filepath.Dir(gomod), gobin
}

// Go runs the go command in the module root with extra environment (for
// example "CGO_ENABLED=0") and returns its standard output; a failure fails
// the test with the command's output.
func Go(t testing.TB, env []string, args ...string) string {
	t.Helper()
	root, gobin := ModuleRoot(t)
	cmd := exec.Command(gobin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s go %s: %v\n%s%s", strings.Join(env, " "), strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// Deps lists the import paths pkg links (go list -deps) with the given build
// tags (comma-separated, "" for none) and environment.
func Deps(t testing.TB, pkg, tags string, env ...string) map[string]bool {
	t.Helper()
	args := []string{"list", "-deps"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, pkg)
	deps := map[string]bool{}
	for _, line := range strings.Split(Go(t, env, args...), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			deps[line] = true
		}
	}
	return deps
}

// ForbiddenDeps returns the deps whose import path equals or starts with one
// of the forbidden prefixes (a prefix "github.com/x/y" also matches
// "github.com/x/y/z").
func ForbiddenDeps(deps map[string]bool, forbidden ...string) []string {
	var bad []string
	for d := range deps {
		for _, f := range forbidden {
			if d == f || strings.HasPrefix(d, f+"/") {
				bad = append(bad, d)
				break
			}
		}
	}
	return bad
}
