package activator_test

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/activator"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

func TestActivator(t *testing.T) {
	ctx := context.Background()
	type setup struct {
		b   *testbed.Bed
		dev *testpki.Device
	}
	tests := []struct {
		name    string
		env     map[string]string
		prepare func(s *setup)
		outcome string
		reason  string
		check   func(t *testing.T, s *setup, res activator.Result)
	}{
		{name: "ok/allowed", outcome: activator.Activated,
			prepare: func(s *setup) { s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID}) },
			check: func(t *testing.T, s *setup, res activator.Result) {
				if st := s.b.Reg.Status(s.dev.CertID); st != ports.StatusActive {
					t.Errorf("bootstrap certificate %s, want ACTIVE", st)
				}
				if got := s.b.Reg.Attr(s.dev.ID, fleet.AttrBootstrap); got != s.dev.CertID {
					t.Errorf("bootstrapCert attribute %q", got)
				}
				if !s.b.Reg.InGroup("bootcert-rotation", s.dev.ID) {
					t.Errorf("not in the rotation group")
				}
				if p := s.b.Reg.PoliciesOf(s.dev.CertID); len(p) != 1 || p[0] != "bootcert-bootstrap" {
					t.Errorf("policies %v, want [bootcert-bootstrap]", p)
				}
				th, _ := s.b.Reg.DescribeThing(context.Background(), s.dev.ID)
				if th.Type != "bootcert-gateway" {
					t.Errorf("thing type %q", th.Type)
				}
			}},
		{name: "ok/fingerprint-bound", outcome: activator.Activated,
			prepare: func(s *setup) {
				s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID, BootstrapSHA256: s.dev.CertID})
			}},
		{name: "ok/explicit-activation-waits", env: map[string]string{fleet.EnvExplicitActivation: "true"}, outcome: activator.Waiting,
			prepare: func(s *setup) { s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID}) },
			check: func(t *testing.T, s *setup, res activator.Result) {
				if s.b.Reg.InGroup("bootcert-rotation", s.dev.ID) {
					t.Errorf("in the rotation group before activation")
				}
				if s.b.Reg.Status(s.dev.CertID) != ports.StatusActive {
					t.Errorf("certificate not ACTIVE")
				}
			}},
		{name: "ok/pre-provisioned", outcome: activator.Activated,
			prepare: func(s *setup) {
				csr := testpki.DER(testpki.CSR(t, s.dev.ID, nil))
				s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID, FinalCSR: csr})
			},
			check: func(t *testing.T, s *setup, res activator.Result) {
				if res.FinalCertificateID == "" {
					t.Fatal("no final certificate")
				}
				if st := s.b.Reg.Status(res.FinalCertificateID); st != ports.StatusInactive {
					t.Errorf("final certificate %s, want INACTIVE", st)
				}
				obj, err := s.b.Store.Get(context.Background(), fleet.PackageKey(s.dev.ID, fleet.PreProvisionedName), "")
				if err != nil || obj.Metadata[fleet.MetaCertificateID] != res.FinalCertificateID {
					t.Errorf("package metadata %v, err %v", obj.Metadata, err)
				}
			}},
		{name: "fail/not-allow-listed", outcome: activator.Rejected, reason: "not on the allow list",
			prepare: func(s *setup) { s.b.SetAllowList(manifest.Entry{DeviceID: "someone-else"}) }},
		{name: "fail/fingerprint-mismatch", outcome: activator.Rejected, reason: "bound to bootstrap certificate",
			prepare: func(s *setup) {
				s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID, BootstrapSHA256: strings.Repeat("ab", 32)})
			}},
		{name: "fail/crl-revoked", outcome: activator.Rejected, reason: "revoked",
			prepare: func(s *setup) {
				s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID})
				s.b.SetCRL(s.dev)
			}},
		{name: "fail/other-ca", outcome: activator.Rejected, reason: "not issued by a factory CA",
			prepare: func(s *setup) {
				other := testpki.NewCA(t, "grey market CA", s.b.Clock.Now())
				d := other.Issue(t, s.dev.ID, s.b.Clock.Now())
				s.dev = d
				s.b.Register(d)
				s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID})
			}},
		{name: "fail/bad-thing-name", outcome: activator.Rejected, reason: "not a valid AWS IoT thing name",
			prepare: func(s *setup) {
				d := s.b.CA.Issue(t, "bad name/1", s.b.Clock.Now())
				s.dev = d
				s.b.Register(d)
			}},
		{name: "fail/thing-bound-to-other-certificate", outcome: activator.Rejected, reason: "already bound",
			prepare: func(s *setup) {
				s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID})
				s.b.Reg.CreateThing(context.Background(), s.dev.ID, "bootcert-gateway", map[string]string{fleet.AttrBootstrap: strings.Repeat("cd", 32)})
			}},
		{name: "fail/bad-pre-provisioned-csr", outcome: activator.Rejected, reason: "final_csr",
			prepare: func(s *setup) {
				csr := testpki.DER(testpki.CSR(t, "another-device", nil))
				s.b.SetAllowList(manifest.Entry{DeviceID: s.dev.ID, FinalCSR: csr})
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := testbed.New(t, tt.env)
			s := &setup{b: b, dev: b.CA.Issue(t, "gw-0001", b.Clock.Now())}
			b.Register(s.dev)
			tt.prepare(s)
			res, err := b.Activator().Handle(ctx, activator.Event{CertificateID: s.dev.CertID})
			if err != nil {
				t.Fatalf("Handle: %v", err)
			}
			if res.Outcome != tt.outcome {
				t.Fatalf("outcome %q (%s), want %q", res.Outcome, res.Reason, tt.outcome)
			}
			if tt.outcome == activator.Rejected {
				if !strings.Contains(res.Reason, tt.reason) {
					t.Errorf("reason %q does not contain %q", res.Reason, tt.reason)
				}
				if st := b.Reg.Status(s.dev.CertID); st != ports.StatusRevoked {
					t.Errorf("certificate %s, want REVOKED", st)
				}
				if _, err := b.Store.Get(ctx, fleet.RejectionPrefix+s.dev.CertID+".json", ""); err != nil {
					t.Errorf("no rejection record: %v", err)
				}
				if b.Reg.InGroup("bootcert-rotation", s.dev.ID) {
					t.Errorf("rejected device in the rotation group")
				}
			}
			if tt.check != nil {
				tt.check(t, s, res)
			}
			// Replay: harmless.
			calls := b.Reg.Calls
			again, err := b.Activator().Handle(ctx, activator.Event{CertificateID: s.dev.CertID})
			if err != nil || again.Outcome != activator.Ignored {
				t.Errorf("replay: %+v, %v; want ignored", again, err)
			}
			if b.Reg.Calls-calls != 1 {
				t.Errorf("replay made %d registry calls, want 1 (DescribeCertificate)", b.Reg.Calls-calls)
			}
		})
	}
}

