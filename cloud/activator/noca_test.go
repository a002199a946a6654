package activator_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/activator"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
)

// TestActivatorNoFactoryCA: a claim-only fleet has no CA object; a JITR
// event (a certificate of a CA AWS IoT still knows, say) is refused, not
// admitted and not an error: no factory CA is trusted.
func TestActivatorNoFactoryCA(t *testing.T) {
	ctx := context.Background()
	b := testbed.New(t, nil)
	d := b.CA.Issue(t, "gw-1", b.Clock.Now())
	b.Register(d)
	b.SetAllowList(manifest.Entry{DeviceID: d.ID})
	b.Store.Delete(ctx, b.Settings.CAKey)
	res, err := b.Activator().Handle(ctx, activator.Event{CertificateID: d.CertID})
	if err != nil {
		t.Fatalf("Handle: %v (want a rejection, not an error)", err)
	}
	if res.Outcome != activator.Rejected || !strings.Contains(res.Reason, "no factory CA is trusted") {
		t.Fatalf("outcome %q (%s), want rejected: no factory CA is trusted", res.Outcome, res.Reason)
	}
	if st := b.Reg.Status(d.CertID); st != ports.StatusRevoked {
		t.Errorf("certificate %s, want REVOKED", st)
	}
	if b.Reg.InGroup("bootcert-rotation", d.ID) {
		t.Error("device admitted to the rotation group")
	}
}
