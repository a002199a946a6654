package certvendor_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/activator"
	"github.com/bootcert/bootcert/cloud/certvendor"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/fake"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

const job = "bootcert-rotation"

type rig struct {
	b   *testbed.Bed
	dev *testpki.Device
}

// newRig admits a device through the activator and queues its rotation.
func newRig(t testing.TB, env map[string]string, entry func(d *testpki.Device) manifest.Entry) *rig {
	t.Helper()
	b := testbed.New(t, env)
	d := b.CA.Issue(t, "gw-0001", b.Clock.Now())
	e := manifest.Entry{DeviceID: d.ID}
	if entry != nil {
		e = entry(d)
	}
	b.SetAllowList(e)
	b.Register(d)
	if res, err := b.Activator().Handle(context.Background(), activator.Event{CertificateID: d.CertID}); err != nil || res.Outcome == activator.Rejected {
		t.Fatalf("activator: %+v %v", res, err)
	}
	b.Reg.SetJob(d.ID, job, protocol.JobInProgress)
	return &rig{b: b, dev: d}
}

func (r *rig) get(t *testing.T, csr []byte, mutate func(*certvendor.Event)) (certvendor.Reply, protocol.GetAccepted, protocol.Rejected) {
	t.Helper()
	ev := certvendor.Event{ThingName: r.dev.ID, Operation: "get", Principal: r.dev.CertID, ClientID: r.dev.ID, JobID: job, ClientToken: "tok-1", CSR: string(csr)}
	if mutate != nil {
		mutate(&ev)
	}
	return decode(t, r.b, ev)
}

func decode(t *testing.T, b *testbed.Bed, ev certvendor.Event) (certvendor.Reply, protocol.GetAccepted, protocol.Rejected) {
	t.Helper()
	rep, err := b.Vendor().Handle(context.Background(), ev)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	var acc protocol.GetAccepted
	var rej protocol.Rejected
	if strings.HasSuffix(rep.Topic, "/rejected") {
		json.Unmarshal(rep.Payload, &rej)
	} else {
		json.Unmarshal(rep.Payload, &acc)
	}
	last := b.Pub.Msgs[len(b.Pub.Msgs)-1]
	if last.Topic != rep.Topic || string(last.Payload) != string(rep.Payload) {
		t.Errorf("published %s, returned %s", last.Topic, rep.Topic)
	}
	return rep, acc, rej
}

func TestGetIssues(t *testing.T) {
	r := newRig(t, nil, nil)
	rep, acc, rej := r.get(t, testpki.CSR(t, r.dev.ID, nil), nil)
	if rep.Topic != "certificates/gw-0001/get/accepted" {
		t.Fatalf("topic %s (%+v)", rep.Topic, rej)
	}
	if acc.ClientToken != "tok-1" || !protocol.ValidCertificateID(acc.CertificateID) || !strings.Contains(acc.CertificatePEM, "BEGIN CERTIFICATE") || !strings.HasPrefix(acc.Location, "https://") {
		t.Fatalf("accepted %+v", acc)
	}
	if r.b.Reg.Status(acc.CertificateID) != ports.StatusActive {
		t.Errorf("new certificate not ACTIVE")
	}
	if p := r.b.Reg.PoliciesOf(acc.CertificateID); len(p) != 1 || p[0] != "bootcert-operational" {
		t.Errorf("policies %v", p)
	}
	principals, _ := r.b.Reg.ListThingPrincipals(context.Background(), r.dev.ID)
	if len(principals) != 2 {
		t.Errorf("principals %v, want bootstrap and new", principals)
	}
	obj, err := r.b.Store.Get(context.Background(), fleet.PackageKey(r.dev.ID, acc.CertificateID), "")
	if err != nil || obj.Metadata[fleet.MetaCertificateID] != acc.CertificateID || string(obj.Body) != acc.CertificatePEM {
		t.Errorf("package: %v %v", obj.Metadata, err)
	}
	if strings.Contains(string(obj.Body), "PRIVATE KEY") {
		t.Errorf("package contains a private key")
	}
}

