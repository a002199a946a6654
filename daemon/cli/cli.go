// Package cli defines bootcertd's command line, its flags and usage text, in
// one place for cmd/bootcertd and for the man page generator
// (internal/gendocs), so that bootcertd(8) lists the flags the binary takes.
package cli

import (
	"flag"
	"log/slog"
	"os"

	"github.com/bootcert/bootcert/daemon"
	"github.com/bootcert/bootcert/daemon/config"
)

// Synopsis and Description head bootcertd's usage and its man page.
const (
	Synopsis    = "bootcertd [--config FILE] | --check-config FILE"
	Short       = "keep the gateway connected to AWS IoT Core and rotate its hardware-held credentials"
	Description = `bootcertd keeps the gateway connected to AWS IoT Core and rotates its
hardware-held credentials. Status: bootcertctl status.`
)

// Options are the parsed flags.
type Options struct {
	Config  string
	Check   string
	Version bool
	// Pace holds --check-config's pacing flags: the unit's ExecStartPre
	// passes --failure-state; the delays are there for tests.
	Pace *daemon.Pacer
}

// Register defines bootcertd's flags on fs.
func Register(fs *flag.FlagSet) *Options {
	o := &Options{Pace: &daemon.Pacer{Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}}
	fs.StringVar(&o.Config, "config", config.DefaultPath, "configuration file")
	fs.StringVar(&o.Check, "check-config", "", "validate this configuration file and the files it names, then exit")
	fs.BoolVar(&o.Version, "version", false, "print the version and exit")
	p := o.Pace
	fs.StringVar(&p.StateDir, "failure-state", "", "with --check-config: record consecutive failures in this directory and wait a growing delay after each before exiting (the unit's ExecStartPre; systemd 252 has no growing RestartSec)")
	fs.DurationVar(&p.Delay, "failure-delay", daemon.DefaultFailureDelay, "with --failure-state: the wait after the second consecutive failure, doubling")
	fs.DurationVar(&p.DelayMax, "failure-delay-max", daemon.DefaultFailureDelayMax, "with --failure-state: the longest wait (keep it below the unit's TimeoutStartSec)")
	return o
}
