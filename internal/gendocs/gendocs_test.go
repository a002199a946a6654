package gendocs

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

var date = time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

// commands lists the command paths that get a page: every available
// command of the tree, help and completion aside (cobra's own).
func commands(c *cobra.Command) []string {
	out := []string{c.CommandPath()}
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() && !sub.IsAdditionalHelpTopicCommand() {
			out = append(out, commands(sub)...)
		}
	}
	return out
}

func readGz(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if r.Name != "" || !r.ModTime.IsZero() {
		t.Errorf("%s: gzip header names %q, time %v: not reproducible", path, r.Name, r.ModTime)
	}
	return string(b)
}

var th = regexp.MustCompile(`(?m)^\.TH "([A-Z0-9-]+)" "([18])" "([A-Za-z]+ [0-9]{4})" "bootcert" "bootcert manual"$`)

func TestPagePerCommand(t *testing.T) {
	for name, pkg := range Packages() {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			for i, tool := range pkg.Tools {
				written, err := Write(root, tool, date, pkg.Completions[i])
				if err != nil {
					t.Fatal(err)
				}
				cmds := commands(tool.Root)
				if tool.Root.Name() == "bootcertctl" && !slices.Contains(cmds, "bootcertctl key generate") {
					t.Fatalf("bootcertctl's tree lacks key generate: %q", cmds)
				}
				for _, c := range cmds {
					rel := filepath.Join(ManDir, "man"+tool.Section, strings.ReplaceAll(c, " ", "-")+"."+tool.Section+".gz")
					if !slices.Contains(written, rel) {
						t.Errorf("%s: no page written (%q)", c, rel)
						continue
					}
					page := readGz(t, filepath.Join(root, rel))
					m := th.FindStringSubmatch(page)
					if m == nil {
						t.Errorf("%s: no .TH header:\n%.300s", rel, page)
						continue
					}
					if want := strings.ToUpper(strings.ReplaceAll(c, " ", "-")); m[1] != want || m[2] != tool.Section || m[3] != "Mar 2026" {
						t.Errorf("%s: .TH %q, want %s(%s) dated Mar 2026", rel, m[0], want, tool.Section)
					}
					if !strings.Contains(page, ".SH SYNOPSIS") || !strings.Contains(page, ".SH OPTIONS") {
						t.Errorf("%s: no SYNOPSIS or OPTIONS section", rel)
					}
				}
				// the pages and nothing else in man<section>, plus completions
				want := len(cmds)
				if pkg.Completions[i] {
					want += 3
				}
				if len(written) != want {
					t.Errorf("%s: %d files written, want %d: %q", tool.Root.Name(), len(written), want, written)
				}
			}
		})
	}
}

func TestBootcertdPageListsItsFlags(t *testing.T) {
	root := t.TempDir()
	pkg := Packages()["bootcert"]
	if _, err := Write(root, pkg.Tools[1], date, false); err != nil {
		t.Fatal(err)
	}
	page := readGz(t, filepath.Join(root, ManDir, "man8/bootcertd.8.gz"))
	for _, f := range []string{"--config", "--check-config", "--version", "--failure-state", `"/etc/bootcert/bootcertd.toml"`} {
		if !strings.Contains(page, f) {
			t.Errorf("bootcertd.8 lacks %s", f)
		}
	}
}

func TestCompletions(t *testing.T) {
	root := t.TempDir()
	pkg := Packages()["bootcert"]
	if _, err := Write(root, pkg.Tools[0], date, true); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]string{
		filepath.Join(BashDir, "bootcertctl"):      "__start_bootcertctl",
		filepath.Join(ZshDir, "_bootcertctl"):      "#compdef bootcertctl",
		filepath.Join(FishDir, "bootcertctl.fish"): "complete -c bootcertctl",
	} {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s lacks %q", rel, want)
		}
	}
	if _, err := exec.LookPath("bash"); err == nil {
		out, err := exec.Command("bash", "-n", filepath.Join(root, BashDir, "bootcertctl")).CombinedOutput()
		if err != nil {
			t.Errorf("bash -n the bash completion: %v\n%s", err, out)
		}
	}
}

// TestManRenders renders one page with man -l (groff) where man-db is
// installed (it is not something make deps installs): no warnings, and the
// rendered NAME line.
func TestManRenders(t *testing.T) {
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man not installed; the .TH header is checked in TestPagePerCommand")
	}
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("groff not installed")
	}
	root := t.TempDir()
	pkg := Packages()["bootcert"]
	if _, err := Write(root, pkg.Tools[0], date, false); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("man", "--warnings", "-l", filepath.Join(root, ManDir, "man1/bootcertctl-key-generate.1.gz"))
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "PAGER=cat", "MANWIDTH=80", "LC_ALL=C.UTF-8")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("man -l: %v\n%s", err, stderr.Bytes())
	}
	if stderr.Len() > 0 {
		t.Errorf("man --warnings: %s", stderr.Bytes())
	}
	// groff justifies: compare with runs of spaces folded
	if !strings.Contains(strings.Join(strings.Fields(string(out)), " "), "NAME bootcertctl-key-generate - Create a key inside its hardware") {
		t.Errorf("rendered page lacks its NAME line:\n%s", out)
	}
}
