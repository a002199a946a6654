package main

import (
	"flag"
	"log/slog"
	"os"

	"github.com/bootcert/bootcert/daemon"
)

// paceFlags are --check-config's pacing flags (daemon.Pacer): the unit's
// ExecStartPre passes --failure-state; the delays are there for tests.
func paceFlags() *daemon.Pacer {
	p := &daemon.Pacer{Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	flag.StringVar(&p.StateDir, "failure-state", "", "with --check-config: record consecutive failures in this directory and wait a growing delay after each before exiting (the unit's ExecStartPre; systemd 252 has no growing RestartSec)")
	flag.DurationVar(&p.Delay, "failure-delay", daemon.DefaultFailureDelay, "with --failure-state: the wait after the second consecutive failure, doubling")
	flag.DurationVar(&p.DelayMax, "failure-delay-max", daemon.DefaultFailureDelayMax, "with --failure-state: the longest wait (keep it below the unit's TimeoutStartSec)")
	return p
}
