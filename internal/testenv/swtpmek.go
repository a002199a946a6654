package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Manufactured is a swtpm state made by swtpm_setup with EK certificates
// (RSA-2048 at NV 0x01C00002, ECC P-384 at 0x01C00016) and a platform
// certificate, issued by swtpm's local CA kept in CADir (never /var/lib).
type Manufactured struct {
	StateDir string
	CADir    string
	// RootPEM is the local CA's self-signed root (swtpm-localca-rootca),
	// IssuerPEM the intermediate that signs the EK certificates.
	RootPEM, IssuerPEM []byte
	// EKCertRSA and EKCertECC are the DER EK certificates swtpm_setup wrote.
	EKCertRSA, EKCertECC []byte
}

// Manufacture runs swtpm_setup into stateDir with the local CA in caDir
// (created on first use, reused after: TPMs manufactured with the same caDir
// share a root). Its config files are written in caDir. It does not need a
// testing.T so that a TestMain can make one TPM for a whole package.
func Manufacture(stateDir, caDir string) (*Manufactured, error) {
	if _, err := exec.LookPath("swtpm_setup"); err != nil {
		return nil, fmt.Errorf("swtpm_setup not found in PATH (run `make deps`: package swtpm-tools)")
	}
	localca, err := exec.LookPath("swtpm_localca")
	if err != nil {
		localca = "/usr/bin/swtpm_localca"
	}
	for _, d := range []string{stateDir, caDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	files := map[string]string{
		"localca.conf": fmt.Sprintf("statedir = %s\nsigningkey = %s\nissuercert = %s\ncertserial = %s\n",
			caDir, filepath.Join(caDir, "signkey.pem"), filepath.Join(caDir, "issuercert.pem"), filepath.Join(caDir, "certserial")),
		"localca.options": "--platform-manufacturer bootcert-test\n--platform-version 2.1\n--platform-model swtpm\n",
	}
	files["setup.conf"] = fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
		localca, filepath.Join(caDir, "localca.conf"), filepath.Join(caDir, "localca.options"))
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(caDir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	out, err := os.MkdirTemp(caDir, "ekcerts-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir,
		"--create-ek-cert", "--create-platform-cert", "--ecc",
		"--config", filepath.Join(caDir, "setup.conf"),
		"--write-ek-cert-files", out, "--overwrite")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("swtpm_setup: %v: %s", err, strings.TrimSpace(string(b)))
	}
	m := &Manufactured{StateDir: stateDir, CADir: caDir}
	for _, f := range []struct {
		dst  *[]byte
		path string
	}{
		{&m.RootPEM, filepath.Join(caDir, "swtpm-localca-rootca-cert.pem")},
		{&m.IssuerPEM, filepath.Join(caDir, "issuercert.pem")},
		{&m.EKCertRSA, filepath.Join(out, "ek-rsa2048.crt")},
		{&m.EKCertECC, filepath.Join(out, "ek-secp384r1.crt")},
	} {
		if *f.dst, err = os.ReadFile(f.path); err != nil {
			return nil, fmt.Errorf("after swtpm_setup: %w", err)
		}
	}
	return m, nil
}

// StartManufactured starts swtpm on a private copy of m's state, so that
// each test begins with the TPM as it left the factory line.
func StartManufactured(t testing.TB, m *Manufactured) *SWTPM {
	t.Helper()
	Require(t, "swtpm")
	dir := t.TempDir()
	entries, err := os.ReadDir(m.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".lock") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.StateDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return StartSWTPMState(t, dir)
}
