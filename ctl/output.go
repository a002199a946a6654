package ctl

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// Output helpers shared by the bootcertctl commands. Every command that
// prints state takes --json; human output goes to cmd.OutOrStdout() so tests
// can capture it with cmd.SetOut.

// addJSONFlag adds --json to cmd and returns where its value lands.
func addJSONFlag(cmd *cobra.Command) *bool {
	v := new(bool)
	cmd.Flags().BoolVar(v, "json", false, "print machine-readable JSON instead of text")
	return v
}

// writeJSON prints v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("printing JSON: %w", err)
	}
	return nil
}

// writeFields prints aligned "name: value" lines, in the order given.
func writeFields(w io.Writer, kv ...string) error {
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
