// Package testbed wires the cloud handlers to the in-memory fakes and a
// factory PKI for unit tests.
package testbed

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/activation"
	"github.com/bootcert/bootcert/cloud/activator"
	"github.com/bootcert/bootcert/cloud/certvendor"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/fake"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/cloud/reaper"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/manifest"
)

// Bed is a set of fakes, a factory CA and the handlers over them.
type Bed struct {
	T        testing.TB
	Reg      *fake.Registry
	Store    *fake.Store
	Pub      *fake.Publisher
	Clock    *clock.Fake
	CA       *testpki.CA
	Settings fleet.Settings
	Trust    *fleet.Trust
	Log      *slog.Logger
}

// New makes a bed; env overrides settings (fleet.Env* names).
func New(t testing.TB, env map[string]string) *Bed {
	t.Helper()
	e := map[string]string{fleet.EnvBucket: "bootcert-test"}
	for k, v := range env {
		e[k] = v
	}
	s, err := fleet.FromEnv(func(k string) string { return e[k] })
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	b := &Bed{T: t, Reg: fake.NewRegistry(), Store: fake.NewStore(), Pub: &fake.Publisher{}, Clock: clock.NewFake(now),
		CA: testpki.NewCA(t, "bootcert factory CA", now), Settings: s, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	b.Reg.Now = b.Clock.Now
	b.Trust = &fleet.Trust{Store: b.Store, Settings: s, Clock: b.Clock}
	b.put(s.CAKey, b.CA.PEM)
	b.SetAllowList()
	return b
}

func (b *Bed) put(key string, body []byte) {
	if err := b.Store.Put(context.Background(), key, body, nil); err != nil {
		b.T.Fatal(err)
	}
}

// SetAllowList replaces the allow list.
func (b *Bed) SetAllowList(entries ...manifest.Entry) {
	b.put(b.Settings.AllowListKey, testpki.AllowList(b.T, entries...))
}

// SetCRL replaces the CRL.
func (b *Bed) SetCRL(revoked ...*testpki.Device) {
	list := make([]*x509.Certificate, 0, len(revoked))
	for _, d := range revoked {
		list = append(list, d.Cert)
	}
	b.put(b.Settings.CRLKey, b.CA.CRL(b.T, b.Clock.Now(), list...))
}

// Register puts a device's bootstrap certificate in the registry as
// PENDING_ACTIVATION (what the broker does at JITR).
func (b *Bed) Register(d *testpki.Device) {
	b.Reg.AddCertificate(d.DER, ports.StatusPendingActivation)
}

// Activator returns the activator.
func (b *Bed) Activator() *activator.Activator {
	return &activator.Activator{Registry: b.Reg, Store: b.Store, Trust: b.Trust, Settings: b.Settings, Clock: b.Clock, Log: b.Log}
}

// Vendor returns the vendor, with throttling retried on the fake clock (a
// test that throttles drives it: fake.DriveClock).
func (b *Bed) Vendor() *certvendor.Vendor {
	reg := ports.RetryingRegistry(b.Reg, ports.Backoff{Clock: b.Clock})
	return &certvendor.Vendor{Registry: reg, Store: b.Store, Publisher: b.Pub, Trust: b.Trust, Settings: b.Settings, Clock: b.Clock, Log: b.Log}
}

// Reaper returns the reaper.
func (b *Bed) Reaper() *reaper.Reaper {
	return &reaper.Reaper{Registry: b.Reg, Store: b.Store, Settings: b.Settings, Log: b.Log}
}

// Renewal returns the renewal function.
func (b *Bed) Renewal() *renewal.Renewal {
	return &renewal.Renewal{Registry: b.Reg, Jobs: b.Reg, Store: b.Store, Publisher: b.Pub, Trust: b.Trust, Settings: b.Settings,
		Config: renewal.DefaultConfig(), Clock: b.Clock, Log: b.Log}
}

// Activation returns the activation API.
func (b *Bed) Activation() *activation.API {
	return &activation.API{Registry: b.Reg, Trust: b.Trust, Settings: b.Settings, Log: b.Log}
}
