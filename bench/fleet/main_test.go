package main

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestSmallFleet keeps the harness working: 20 clients against the real
// binary, registered through the API, and 10 more by JITR. It asserts that
// every client connected and the sample round trip worked, not any speed.
func TestSmallFleet(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bootcert-lab")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/bootcert-lab").CombinedOutput(); err != nil {
		t.Fatalf("building bootcert-lab: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name string
		o    options
	}{
		{"ok/registered", options{clients: 20, rate: 200, samples: 5, labBin: bin, keepalive: time.Minute, regWorker: 4, template: "none"}},
		{"ok/jitr", options{clients: 10, rate: 200, samples: 5, labBin: bin, keepalive: time.Minute, regWorker: 4, template: "none", jitr: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := run(tc.o); err != nil {
				t.Fatal(err)
			}
		})
	}
}
