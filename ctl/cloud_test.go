package ctl

import (
	"strings"
	"testing"
)

// `bootcertctl cloud setup` moved to bootcert-admin: the old command line
// (any flags) fails saying where it went, and help no longer lists it.
func TestCloudSetupMoved(t *testing.T) {
	for _, args := range [][]string{
		{"cloud", "setup", "--lab", "/tmp/lab", "--bucket", "b", "--ca-cert", "ca.pem", "--json"},
		{"cloud", "setup", "--help"},
		{"cloud"},
	} {
		out, _, err := runCtl(t, args...)
		if err == nil || !strings.Contains(err.Error(), `moved to "bootcert-admin cloud setup"`) {
			t.Errorf("bootcertctl %v: err %v (output %q), want it to point at bootcert-admin cloud setup", args, err, out)
		}
	}
	help := mustCtl(t, "--help")
	if strings.Contains(help, "\n  cloud ") {
		t.Errorf("help lists the moved cloud command:\n%s", help)
	}
	if !strings.Contains(help, "bootcert-admin cloud setup") {
		t.Errorf("help does not say where cloud setup is:\n%s", help)
	}
}
