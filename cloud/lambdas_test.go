package cloud_test

import (
	"archive/zip"
	"bytes"
	"debug/elf"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestMakeLambdas runs scripts/lambdas.sh, the script behind `make lambdas`,
// for one function and checks what Lambda's provided.al2023 runtime needs:
// a zip whose only entry is an executable "bootstrap", a static ELF for the
// zip's architecture.
func TestMakeLambdas(t *testing.T) {
	out := t.TempDir()
	cmd := exec.Command("../scripts/lambdas.sh", out, "activator")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/lambdas.sh: %v\n%s", err, b)
	}
	for arch, machine := range map[string]elf.Machine{"arm64": elf.EM_AARCH64, "x86_64": elf.EM_X86_64} {
		path := filepath.Join(out, arch, "activator.zip")
		zr, err := zip.OpenReader(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer zr.Close()
		if len(zr.File) != 1 || zr.File[0].Name != "bootstrap" {
			t.Fatalf("%s: entries %v, want only bootstrap", path, zr.File)
		}
		f := zr.File[0]
		if f.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s: bootstrap mode %v is not executable", path, f.Mode())
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		e, err := elf.NewFile(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("%s: bootstrap is not ELF: %v", path, err)
		}
		if e.Machine != machine {
			t.Errorf("%s: machine %v, want %v", path, e.Machine, machine)
		}
		for _, p := range e.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s: dynamically linked (has an interpreter); provided.al2023 needs a static binary", path)
			}
		}
	}
}
