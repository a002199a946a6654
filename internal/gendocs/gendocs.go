// Package gendocs writes the man pages and shell completions the packages
// ship, from the same definitions the binaries use: the cobra command trees
// of bootcertctl and bootcert-admin (cobra/doc, cobra's completion
// generators) and bootcertd's flag set (daemon/cli). packaging/release/build.sh
// runs it (internal/gendocs/cmd/gendocs) once per build.
package gendocs

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/bootcert/bootcert/internal/atomicfile"
)

// Paths inside a package root, as Debian (and Fedora) lay them out.
const (
	ManDir  = "usr/share/man"                         // man<section>/<page>.<section>.gz
	BashDir = "usr/share/bash-completion/completions" // <command>
	ZshDir  = "usr/share/zsh/vendor-completions"      // _<command>
	FishDir = "usr/share/fish/vendor_completions.d"   // <command>.fish
)

// Tool is one shipped command: a cobra tree, whose man pages (one per
// command) go to Section and which gets completions.
type Tool struct {
	Root    *cobra.Command
	Section string
}

// FlagTool wraps a plain flag set (bootcertd does not link cobra) in a
// cobra command used only to render its man page; it gets no completions.
func FlagTool(name, section, short, long string, fs *flag.FlagSet) Tool {
	c := &cobra.Command{Use: name, Short: short, Long: long, Run: func(*cobra.Command, []string) {}}
	c.Flags().AddGoFlagSet(fs)
	c.Flags().BoolP("help", "h", false, "print the usage and exit")
	c.DisableAutoGenTag = true
	return Tool{Root: c, Section: section}
}

// Write writes tool's man pages (gzipped, reproducible: no name or time in
// the gzip header, the page's date is date) and, for cobra tools with
// completions, bash, zsh and fish completions under root. It returns the
// paths written, relative to root.
func Write(root string, t Tool, date time.Time, completions bool) ([]string, error) {
	var written []string
	t.Root.DisableAutoGenTag = true
	header := &doc.GenManHeader{Section: t.Section, Date: &date, Source: "bootcert", Manual: "bootcert manual"}
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		if c != t.Root && (!c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand()) {
			return nil
		}
		for _, sub := range c.Commands() {
			if err := walk(sub); err != nil {
				return err
			}
		}
		var page bytes.Buffer
		h := *header
		if err := doc.GenMan(c, &h, &page); err != nil {
			return fmt.Errorf("man page of %q: %w", c.CommandPath(), err)
		}
		name := strings.ReplaceAll(c.CommandPath(), " ", "-") + "." + t.Section + ".gz"
		rel := filepath.Join(ManDir, "man"+t.Section, name)
		if err := writeFile(filepath.Join(root, rel), gz(page.Bytes())); err != nil {
			return err
		}
		written = append(written, rel)
		return nil
	}
	if err := walk(t.Root); err != nil {
		return nil, err
	}
	if !completions {
		return written, nil
	}
	name := t.Root.Name()
	for _, c := range []struct {
		rel string
		gen func(*bytes.Buffer) error
	}{
		{filepath.Join(BashDir, name), func(b *bytes.Buffer) error { return t.Root.GenBashCompletionV2(b, true) }},
		{filepath.Join(ZshDir, "_"+name), func(b *bytes.Buffer) error { return t.Root.GenZshCompletion(b) }},
		{filepath.Join(FishDir, name+".fish"), func(b *bytes.Buffer) error { return t.Root.GenFishCompletion(b, true) }},
	} {
		var b bytes.Buffer
		if err := c.gen(&b); err != nil {
			return nil, fmt.Errorf("completion %s: %w", c.rel, err)
		}
		if err := writeFile(filepath.Join(root, c.rel), b.Bytes()); err != nil {
			return nil, err
		}
		written = append(written, c.rel)
	}
	return written, nil
}

func gz(b []byte) []byte {
	var out bytes.Buffer
	w, _ := gzip.NewWriterLevel(&out, gzip.BestCompression) // a valid level: no error
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	if err := atomicfile.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
