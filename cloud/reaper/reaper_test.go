package reaper_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/activator"
	"github.com/bootcert/bootcert/cloud/certvendor"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/cloud/reaper"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

const job = "bootcert-rotation"

type rig struct {
	b   *testbed.Bed
	dev *testpki.Device
}

func newRig(t *testing.T) *rig {
	b := testbed.New(t, nil)
	d := b.CA.Issue(t, "gw-7", b.Clock.Now())
	b.SetAllowList(manifest.Entry{DeviceID: d.ID})
	b.Register(d)
	if _, err := b.Activator().Handle(context.Background(), activator.Event{CertificateID: d.CertID}); err != nil {
		t.Fatal(err)
	}
	return &rig{b, d}
}

// rotate runs get (and ack when commit) over principal; it returns the new ID.
func (r *rig) rotate(t *testing.T, principal string, commit bool) string {
	t.Helper()
	ctx := context.Background()
	r.b.Reg.SetJob(r.dev.ID, job, protocol.JobInProgress)
	r.b.Reg.AddThingToGroup(ctx, "bootcert-rotation", r.dev.ID)
	v := r.b.Vendor()
	rep, err := v.Handle(ctx, certvendor.Event{ThingName: r.dev.ID, Operation: "get", Principal: principal, ClientID: r.dev.ID, JobID: job, ClientToken: "t", CSR: string(testpki.CSR(t, r.dev.ID, nil))})
	var acc protocol.GetAccepted
	if err != nil || json.Unmarshal(rep.Payload, &acc) != nil || acc.CertificateID == "" {
		t.Fatalf("get: %s %v", rep.Payload, err)
	}
	if commit {
		rep, err = v.Handle(ctx, certvendor.Event{ThingName: r.dev.ID, Operation: "ack", Principal: acc.CertificateID, ClientID: r.dev.ID, JobID: job, ClientToken: "t", CertificateID: acc.CertificateID})
		if err != nil || !strings.HasSuffix(rep.Topic, "/accepted") {
			t.Fatalf("ack: %s %s %v", rep.Topic, rep.Payload, err)
		}
	}
	return acc.CertificateID
}

func (r *rig) event(t *testing.T, status protocol.JobStatus) reaper.Result {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"eventType": "JOB_EXECUTION", "operation": strings.ToLower(string(status)), "jobId": job,
		"thingArn": "arn:aws:iot:us-east-1:123456789012:thing/" + r.dev.ID, "status": status})
	ev, err := reaper.ParseEvent(b)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.b.Reaper().Handle(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestReaper(t *testing.T) {
	t.Run("ok/succeeded-retires-previous-operational-never-bootstrap", func(t *testing.T) {
		r := newRig(t)
		first := r.rotate(t, r.dev.CertID, true)
		res := r.event(t, protocol.JobSucceeded)
		if len(res.Retired) != 0 {
			t.Fatalf("first rotation retired %v (the bootstrap must stay)", res.Retired)
		}
		if r.b.Reg.Status(r.dev.CertID) == "" {
			t.Fatalf("bootstrap certificate deleted")
		}
		second := r.rotate(t, first, true)
		res = r.event(t, protocol.JobSucceeded)
		if len(res.Retired) != 1 || res.Retired[0] != first {
			t.Fatalf("retired %v, want [%s]", res.Retired, first)
		}
		if r.b.Reg.Status(first) != "" {
			t.Errorf("previous operational certificate still exists")
		}
		if r.b.Reg.Status(second) != ports.StatusActive || r.b.Reg.Status(r.dev.CertID) == "" {
			t.Errorf("new or bootstrap certificate touched")
		}
		if again := r.event(t, protocol.JobSucceeded); len(again.Retired) != 0 {
			t.Errorf("replay retired %v", again.Retired)
		}
	})
	for _, st := range []protocol.JobStatus{protocol.JobFailed, protocol.JobTimedOut, protocol.JobCanceled} {
		t.Run("ok/"+strings.ToLower(string(st))+"-before-commit-deletes-new", func(t *testing.T) {
			r := newRig(t)
			id := r.rotate(t, r.dev.CertID, false)
			res := r.event(t, st)
			if res.Committed || len(res.Retired) != 1 || res.Retired[0] != id {
				t.Fatalf("result %+v", res)
			}
			if r.b.Reg.Status(id) != "" {
				t.Errorf("new certificate still exists")
			}
			if r.b.Reg.Status(r.dev.CertID) != ports.StatusActive {
				t.Errorf("bootstrap %s", r.b.Reg.Status(r.dev.CertID))
			}
			if r.b.Reg.InGroup("bootcert-rotation", r.dev.ID) {
				t.Errorf("still in the rotation group")
			}
		})
	}
	t.Run("fail/unreadable-package-retires-nothing", func(t *testing.T) {
		r := newRig(t)
		id := r.rotate(t, r.dev.CertID, false)
		b, _ := json.Marshal(map[string]any{"jobId": job, "thingArn": "arn:aws:iot:us-east-1:123456789012:thing/" + r.dev.ID, "status": "FAILED"})
		ev, err := reaper.ParseEvent(b)
		if err != nil {
			t.Fatal(err)
		}
		h := r.b.Reaper()
		h.Store = failingGet{h.Store, fleet.PackageKey(r.dev.ID, fleet.PreProvisionedName)}
		if res, err := h.Handle(context.Background(), ev); err == nil || !strings.Contains(err.Error(), "pre-provisioned package") {
			t.Fatalf("Handle: %+v %v, want the read error", res, err)
		}
		if r.b.Reg.Status(id) != ports.StatusActive {
			t.Errorf("the new certificate is %q after a failed read", r.b.Reg.Status(id))
		}
	})
	t.Run("ok/timed-out-after-commit-keeps-both-and-alerts", func(t *testing.T) {
		r := newRig(t)
		first := r.rotate(t, r.dev.CertID, true)
		second := r.rotate(t, first, true)
		res := r.event(t, protocol.JobTimedOut)
		if !res.Committed || len(res.Retired) != 0 || res.Alert == "" {
			t.Fatalf("result %+v", res)
		}
		if r.b.Reg.Status(first) != ports.StatusActive || r.b.Reg.Status(second) != ports.StatusActive {
			t.Errorf("a certificate was touched")
		}
	})
}

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"eventType":"JOB_EXECUTION","jobId":"j","thingArn":"arn:aws:iot:us-east-1:1:thing/gw","status":"SUCCEEDED"}`))
	f.Add([]byte(`{"jobId":"j","thingArn":"thing/","status":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := reaper.ParseEvent(b)
		if err == nil && (protocol.ValidThingName(ev.ThingName) != nil || ev.JobID == "") {
			t.Fatalf("accepted %+v", ev)
		}
	})
}

// failingGet fails reads of one key (S3 unavailable).
type failingGet struct {
	reaper.Store
	key string
}

func (s failingGet) Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error) {
	if key == s.key {
		return ports.Object{}, errors.New("s3 unavailable")
	}
	return s.Store.Get(ctx, key, ifNoneMatch)
}
