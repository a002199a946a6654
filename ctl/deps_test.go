package ctl

import (
	"testing"

	"github.com/bootcert/bootcert/internal/testkit"
)

// TestCtlDoesNotLinkTheEngine: bootcertctl talks to bootcertd through the
// control socket's wire type (control.Status); it links neither the rotation
// engine nor the MQTT session.
func TestCtlDoesNotLinkTheEngine(t *testing.T) {
	deps := testkit.Deps(t, "github.com/bootcert/bootcert/ctl", "")
	if !deps["github.com/bootcert/bootcert/daemon/control"] {
		t.Fatal("go list -deps does not list daemon/control: the check below would prove nothing")
	}
	if bad := testkit.ForbiddenDeps(deps,
		"github.com/bootcert/bootcert/daemon/engine",
		"github.com/bootcert/bootcert/daemon/session",
		"github.com/eclipse/paho.mqtt.golang",
	); len(bad) > 0 {
		t.Errorf("ctl depends on %v", bad)
	}
}
