package activation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/activation"
	"github.com/bootcert/bootcert/cloud/activator"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
)

func req(method, path string) []byte {
	b, _ := json.Marshal(map[string]any{"version": "2.0", "routeKey": method + " " + path, "rawPath": path,
		"requestContext": map[string]any{"http": map[string]string{"method": method, "path": path}}})
	return b
}

func TestActivationAPI(t *testing.T) {
	ctx := context.Background()
	b := testbed.New(t, map[string]string{fleet.EnvExplicitActivation: "true"})
	d := b.CA.Issue(t, "gw-1", b.Clock.Now())
	early := "gw-early"
	b.SetAllowList(manifest.Entry{DeviceID: d.ID}, manifest.Entry{DeviceID: early})
	b.Register(d)
	if res, _ := b.Activator().Handle(ctx, activator.Event{CertificateID: d.CertID}); res.Outcome != activator.Waiting {
		t.Fatalf("activator: %+v", res)
	}
	api := b.Activation()
	for _, tc := range []struct {
		name, method, path string
		status             int
		body               string
	}{
		{"ok/get-waiting", "GET", "/devices/gw-1", 200, `"activated":false`},
		{"ok/activate", "POST", "/devices/gw-1/activation", 200, `"inRotationGroup":true`},
		{"ok/activate-again", "POST", "/devices/gw-1/activation", 200, `"activated":true`},
		{"ok/activate-before-first-connect", "POST", "/devices/gw-early/activation", 200, `"registered":false`},
		{"fail/not-allow-listed", "POST", "/devices/gw-2/activation", 404, "allow list"},
		{"fail/unknown", "GET", "/devices/gw-2", 404, "neither"},
		{"fail/bad-id", "GET", "/devices/a%2Fb", 400, "thing name"},
		{"fail/method", "DELETE", "/devices/gw-1", 405, "not a route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := api.HandleEvent(ctx, req(tc.method, tc.path))
			if err != nil || resp.StatusCode != tc.status || !strings.Contains(resp.Body, tc.body) {
				t.Fatalf("%d %s %v, want %d with %q", resp.StatusCode, resp.Body, err, tc.status, tc.body)
			}
		})
	}
	if b.Reg.Attr(early, fleet.AttrActivated) != "true" {
		t.Errorf("early activation not recorded")
	}
	// The early device connects later: admitted straight into the group.
	e := b.CA.Issue(t, early, b.Clock.Now())
	b.Register(e)
	if res, err := b.Activator().Handle(ctx, activator.Event{CertificateID: e.CertID}); err != nil || res.Outcome != activator.Activated {
		t.Fatalf("activator after early activation: %+v %v", res, err)
	}
	if !b.Reg.InGroup("bootcert-rotation", early) {
		t.Errorf("not in the group")
	}
}

// TestActivateFailsWhenTheBootstrapIsUnknown: a registry error while
// checking the bootstrap certificate fails the request; the device is not
// activated on a guess.
func TestActivateFailsWhenTheBootstrapIsUnknown(t *testing.T) {
	ctx := context.Background()
	b := testbed.New(t, map[string]string{fleet.EnvExplicitActivation: "true"})
	d := b.CA.Issue(t, "gw-1", b.Clock.Now())
	b.SetAllowList(manifest.Entry{DeviceID: d.ID})
	b.Register(d)
	if res, _ := b.Activator().Handle(ctx, activator.Event{CertificateID: d.CertID}); res.Outcome != activator.Waiting {
		t.Fatalf("activator: %+v", res)
	}
	api := b.Activation()
	api.Registry = describeFails{api.Registry}
	resp, err := api.HandleEvent(ctx, req("POST", "/devices/gw-1/activation"))
	if err != nil || resp.StatusCode != 429 {
		t.Fatalf("%d %s %v, want 429", resp.StatusCode, resp.Body, err)
	}
	if b.Reg.Attr(d.ID, fleet.AttrActivated) != "" || b.Reg.InGroup("bootcert-rotation", d.ID) {
		t.Errorf("activated although its bootstrap certificate could not be checked")
	}
}

// describeFails is a registry whose DescribeCertificate is throttled.
type describeFails struct{ activation.Registry }

func (describeFails) DescribeCertificate(context.Context, string) (ports.Certificate, error) {
	return ports.Certificate{}, fmt.Errorf("DescribeCertificate: %w", ports.ErrThrottled)
}
