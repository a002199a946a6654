// Package systemd holds bootcertd's unit, sysusers.d and tmpfiles.d files;
// this test checks them with systemd-analyze.
package systemd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/internal/testenv"
)

func TestVerifyUnit(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		testenv.Missing(t, "systemd-analyze not found (install systemd)")
	}
	root := t.TempDir()
	unitDir := filepath.Join(root, "etc", "systemd", "system")
	os.MkdirAll(unitDir, 0o755)
	os.MkdirAll(filepath.Join(root, "usr", "bin"), 0o755)
	unit, err := os.ReadFile("bootcertd.service")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(unitDir, "bootcertd.service"), unit, 0o644)
	// the standard targets and slices the unit depends on by default
	sysDir := filepath.Join(root, "usr", "lib", "systemd", "system")
	os.MkdirAll(sysDir, 0o755)
	if out, err := exec.Command("cp", "-a", "/lib/systemd/system/.", sysDir).CombinedOutput(); err != nil {
		testenv.Missing(t, fmt.Sprintf("systemd unit directory not copyable: %v %s", err, out))
	}
	// the unit's ExecStart must exist in the root
	os.WriteFile(filepath.Join(root, "usr", "bin", "bootcertd"), []byte("#!/bin/sh\n"), 0o755)
	// and ExecReload's /bin/kill (merged /usr, as on Debian 12 and RHEL 8)
	os.WriteFile(filepath.Join(root, "usr", "bin", "kill"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("usr/bin", filepath.Join(root, "bin"))
	cmd := exec.Command("systemd-analyze", "verify", "--root="+root, "/etc/systemd/system/bootcertd.service")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	// systemd-analyze exits 0 on unknown keys: any stderr is a failure
	var msgs []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.Contains(l, "tpm2.target") && !strings.Contains(l, "network-online.target") {
			msgs = append(msgs, l)
		}
	}
	if err != nil || len(msgs) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s\n%s", err, out, strings.Join(msgs, "\n"))
	}
	// hardening score, offline: keep it in the "OK" band or better
	sec, err := exec.Command("systemd-analyze", "security", "--offline=true", "--root="+root, "bootcertd.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, sec)
	}
	_, rest, ok := strings.Cut(string(sec), "Overall exposure level for bootcertd.service: ")
	var score float64
	if ok {
		_, err = fmt.Sscanf(rest, "%g", &score)
	}
	if !ok || err != nil || score > 2.0 {
		t.Errorf("exposure level %v (want <= 2.0):\n%s", score, sec)
	}
	t.Logf("systemd-analyze security exposure: %.1f", score)
	if !strings.Contains(string(unit), "\nExecReload=/bin/kill -HUP $MAINPID\n") {
		t.Error("unit lacks ExecReload (systemctl reload sends SIGHUP: daemon/reload.go)")
	}
	for _, want := range []string{"Type=notify", "WatchdogSec=", "User=bootcert", "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "DeviceAllow=/dev/tpmrm0", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
}

func TestSysusersAndTmpfiles(t *testing.T) {
	for _, tool := range []string{"systemd-sysusers", "systemd-tmpfiles"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, tool+" not found")
		}
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if out, err := exec.Command("systemd-sysusers", "--root="+root, abs(t, "bootcert.sysusers")).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, _ := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	group, _ := os.ReadFile(filepath.Join(root, "etc", "group"))
	if !strings.Contains(string(passwd), "bootcert:") || !regexpMember(string(group)) {
		t.Errorf("sysusers result:\n%s\n%s", passwd, group)
	}
	if out, err := exec.Command("systemd-tmpfiles", "--root="+root, "--create", abs(t, "bootcert.tmpfiles")).CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(root, "var", "lib", "bootcert", "keys"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("tmpfiles: keys dir %v %v", fi, err)
	}
}

func abs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func regexpMember(group string) bool {
	for _, l := range strings.Split(group, "\n") {
		if strings.HasPrefix(l, "tss:") && strings.Contains(l, "bootcert") {
			return true
		}
	}
	return false
}

// TestTPMOrdering: tpm2.target (systemd >= 256) is only an ordering: a
// Wants=/Requires=/BindsTo= on it, or on a TPM device unit, would fail the
// start on systemd 252 (Debian 12, no such unit) or wait for a TPM that a
// PKCS#11 gateway does not have. The unit says what it relies on instead.
func TestTPMOrdering(t *testing.T) {
	unit, err := os.ReadFile("bootcertd.service")
	if err != nil {
		t.Fatal(err)
	}
	after := false
	for _, l := range strings.Split(string(unit), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "#") {
			continue
		}
		key, val, _ := strings.Cut(l, "=")
		for _, name := range strings.Fields(val) {
			tpm := name == "tpm2.target" || strings.HasPrefix(name, "dev-tpm")
			switch {
			case tpm && key == "After":
				after = true
			case tpm:
				t.Errorf("%s= names %s: only After= may (systemd 252 has no tpm2.target)", key, name)
			}
		}
	}
	if !after {
		t.Error("no After=tpm2.target: on systemd >= 256 bootcertd would start before a TPM driver loaded as a module")
	}
	for _, want := range []string{"systemd 256", "252", "key retry"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit's comment does not say %q (which systemd has tpm2.target, what the unit relies on elsewhere)", want)
		}
	}
}