func TestGetIsIdempotent(t *testing.T) {
	r := newRig(t, nil, nil)
	csr := testpki.CSR(t, r.dev.ID, nil)
	_, a1, _ := r.get(t, csr, nil)
	_, a2, _ := r.get(t, csr, func(e *certvendor.Event) { e.ClientToken = "tok-2" })
	if a1.CertificateID == "" || a1.CertificateID != a2.CertificateID {
		t.Fatalf("retry got %q, first %q", a2.CertificateID, a1.CertificateID)
	}
	if a2.ClientToken != "tok-2" {
		t.Errorf("clientToken %q", a2.ClientToken)
	}
	// Another CSR for the same job is another issuance.
	_, a3, _ := r.get(t, testpki.CSR(t, r.dev.ID, nil), nil)
	if a3.CertificateID == a1.CertificateID || a3.CertificateID == "" {
		t.Errorf("new CSR got %q", a3.CertificateID)
	}
}

func TestGetThrottled(t *testing.T) {
	t.Run("ok/retried-inside-deadline", func(t *testing.T) {
		r := newRig(t, nil, nil)
		fake.DriveClock(t, r.b.Clock, 10*time.Millisecond)
		r.b.Reg.Throttle = 6
		_, acc, rej := r.get(t, testpki.CSR(t, r.dev.ID, nil), nil)
		if acc.CertificateID == "" {
			t.Fatalf("rejected %+v", rej)
		}
	})
	t.Run("fail/throttled-past-deadline", func(t *testing.T) {
		r := newRig(t, nil, nil)
		fake.DriveClock(t, r.b.Clock, 100*time.Millisecond)
		start := r.b.Clock.Now()
		r.b.Reg.Throttle = 1 << 20
		_, _, rej := r.get(t, testpki.CSR(t, r.dev.ID, nil), nil)
		if rej.Code != protocol.Throttled || !rej.Retryable {
			t.Fatalf("rejected %+v, want THROTTLED retryable", rej)
		}
		// Backoff's default budget is 10 s, 0.5 s of it kept to reply.
		if waited := r.b.Clock.Now().Sub(start); waited < 5*time.Second || waited > 9500*time.Millisecond {
			t.Errorf("gave up after %v of backoff, want within the 10 s budget less the 0.5 s margin", waited)
		}
	})
}

