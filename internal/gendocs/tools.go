package gendocs

import (
	"flag"

	"github.com/bootcert/bootcert/ctl"
	"github.com/bootcert/bootcert/ctl/admin"
	"github.com/bootcert/bootcert/daemon/cli"
)

// Package is one shipped package's tools and whether each gets completions.
type Package struct {
	Tools       []Tool
	Completions []bool
}

// Packages are the documented tools of each package make packages builds:
// bootcert (bootcertctl(1), bootcertd(8): a daemon, section 8 as Debian
// files sshd and the like) and bootcert-admin (bootcert-admin(1)).
func Packages() map[string]Package {
	fs := flag.NewFlagSet("bootcertd", flag.ContinueOnError)
	cli.Register(fs)
	return map[string]Package{
		"bootcert": {
			Tools: []Tool{
				{Root: ctl.NewRoot(), Section: "1"},
				FlagTool("bootcertd", "8", cli.Short, cli.Description+"\n\nUsage: "+cli.Synopsis, fs),
			},
			Completions: []bool{true, false},
		},
		"bootcert-admin": {
			Tools:       []Tool{{Root: admin.NewRoot(), Section: "1"}},
			Completions: []bool{true},
		},
	}
}
