package ctl

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func init() { register(newCloudMovedCmd) }

// AdminCommand is the tool that took over bootcertctl's account-level
// commands.
const AdminCommand = "bootcert-admin"

// newCloudMovedCmd keeps `bootcertctl cloud ...` as a hidden command that
// says where it went: the account-level commands link the AWS SDK, which the
// gateway's package does not ship (package ctl/admin, cmd/bootcert-admin).
func newCloudMovedCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "cloud",
		Short:              "Moved to " + AdminCommand + " cloud",
		Hidden:             true,
		DisableFlagParsing: true, // whatever flags an old script passes
		RunE: func(cmd *cobra.Command, args []string) error {
			sub := "setup"
			if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
				sub = args[0]
			}
			return fmt.Errorf("\"bootcertctl cloud %s\" moved to \"%s cloud %s\" (same flags), the account tool for a workstation or CI: "+
				"install the %s package or build it with make build; the gateway's bootcertctl carries no AWS SDK", sub, AdminCommand, sub, AdminCommand)
		},
	}
}