func TestActivatorInfrastructureErrorRevokesNothing(t *testing.T) {
	b := testbed.New(t, nil)
	d := b.CA.Issue(t, "gw-1", b.Clock.Now())
	b.Register(d)
	b.Store.Delete(context.Background(), b.Settings.AllowListKey)
	if _, err := b.Activator().Handle(context.Background(), activator.Event{CertificateID: d.CertID}); err == nil {
		t.Fatal("no error without an allow list")
	}
	if st := b.Reg.Status(d.CertID); st != ports.StatusPendingActivation {
		t.Errorf("certificate %s after an infrastructure error, want PENDING_ACTIVATION", st)
	}
}

func TestParseEvent(t *testing.T) {
	ok := `{"certificateId":"` + strings.Repeat("0a", 32) + `","caCertificateId":"x","timestamp":1,"certificateStatus":"PENDING_ACTIVATION","awsAccountId":"123456789012","certificateRegistrationTimestamp":"1"}`
	if _, err := activator.ParseEvent([]byte(ok)); err != nil {
		t.Errorf("ok: %v", err)
	}
	for name, in := range map[string]string{
		"fail/bad-id":   `{"certificateId":"../../x"}`,
		"fail/trailing": ok + "{}",
		"fail/not-json": "x",
	} {
		if _, err := activator.ParseEvent([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"certificateId":"` + strings.Repeat("0a", 32) + `"}`))
	f.Add([]byte(`{"certificateId":1}`))
	f.Add([]byte(base64.StdEncoding.EncodeToString([]byte("x"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := activator.ParseEvent(b)
		if err == nil && !protocol.ValidCertificateID(ev.CertificateID) {
			t.Fatalf("accepted certificateId %q", ev.CertificateID)
		}
	})
}
