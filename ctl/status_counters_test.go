package ctl

import (
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/internal/version"
	"github.com/bootcert/bootcert/protocol"
)

func TestCountersLine(t *testing.T) {
	c := control.Counters{Since: time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC), Connects: 4, Refusals: 1, Fallbacks: 1}
	c.AddRotation(protocol.JobSucceeded)
	c.AddRotation(protocol.ResultRolledBack)
	got := countersLine(c)
	want := "4 connects, 1 refusals, 1 fallbacks, rotations 1 ROLLED_BACK, 1 SUCCEEDED (since 2026-12-05T00:00:00Z)"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	var b strings.Builder
	printStatus(&b, control.Status{Counters: c})
	if !strings.Contains(b.String(), "since start:") || !strings.Contains(b.String(), "4 connects") {
		t.Errorf("status output:\n%s", b.String())
	}
}

// bootcertctl --version prints "bootcertctl VERSION", as bootcertd
// --version prints "bootcertd VERSION" (issue 14, item 6).
func TestVersionFormat(t *testing.T) {
	out, _, err := runCtl(t, "--version")
	if err != nil || out != "bootcertctl "+version.String()+"\n" {
		t.Errorf("--version: %q %v", out, err)
	}
}
