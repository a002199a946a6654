package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
