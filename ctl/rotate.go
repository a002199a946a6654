package ctl

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/daemon/control"
)

func init() { register(newRotateCmd) }

func newRotateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rotate",
		Short: "Ask bootcertd to look for a pending rotation job now",
		Long: `rotate asks the local bootcertd to check AWS IoT Jobs for a pending rotation
now instead of waiting for the next notification. It does not force a
rotation: the cloud decides (the thing must be in the bootcert-rotation group).
Follow progress with: bootcertctl status --watch`,
		Args: cobra.NoArgs,
	}
	sock := addSocketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c := &control.Client{Path: *sock}
		if err := c.Rotate(cmd.Context()); err != nil {
			return err
		}
		fmt.Fprintln(cmd.OutOrStdout(), "bootcertd is looking for pending jobs; follow with: bootcertctl status --watch")
		return nil
	}
	return cmd
}