func TestGetRejections(t *testing.T) {
	otherKeyCSR := func(t *testing.T, r *rig) []byte { return testpki.CSR(t, "gw-0002", nil) }
	tests := []struct {
		name    string
		env     map[string]string
		prepare func(t *testing.T, r *rig)
		csr     func(t *testing.T, r *rig) []byte
		mutate  func(*certvendor.Event)
		code    protocol.Code
		// retryable: the device keeps its staged key and asks again
		retryable bool
	}{
		{name: "fail/not-allowed/removed-from-allow-list", code: protocol.NotAllowed,
			prepare: func(t *testing.T, r *rig) { r.b.SetAllowList(manifest.Entry{DeviceID: "gw-0002"}) }},
		{name: "fail/not-allowed/client-id", code: protocol.NotAllowed,
			mutate: func(e *certvendor.Event) { e.ClientID = "gw-0002" }},
		{name: "fail/not-allowed/principal-not-attached", code: protocol.NotAllowed,
			mutate: func(e *certvendor.Event) { e.Principal = strings.Repeat("ab", 32) }},
		{name: "fail/not-allowed/no-principal", code: protocol.NotAllowed,
			mutate: func(e *certvendor.Event) { e.Principal = "" }},
		{name: "fail/not-allowed/principal-inactive", code: protocol.NotAllowed, retryable: true,
			prepare: func(t *testing.T, r *rig) {
				r.b.Reg.UpdateCertificate(context.Background(), r.dev.CertID, ports.StatusInactive)
			}},
		// a session on a certificate revoked a moment ago (AWS ends it
		// within minutes): the device retries on its next connection
		{name: "fail/not-allowed/principal-revoked", code: protocol.NotAllowed, retryable: true,
			prepare: func(t *testing.T, r *rig) {
				r.b.Reg.UpdateCertificate(context.Background(), r.dev.CertID, ports.StatusRevoked)
			}},
		{name: "fail/revoked/crl", code: protocol.Revoked,
			prepare: func(t *testing.T, r *rig) { r.b.SetCRL(r.dev) }},
		{name: "fail/not-activated", code: protocol.NotActivated, env: map[string]string{fleet.EnvExplicitActivation: "true"}},
		{name: "fail/no-rotation-pending/job-done", code: protocol.NoRotationPending,
			prepare: func(t *testing.T, r *rig) { r.b.Reg.SetJob(r.dev.ID, job, protocol.JobSucceeded) }},
		{name: "fail/no-rotation-pending/not-in-group", code: protocol.NoRotationPending,
			prepare: func(t *testing.T, r *rig) {
				r.b.Reg.RemoveThingFromGroup(context.Background(), "bootcert-rotation", r.dev.ID)
			}},
		{name: "fail/no-rotation-pending/other-job", code: protocol.NoRotationPending,
			mutate: func(e *certvendor.Event) { e.JobID = "some-other-job" }},
		{name: "fail/bad-csr/other-device-cn", code: protocol.BadCSR, csr: otherKeyCSR},
		{name: "fail/bad-csr/rsa-1024", code: protocol.BadCSR,
			csr: func(t *testing.T, r *rig) []byte { return testpki.CSR(t, r.dev.ID, testpki.RSAKey(t, 1024)) }},
		{name: "fail/bad-csr/signature", code: protocol.BadCSR,
			csr: func(t *testing.T, r *rig) []byte { return testpki.CorruptSignature(t, testpki.CSR(t, r.dev.ID, nil)) }},
		{name: "fail/bad-csr/garbage", code: protocol.BadCSR,
			csr: func(t *testing.T, r *rig) []byte {
				return []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
			}},
		{name: "fail/bad-csr/missing-and-not-pre-provisioned", code: protocol.BadCSR,
			csr: func(t *testing.T, r *rig) []byte { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.env, nil)
			if tt.prepare != nil {
				tt.prepare(t, r)
			}
			csr := testpki.CSR(t, r.dev.ID, nil)
			if tt.csr != nil {
				csr = tt.csr(t, r)
			}
			before := len(r.b.Reg.Certs)
			rep, acc, rej := r.get(t, csr, tt.mutate)
			if rej.Code != tt.code {
				t.Fatalf("reply %s %+v %+v, want %s", rep.Topic, acc, rej, tt.code)
			}
			if rej.ClientToken != "tok-1" || rej.Message == "" || rej.Retryable != tt.retryable {
				t.Errorf("rejected %+v, want retryable %v", rej, tt.retryable)
			}
			if len(r.b.Reg.Certs) != before {
				t.Errorf("a certificate was issued on rejection")
			}
		})
	}
}

func ack(t *testing.T, r *rig, certID, principal string) (protocol.AckAccepted, protocol.Rejected) {
	t.Helper()
	rep, err := r.b.Vendor().Handle(context.Background(), certvendor.Event{ThingName: r.dev.ID, Operation: "ack", Principal: principal, ClientID: r.dev.ID, JobID: job, ClientToken: "tok-a", CertificateID: certID})
	if err != nil {
		t.Fatal(err)
	}
	var a protocol.AckAccepted
	var j protocol.Rejected
	if strings.HasSuffix(rep.Topic, "/ack/accepted") {
		json.Unmarshal(rep.Payload, &a)
	} else if strings.HasSuffix(rep.Topic, "/ack/rejected") {
		json.Unmarshal(rep.Payload, &j)
	} else {
		t.Fatalf("topic %s", rep.Topic)
	}
	return a, j
}

