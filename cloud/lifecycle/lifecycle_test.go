package lifecycle_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lifecycle"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
)

// rotated is a thing after its first rotation: bootstrap INACTIVE, an
// operational certificate committed. It returns the bootstrap device and
// the operational certificate's ID.
func rotated(t *testing.T, b *testbed.Bed, name string) (*testpki.Device, string) {
	t.Helper()
	d := b.CA.Issue(t, name, b.Clock.Now())
	b.SetAllowList(manifest.Entry{DeviceID: name})
	boot := b.Reg.AddCertificate(d.DER, ports.StatusInactive)
	op := b.Reg.AddCertificate(b.CA.Issue(t, name, b.Clock.Now()).DER, ports.StatusActive) // stands in for the AWS-issued one
	if err := b.Reg.CreateThing(context.Background(), name, "bootcert-gateway", map[string]string{fleet.AttrActivated: "true",
		fleet.AttrBootstrap: boot, fleet.AttrOperational: op}); err != nil {
		t.Fatal(err)
	}
	return d, op
}

func manager(b *testbed.Bed, log *strings.Builder) *lifecycle.Manager {
	return &lifecycle.Manager{Registry: b.Reg, Rotations: b.Renewal(), Store: b.Store, Settings: b.Settings, Clock: b.Clock,
		Log: slog.New(slog.NewTextHandler(log, nil))}
}

// TestRevokeBootstrapOnCRL: a device whose bootstrap certificate is on the
// factory CRL is not re-admitted (the vendor would refuse its rotation,
// REVOKED): the operational certificate is still revoked, the bootstrap
// certificate stays INACTIVE, no job is queued and no recovery is spent.
// With a CRL that does not list it, the same revoke recovers the device.
func TestRevokeBootstrapOnCRL(t *testing.T) {
	ctx := context.Background()
	for _, listed := range []bool{false, true} {
		b := testbed.New(t, nil)
		d, op := rotated(t, b, "gw-crl")
		if listed {
			b.SetCRL(d)
		} else {
			b.SetCRL(b.CA.Issue(t, "gw-other", b.Clock.Now()))
		}
		var log strings.Builder
		m := manager(b, &log)
		res, err := m.Revoke(ctx, "gw-crl", "")
		if !listed {
			if err != nil || !res.Recovered || res.JobID == "" {
				t.Fatalf("revoke with a CRL that does not list the device: %+v %v", res, err)
			}
			continue
		}
		if !errors.Is(err, lifecycle.ErrNoRecovery) || res.Recovered || res.JobID != "" || !strings.Contains(res.Reason, "CRL") {
			t.Fatalf("revoke of a device on the CRL: %+v %v", res, err)
		}
		if c, _ := b.Reg.DescribeCertificate(ctx, op); c.Status != ports.StatusRevoked {
			t.Errorf("operational certificate %s, want REVOKED", c.Status)
		}
		if c, _ := b.Reg.DescribeCertificate(ctx, d.CertID); c.Status != ports.StatusInactive {
			t.Errorf("bootstrap certificate %s, want INACTIVE", c.Status)
		}
		if st, _ := m.Budget(ctx, "gw-crl"); st.Used != 0 {
			t.Errorf("a recovery was spent: %+v", st)
		}
		if !strings.Contains(log.String(), "AUDIT recovery refused") || !strings.Contains(log.String(), "code=NO_RECOVERY") {
			t.Errorf("no audit line:\n%s", log.String())
		}
	}
}
