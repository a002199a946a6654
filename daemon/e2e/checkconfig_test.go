package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCheckConfig(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-check", deviceOpts{kind: onFile})
	out, err := exec.Command(bootcertd, "--check-config", d.cfgPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("--check-config on a good file: %v\n%s", err, out)
	}
	good, _ := os.ReadFile(d.cfgPath)
	for name, tc := range map[string]struct{ from, to, want string }{
		"fail/unknown-key":     {"[log]", "[log]\nverbose = true", "log.verbose"},
		"fail/bad-port":        {"[broker]", "[broker]\nalpn = \"h2\"", "broker.alpn"},
		"fail/missing-cert":    {`bootstrap_cert = "`, `bootstrap_cert = "/nonexistent`, "identity.bootstrap_cert"},
		"fail/relative-state":  {"dir = \"/", "dir = \"", "state.dir"},
		"fail/not-toml-at-all": {"[broker]", "[broker", "config"},
	} {
		t.Run(name, func(t *testing.T) {
			bad := filepath.Join(t.TempDir(), "bad.toml")
			os.WriteFile(bad, []byte(strings.Replace(string(good), tc.from, tc.to, 1)), 0o600)
			out, err := exec.Command(bootcertd, "--check-config", bad).CombinedOutput()
			if err == nil {
				t.Fatalf("--check-config accepted it:\n%s", out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("message does not name %q:\n%s", tc.want, out)
			}
		})
	}
}

// The factory step run as root on the device leaves the key file 0600
// root:root; --check-config, run by the unit as the daemon's user, must say
// so instead of a daemon that retries for ever (issue 14, item 6).
func TestCheckConfigKeyFileUnreadable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run bootcertd as another user")
	}
	c := newCloud(t)
	d := newDevice(t, c, "gw-check-owner", deviceOpts{kind: onFile})
	bin := filepath.Join(t.TempDir(), "bootcertd")
	data, err := os.ReadFile(bootcertd)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, data, 0o755)
	// everything but the key readable by nobody
	for _, p := range []string{filepath.Dir(bin), filepath.Dir(filepath.Dir(bin)), d.dir, filepath.Dir(d.dir), filepath.Join(d.dir, "keys")} {
		os.Chmod(p, 0o755)
	}
	for _, f := range []string{d.cfgPath, filepath.Join(d.dir, "bootstrap.pem"), filepath.Join(d.dir, "server-ca.pem")} {
		os.Chmod(f, 0o644)
	}
	key := strings.TrimPrefix(d.bootKey, "file:")
	asNobody := func() (string, error) {
		cmd := exec.Command(bin, "--check-config", d.cfgPath)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := asNobody()
	if err == nil || !strings.Contains(out, "identity.bootstrap_key") || !strings.Contains(out, "user nobody cannot read "+key) || !strings.Contains(out, "chown bootcert:bootcert "+key) {
		t.Fatalf("--check-config as nobody with a root-only key: %v\n%s", err, out)
	}
	os.Chown(key, 65534, 65534)
	if out, err := asNobody(); err != nil {
		t.Errorf("--check-config after chown: %v\n%s", err, out)
	}
}