func TestAck(t *testing.T) {
	for _, tc := range []struct{ setting, wantBootstrap string }{
		{"INACTIVE", ports.StatusInactive}, {"REVOKED", ports.StatusRevoked}, {"KEEP", ports.StatusActive},
	} {
		t.Run("ok/bootstrap-"+tc.setting, func(t *testing.T) {
			r := newRig(t, map[string]string{fleet.EnvBootstrapAfterRotation: tc.setting}, nil)
			_, acc, _ := r.get(t, testpki.CSR(t, r.dev.ID, nil), nil)
			// An ack over the old (bootstrap) certificate is refused and
			// changes nothing.
			_, j := ack(t, r, acc.CertificateID, r.dev.CertID)
			if j.Code != protocol.NotAllowed {
				t.Fatalf("ack over the old certificate: %+v", j)
			}
			if r.b.Reg.Status(acc.CertificateID) != ports.StatusActive || r.b.Reg.Status(r.dev.CertID) != ports.StatusActive || r.b.Reg.Attr(r.dev.ID, fleet.AttrOperational) != "" {
				t.Fatalf("refused ack changed state")
			}
			a, j := ack(t, r, acc.CertificateID, acc.CertificateID)
			if a.CertificateID != acc.CertificateID {
				t.Fatalf("ack: %+v %+v", a, j)
			}
			if got := r.b.Reg.Status(r.dev.CertID); got != tc.wantBootstrap {
				t.Errorf("bootstrap %s, want %s", got, tc.wantBootstrap)
			}
			if r.b.Reg.InGroup("bootcert-rotation", r.dev.ID) {
				t.Errorf("still in the rotation group")
			}
			if r.b.Reg.Attr(r.dev.ID, fleet.AttrOperational) != acc.CertificateID || r.b.Reg.Attr(r.dev.ID, fleet.AttrNotAfter) == "" {
				t.Errorf("thing attributes not updated")
			}
			// Retried ack: same answer.
			a2, _ := ack(t, r, acc.CertificateID, acc.CertificateID)
			if a2.CertificateID != acc.CertificateID {
				t.Errorf("retried ack: %+v", a2)
			}
		})
	}
	t.Run("fail/ack-for-certificate-not-issued-for-job", func(t *testing.T) {
		r := newRig(t, nil, nil)
		_, j := ack(t, r, r.dev.CertID, r.dev.CertID)
		if j.Code != protocol.NotAllowed {
			t.Fatalf("%+v", j)
		}
	})
}

func TestPreProvisioned(t *testing.T) {
	var csr []byte
	r := newRig(t, nil, func(d *testpki.Device) manifest.Entry {
		csr = testpki.DER(testpki.CSR(t, d.ID, nil))
		return manifest.Entry{DeviceID: d.ID, FinalCSR: csr}
	})
	obj, err := r.b.Store.Get(context.Background(), fleet.PackageKey(r.dev.ID, fleet.PreProvisionedName), "")
	if err != nil {
		t.Fatal(err)
	}
	final := obj.Metadata[fleet.MetaCertificateID]
	_, acc, rej := r.get(t, nil, nil)
	if acc.CertificateID != final {
		t.Fatalf("got %+v %+v, want the pre-provisioned %s", acc, rej, final)
	}
	if r.b.Reg.Status(final) != ports.StatusActive {
		t.Errorf("final certificate not activated")
	}
	_, again, _ := r.get(t, nil, nil)
	if again.CertificateID != final {
		t.Errorf("retry %q", again.CertificateID)
	}
	// The retry's location is the pre-provisioned package, like the first's
	// (it used to name packages/{thing}/{certificateId}.pem, never written).
	pkg := fleet.PackageKey(r.dev.ID, fleet.PreProvisionedName)
	if !strings.Contains(acc.Location, pkg) || !strings.Contains(again.Location, pkg) {
		t.Errorf("locations do not name %s", pkg)
	}
	a, j := ack(t, r, final, final)
	if a.CertificateID != final {
		t.Errorf("ack %+v %+v", a, j)
	}
}

