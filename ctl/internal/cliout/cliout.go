// Package cliout holds the output conventions the bootcert command-line
// tools share (bootcertctl in package ctl, bootcert-admin in ctl/admin):
// every command that prints state takes --json; human output is aligned
// "name: value" lines on cmd.OutOrStdout(), so tests capture it with
// cmd.SetOut.
package cliout

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// AddJSONFlag adds --json to cmd and returns where its value lands.
func AddJSONFlag(cmd *cobra.Command) *bool {
	v := new(bool)
	cmd.Flags().BoolVar(v, "json", false, "print machine-readable JSON instead of text")
	return v
}

// WriteJSON prints v as indented JSON followed by a newline.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("printing JSON: %w", err)
	}
	return nil
}

// WriteFields prints aligned "name: value" lines, in the order given.
func WriteFields(w io.Writer, kv ...string) error {
	width := 0
	for i := 0; i+1 < len(kv); i += 2 {
		if len(kv[i]) > width {
			width = len(kv[i])
		}
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if _, err := fmt.Fprintf(w, "%-*s  %s\n", width+1, kv[i]+":", kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}
