package tpm

import (
	"testing"

	"github.com/bootcert/bootcert/internal/testkit"
)

// A CGO_ENABLED=0 build (the daemon's static build) drops the simulator and
// its C code; a cgo build has it.
func TestNoCgoDropsSimulator(t *testing.T) {
	const sim = "github.com/google/go-tpm-tools/simulator"
	for _, cgo := range []string{"0", "1"} {
		has := testkit.Deps(t, "./keystore/tpm", "", "CGO_ENABLED="+cgo)[sim]
		if has != (cgo == "1") {
			t.Fatalf("CGO_ENABLED=%s: simulator linked = %v", cgo, has)
		}
	}
}
