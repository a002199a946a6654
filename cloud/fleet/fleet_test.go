package fleet_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/fake"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/manifest"
)

var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func TestSettings(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"fail/no-bucket":       {},
		"fail/bad-activation":  {"BUCKET": "b", "EXPLICIT_ACTIVATION": "maybe"},
		"fail/bad-bootstrap":   {"BUCKET": "b", "BOOTSTRAP_AFTER_ROTATION": "DELETE"},
		"fail/bad-previous":    {"BUCKET": "b", "PREVIOUS_CERTIFICATE": "BURN"},
		"fail/ttl-too-long":    {"BUCKET": "b", "PRESIGN_TTL": "200h"},
		"fail/ttl-garbage":     {"BUCKET": "b", "PRESIGN_TTL": "soon"},
		"fail/fraction-1":      {"BUCKET": "b", "RENEWAL_FRACTION": "1"},
		"fail/jitter-negative": {"BUCKET": "b", "RENEWAL_JITTER": "-0.1"},
	} {
		_, err := fleet.FromEnv(func(k string) string { return env[k] })
		if !errors.Is(err, fleet.ErrSetting) {
			t.Errorf("%s: %v", name, err)
		}
	}
	s, err := fleet.FromEnv(func(k string) string {
		return map[string]string{"BUCKET": "b", "PRESIGN_TTL": "900", "bootstrap_after_rotation": "", "BOOTSTRAP_AFTER_ROTATION": "revoked"}[k]
	})
	if err != nil || s.PresignTTL != 15*time.Minute || s.BootstrapAfterRotation != "REVOKED" || s.RotationGroup != "bootcert-rotation" {
		t.Errorf("ok/defaults: %+v %v", s, err)
	}
}

func newTrust(t *testing.T) (*fleet.Trust, *fake.Store, *testpki.CA) {
	ca := testpki.NewCA(t, "factory", now)
	st := fake.NewStore()
	s, _ := fleet.FromEnv(func(k string) string { return map[string]string{"BUCKET": "b"}[k] })
	st.Put(context.Background(), s.CAKey, ca.PEM, nil)
	return &fleet.Trust{Store: st, Settings: s}, st, ca
}

func TestAllowListCachedByETag(t *testing.T) {
	tr, st, _ := newTrust(t)
	ctx := context.Background()
	st.Put(ctx, tr.Settings.AllowListKey, testpki.AllowList(t, manifest.Entry{DeviceID: "gw-1"}), nil)
	if _, err := tr.Lookup(ctx, "gw-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Lookup(ctx, "gw-2"); !errors.Is(err, fleet.ErrNotAllowed) {
		t.Fatalf("gw-2: %v", err)
	}
	st.Put(ctx, tr.Settings.AllowListKey, testpki.AllowList(t, manifest.Entry{DeviceID: "gw-2"}), nil)
	if _, err := tr.Lookup(ctx, "gw-2"); err != nil {
		t.Fatalf("new allow list not picked up: %v", err)
	}
	if _, err := tr.Lookup(ctx, "gw-1"); !errors.Is(err, fleet.ErrNotAllowed) {
		t.Fatalf("gw-1 still allowed: %v", err)
	}
}

func TestCRL(t *testing.T) {
	tr, st, ca := newTrust(t)
	ctx := context.Background()
	d := ca.Issue(t, "gw-1", now)
	other := ca.Issue(t, "gw-2", now)
	if rv, err := tr.Revoked(ctx, d.Cert); err != nil || rv {
		t.Fatalf("ok/no-crl: %v %v", rv, err)
	}
	st.Put(ctx, tr.Settings.CRLKey, ca.CRL(t, now, d.Cert), nil)
	if rv, err := tr.Revoked(ctx, d.Cert); err != nil || !rv {
		t.Fatalf("ok/revoked: %v %v", rv, err)
	}
	if rv, err := tr.Revoked(ctx, other.Cert); err != nil || rv {
		t.Fatalf("ok/not-revoked: %v %v", rv, err)
	}
	// A CRL from another CA is refused (fail closed).
	evil := testpki.NewCA(t, "factory", now)
	st.Put(ctx, tr.Settings.CRLKey, evil.CRL(t, now), nil)
	if _, err := tr.Revoked(ctx, d.Cert); err == nil {
		t.Fatalf("fail/foreign-crl accepted")
	}
}

func TestCheckCSR(t *testing.T) {
	good := testpki.CSR(t, "gw-1", nil)
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"ok/p256", good, true},
		{"ok/der", testpki.DER(good), true},
		{"ok/rsa-2048", testpki.CSR(t, "gw-1", testpki.RSAKey(t, 2048)), true},
		{"fail/rsa-1024", testpki.CSR(t, "gw-1", testpki.RSAKey(t, 1024)), false},
		{"fail/cn", testpki.CSR(t, "gw-2", nil), false},
		{"fail/signature", testpki.CorruptSignature(t, good), false},
		{"fail/two-blocks", append(bytes.Clone(good), good...), false},
		{"fail/certificate", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), false},
		{"fail/empty", nil, false},
	} {
		_, err := fleet.CheckCSR(tc.in, "gw-1")
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, fleet.ErrBadCSR)) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

func FuzzParseCRL(f *testing.F) {
	ca := testpki.NewCA(f, "factory", now)
	d := ca.Issue(f, "gw-1", now)
	f.Add(ca.CRL(f, now, d.Cert))
	f.Add([]byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Only CRLs signed by the CA may be accepted.
		if _, err := fleet.ParseCRL(b, ca.Cert); err == nil {
			if _, err := fleet.ParseCRL(b, testpki.NewCA(t, "other", now).Cert); err == nil {
				t.Fatal("CRL verified against two CAs")
			}
		}
	})
}

func FuzzAllowList(f *testing.F) {
	f.Add([]byte("device_id,bootstrap_sha256,final_csr\ngw-1,,\n"))
	f.Add([]byte("device_id\n\"gw\n"))
	f.Add([]byte("device_id,bootstrap_sha256\ngw-1," + strings.Repeat("a", 64) + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st := fake.NewStore()
		s, _ := fleet.FromEnv(func(k string) string { return map[string]string{"BUCKET": "b"}[k] })
		st.Put(context.Background(), s.AllowListKey, b, nil)
		tr := &fleet.Trust{Store: st, Settings: s}
		l, err := tr.AllowList(context.Background())
		if err != nil {
			return
		}
		for _, e := range l.Entries() {
			if manifest.ValidDeviceID(e.DeviceID) != nil {
				t.Fatalf("accepted device ID %q", e.DeviceID)
			}
		}
	})
}

func FuzzCheckCSR(f *testing.F) {
	f.Add(testpki.CSR(f, "gw-1", nil))
	f.Add(testpki.DER(testpki.CSR(f, "gw-1", nil)))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := fleet.CheckCSR(b, "gw-1")
		if err == nil && (req.Subject.CommonName != "gw-1" || req.CheckSignature() != nil) {
			t.Fatal("accepted a CSR that breaks the policy")
		}
	})
}
