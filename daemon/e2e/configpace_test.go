package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBrokenConfigRestartsSlowDown (issue 14 item 6: "A broken
// configuration makes the unit restart every 5 s for ever"): the unit's
// ExecStartPre, run by systemd at every restart, is the real bootcertd with
// --check-config and --failure-state. Each attempt logs one line naming the
// file, the key and the problem; consecutive attempts wait longer (here
// from 300 ms instead of the unit's 10 s); an edited file starts again.
func TestBrokenConfigRestartsSlowDown(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	cfg := filepath.Join(dir, "bootcertd.toml")
	os.WriteFile(cfg, []byte("[broker]\nendpoint = \"a1b2c3-ats.iot.eu-west-1.amazonaws.com\"\nport = 99999\n"), 0o600)
	run := func() (string, time.Duration) {
		t.Helper()
		start := time.Now()
		out, err := exec.Command(bootcertd, "--check-config", cfg, "--failure-state", state, "--failure-delay", "300ms", "--failure-delay-max", "2s").CombinedOutput()
		took := time.Since(start)
		if err == nil {
			t.Fatalf("a broken file passed:\n%s", out)
		}
		return strings.TrimSpace(string(out)), took
	}
	for i, want := range []struct {
		attempt, next string
		atLeast       time.Duration
	}{{"attempt=1", "next_in=\"0s + ", 0}, {"attempt=2", "next_in=\"300ms + ", 300 * time.Millisecond}, {"attempt=3", "next_in=\"600ms + ", 600 * time.Millisecond}} {
		out, took := run()
		if n := strings.Count(out, "\n") + 1; n != 1 {
			t.Errorf("attempt %d: %d lines, want one:\n%s", i+1, n, out)
		}
		for _, s := range []string{"level=ERROR", "file=" + cfg, "key=broker.port", "problem=\"99999 is not a TCP port", want.attempt, want.next} {
			if !strings.Contains(out, s) {
				t.Errorf("attempt %d: line lacks %q:\n%s", i+1, s, out)
			}
		}
		// a lower bound: the attempt waited its delay before exiting
		if took < want.atLeast {
			t.Errorf("attempt %d exited after %s, before its delay %s", i+1, took, want.atLeast)
		}
		t.Logf("attempt %d: exited after %s", i+1, took.Round(time.Millisecond))
	}
	// the operator edits the file (still broken, another way): the count
	// starts again, so a `systemctl start` after an edit answers at once
	os.WriteFile(cfg, []byte("[broker]\nendpoint = \"a1b2c3-ats.iot.eu-west-1.amazonaws.com\"\nport = 0\n"), 0o600)
	if out, _ := run(); !strings.Contains(out, "attempt=1") || !strings.Contains(out, "0 is not a TCP port") {
		t.Errorf("after an edit:\n%s", out)
	}
	// without --failure-state (by hand) --check-config never waits nor records
	os.RemoveAll(state)
	os.Mkdir(state, 0o700)
	out, err := exec.Command(bootcertd, "--check-config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "broker.port") {
		t.Errorf("--check-config by hand: %v\n%s", err, out)
	}
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Errorf("--check-config by hand wrote %v", ents)
	}
}
