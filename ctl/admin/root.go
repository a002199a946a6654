// Package admin holds the bootcert-admin commands: the account-level work
// done from a workstation or CI with AWS credentials (today `cloud setup`),
// kept out of bootcertctl so that the gateway's package ships no AWS SDK.
// cmd/bootcert-admin only calls Execute.
package admin

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/internal/version"
	_ "github.com/bootcert/bootcert/keystore/all" // --ca-key: every backend
)

// NewRoot builds the bootcert-admin command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:     "bootcert-admin",
		Version: version.String(),
		Short:   "Administer bootcert's AWS account: register the factory CA, upload the allow list and CRL, create the rotation job",
		Long: `bootcert-admin does the account-level work of bootcert, which gives IoT
gateways a hardware-protected identity on AWS IoT Core. Run it on a
workstation or in CI with AWS credentials, never on a gateway (the gateway's
bootcertctl has no AWS SDK and no credentials).

  bootcert-admin cloud setup   after "sam deploy", and whenever the allow list
                               or the CRL changes (docs/cloud.md)
  bootcert-admin cloud rotate  ask for rotations: DEVICE..., --all or
                               --older-than 90d (breach response)

AWS endpoints and credentials come from the standard AWS configuration
(AWS_PROFILE, AWS_REGION, ...); --lab DIR points at a running bootcert-lab.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// "NAME VERSION", as bootcertd --version prints it
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.AddCommand(newCloudCmd())
	return root
}

// Execute runs bootcert-admin and returns the process exit code.
func Execute(ctx context.Context, args []string) int {
	root := NewRoot()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bootcert-admin:", err)
		return 1
	}
	return 0
}
