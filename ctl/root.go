// Package ctl holds the bootcertctl commands. Each command group lives in its
// own file and registers itself with register; cmd/bootcertctl only calls
// Execute.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/internal/version"
)

var builders []func() *cobra.Command

// register adds a top-level command group. Call it from init.
func register(b func() *cobra.Command) { builders = append(builders, b) }

// NewRoot builds the bootcertctl command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:     "bootcertctl",
		Version: version.String(),
		Short:   "Control bootcert: gateway status, hardware keys, factory provisioning",
		Long: `bootcertctl works with bootcert, which gives IoT gateways a hardware-protected
identity on AWS IoT Core.

On the gateway:      bootcertctl status, bootcertctl rotate
On the factory line: bootcertctl key ..., bootcertctl ca create, bootcertctl provision
For the cloud:       bootcert-admin cloud setup (a separate tool and package:
                     the AWS account's side, from a workstation or CI)

Keys are named by URI:
  tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-1.tpmkey
  tpm:device=tcp:127.0.0.1:2321;handle=0x81000101
  pkcs11:token=bootcert;object=op-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/pin
  file:/var/lib/bootcert/keys/dev.pem   (development only)`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// "NAME VERSION", as bootcertd --version prints it
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	for _, b := range builders {
		root.AddCommand(b())
	}
	return root
}

// Execute runs bootcertctl and returns the process exit code.
func Execute(ctx context.Context, args []string) int {
	root := NewRoot()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ec *exitCode
		if errors.As(err, &ec) {
			return ec.code // the command printed its result
		}
		fmt.Fprintln(os.Stderr, "bootcertctl:", err)
		return 1
	}
	return 0
}
