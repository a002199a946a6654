package tpm

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A CGO_ENABLED=0 build (the daemon's static build) drops the simulator and
// its C code; a cgo build has it.
func TestNoCgoDropsSimulator(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	const sim = "github.com/google/go-tpm-tools/simulator"
	for _, cgo := range []string{"0", "1"} {
		cmd := exec.Command(goBin, "list", "-deps", ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		has := false
		for _, l := range strings.Split(string(out), "\n") {
			if l == sim {
				has = true
			}
		}
		if has != (cgo == "1") {
			t.Fatalf("CGO_ENABLED=%s: simulator linked = %v", cgo, has)
		}
	}
}
