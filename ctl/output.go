package ctl

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/ctl/internal/cliout"
)

// Output helpers shared by the bootcertctl commands (and, through
// ctl/internal/cliout, by bootcert-admin). Every command that prints state
// takes --json; human output goes to cmd.OutOrStdout() so tests can capture
// it with cmd.SetOut.

// addJSONFlag adds --json to cmd and returns where its value lands.
func addJSONFlag(cmd *cobra.Command) *bool { return cliout.AddJSONFlag(cmd) }

// writeJSON prints v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error { return cliout.WriteJSON(w, v) }

// writeFields prints aligned "name: value" lines, in the order given.
func writeFields(w io.Writer, kv ...string) error { return cliout.WriteFields(w, kv...) }