func TestParseEvent(t *testing.T) {
	for name, in := range map[string]string{
		"fail/bad-thing":     `{"thingName":"a/b","operation":"get"}`,
		"fail/operation":     `{"thingName":"gw","operation":"delete"}`,
		"fail/wrong-type":    `{"thingName":"gw","csr":5}`,
		"fail/too-large":     `{"thingName":"gw","csr":"` + strings.Repeat("A", protocol.MaxPayload) + `"}`,
		"fail/trailing-data": `{"thingName":"gw"} {}`,
	} {
		if _, err := certvendor.ParseEvent([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	ev, err := certvendor.ParseEvent([]byte(`{"thingName":"gw","jobId":"j","clientToken":"c","csr":"x","principal":"p","clientId":"gw","receivedAt":1}`))
	if err != nil || ev.Operation != "get" {
		t.Errorf("ok/default-get: %+v %v", ev, err)
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add([]byte(`{"thingName":"gw-1","operation":"get","principal":"ab","clientId":"gw-1","jobId":"j","clientToken":"t","csr":"x"}`))
	f.Add([]byte(`{"thingName":"gw-1","operation":"ack","certificateId":"ab"}`))
	f.Add([]byte(`{"thingName":"+","operation":"get"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := certvendor.ParseEvent(b)
		if err != nil {
			return
		}
		if protocol.ValidThingName(ev.ThingName) != nil || (ev.Operation != "get" && ev.Operation != "ack") {
			t.Fatalf("accepted %+v", ev)
		}
	})
}

// racingStore lets another instance answer an identical request between
// this one's "already issued?" check and its issuance record write.
type racingStore struct {
	certvendor.Store
	before func()
}

func (s *racingStore) PutIfAbsent(ctx context.Context, key string, body []byte, meta map[string]string) error {
	if f := s.before; f != nil {
		s.before = nil
		f()
	}
	return s.Store.PutIfAbsent(ctx, key, body, meta)
}

// TestConcurrentGetLoserDeletesItsCertificate: of two instances handling the
// same get, the one that loses the conditional record write deletes the
// certificate it created and answers with the winner's.
func TestConcurrentGetLoserDeletesItsCertificate(t *testing.T) {
	r := newRig(t, nil, nil)
	csr := testpki.CSR(t, r.dev.ID, nil)
	ev := certvendor.Event{ThingName: r.dev.ID, Operation: "get", Principal: r.dev.CertID, ClientID: r.dev.ID, JobID: job, ClientToken: "tok-1", CSR: string(csr)}
	var winner certvendor.Reply
	loser := r.b.Vendor()
	loser.Store = &racingStore{Store: r.b.Store, before: func() {
		var err error
		if winner, err = r.b.Vendor().Handle(context.Background(), ev); err != nil {
			t.Fatalf("winner: %v", err)
		}
	}}
	lost, err := loser.Handle(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	var a, b protocol.GetAccepted
	json.Unmarshal(winner.Payload, &a)
	json.Unmarshal(lost.Payload, &b)
	if !strings.HasSuffix(lost.Topic, "/accepted") || a.CertificateID == "" || a.CertificateID != b.CertificateID {
		t.Fatalf("winner %s %s, loser %s %s", winner.Topic, a.CertificateID, lost.Topic, b.CertificateID)
	}
	var ids []string
	for id := range r.b.Reg.Certs {
		if id != r.dev.CertID {
			ids = append(ids, id)
		}
	}
	if len(ids) != 1 || ids[0] != a.CertificateID {
		t.Errorf("certificates besides the bootstrap one: %v, want only %s", ids, a.CertificateID)
	}
}

// describeCounter counts DescribeCertificate calls (the API the storm
// runs out of first, docs/cloud.md "Quotas").
type describeCounter struct {
	certvendor.Registry
	n int
}

func (c *describeCounter) DescribeCertificate(ctx context.Context, id string) (ports.Certificate, error) {
	c.n++
	return c.Registry.DescribeCertificate(ctx, id)
}

// A rotation costs three DescribeCertificate calls: the get describes the
// certificate used (the bootstrap one), the ack the new one and the
// bootstrap certificate once (its CRL check and the bootstrap-after-
// rotation step share the description).
func TestDescribeCertificateCalls(t *testing.T) {
	r := newRig(t, map[string]string{fleet.EnvBootstrapAfterRotation: "INACTIVE"}, nil)
	v := r.b.Vendor()
	cnt := &describeCounter{Registry: v.Registry}
	v.Registry = cnt
	lastCSR := string(testpki.CSR(t, r.dev.ID, nil))
	rep, err := v.Handle(context.Background(), certvendor.Event{ThingName: r.dev.ID, Operation: "get", Principal: r.dev.CertID, ClientID: r.dev.ID, JobID: job, ClientToken: "t", CSR: lastCSR})
	var acc protocol.GetAccepted
	if err != nil || json.Unmarshal(rep.Payload, &acc) != nil || acc.CertificateID == "" {
		t.Fatalf("get: %s %v", rep.Payload, err)
	}
	if cnt.n != 1 {
		t.Errorf("get: %d DescribeCertificate calls, want 1", cnt.n)
	}
	// The device asks again (its reply timeout): same answer, from S3,
	// no DescribeCertificate.
	cnt.n = 0
	csrEv := certvendor.Event{ThingName: r.dev.ID, Operation: "get", Principal: r.dev.CertID, ClientID: r.dev.ID, JobID: job, ClientToken: "t2"}
	rep, err = v.Handle(context.Background(), func() certvendor.Event { e := csrEv; e.CSR = lastCSR; return e }())
	var acc2 protocol.GetAccepted
	if err != nil || json.Unmarshal(rep.Payload, &acc2) != nil || acc2.CertificateID != acc.CertificateID || acc2.CertificatePEM != acc.CertificatePEM || acc2.Location == "" || acc2.ClientToken != "t2" {
		t.Fatalf("repeated get: %s %v", rep.Payload, err)
	}
	if cnt.n != 0 {
		t.Errorf("repeated get: %d DescribeCertificate calls, want 0", cnt.n)
	}
	cnt.n = 0
	rep, err = v.Handle(context.Background(), certvendor.Event{ThingName: r.dev.ID, Operation: "ack", Principal: acc.CertificateID, ClientID: r.dev.ID, JobID: job, ClientToken: "a", CertificateID: acc.CertificateID})
	if err != nil || !strings.HasSuffix(rep.Topic, "/ack/accepted") {
		t.Fatalf("ack: %s %s %v", rep.Topic, rep.Payload, err)
	}
	if cnt.n != 2 {
		t.Errorf("ack: %d DescribeCertificate calls, want 2", cnt.n)
	}
	if got := r.b.Reg.Status(r.dev.CertID); got != ports.StatusInactive {
		t.Errorf("bootstrap certificate %s after the ack, want INACTIVE", got)
	}
	// A repeated ack: accepted, no DescribeCertificate.
	cnt.n = 0
	rep, err = v.Handle(context.Background(), certvendor.Event{ThingName: r.dev.ID, Operation: "ack", Principal: acc.CertificateID, ClientID: r.dev.ID, JobID: job, ClientToken: "a2", CertificateID: acc.CertificateID})
	if err != nil || !strings.HasSuffix(rep.Topic, "/ack/accepted") {
		t.Fatalf("repeated ack: %s %s %v", rep.Topic, rep.Payload, err)
	}
	if cnt.n != 0 {
		t.Errorf("repeated ack: %d DescribeCertificate calls, want 0", cnt.n)
	}
	// The same CSR over another certificate is not a repeat: the full
	// checks refuse it (that certificate is not attached to the thing).
	other := r.b.CA.Issue(t, r.dev.ID, r.b.Clock.Now())
	r.b.Reg.AddCertificate(other.DER, ports.StatusActive)
	rep, err = v.Handle(context.Background(), certvendor.Event{ThingName: r.dev.ID, Operation: "get", Principal: other.CertID, ClientID: r.dev.ID, JobID: job, ClientToken: "t3", CSR: lastCSR})
	if err != nil || !strings.HasSuffix(rep.Topic, "/get/rejected") || !strings.Contains(string(rep.Payload), string(protocol.NotAllowed)) {
		t.Fatalf("same CSR over another certificate: %s %s %v", rep.Topic, rep.Payload, err)
	}
}
