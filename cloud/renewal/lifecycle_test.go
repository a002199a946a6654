package renewal_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/fake"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Ten simulated years of a fleet with AWS-like certificates (valid until
// 2049): the age trigger alone rotates every thing before MaxAge, and the
// number of rotations queued never exceeds the pace (Burst + rate*elapsed).
func TestTenYearsNeverOverAgeAndPaced(t *testing.T) {
	b := testbed.New(t, nil)
	ctx := context.Background()
	r := b.Renewal()
	r.Config.RotationsPerHour = 0.5
	r.Config.Burst = 3
	const n = 40
	start := b.Clock.Now()
	notAfter := time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
	var entries []manifest.Entry
	for i := range n {
		name := "gw-" + strconv.Itoa(i)
		// issued spread over the first year
		nb := start.Add(-time.Duration(i) * 365 * 24 * time.Hour / n)
		b.Reg.CreateThing(ctx, name, "bootcert-gateway", map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b",
			fleet.AttrOperational: "c0", fleet.AttrNotBefore: strconv.FormatInt(nb.Unix(), 10), fleet.AttrNotAfter: strconv.FormatInt(notAfter, 10)})
		entries = append(entries, manifest.Entry{DeviceID: name})
	}
	b.SetAllowList(entries...)
	type queued struct {
		at    time.Time
		thing string
	}
	var log []queued
	rotations := map[string]int{}
	step := 6 * time.Hour
	for b.Clock.Now().Before(start.Add(10 * 365 * 24 * time.Hour)) {
		b.Clock.Advance(step)
		now := b.Clock.Now()
		// rotations queued in the previous step complete now (a new
		// certificate, notBefore = now)
		for _, q := range log {
			th, _ := b.Reg.DescribeThing(ctx, q.thing)
			job := th.Attributes[renewal.AttrRotationJob]
			if st, _ := b.Reg.JobExecutionStatus(ctx, job, q.thing); st != protocol.JobQueued {
				continue
			}
			rotations[q.thing]++
			b.Reg.UpdateThingAttributes(ctx, q.thing, map[string]string{fleet.AttrOperational: "c" + strconv.Itoa(rotations[q.thing]),
				fleet.AttrNotBefore: strconv.FormatInt(now.Unix(), 10)})
			b.Reg.Jobs[q.thing+"/"+job] = protocol.JobSucceeded
			b.Reg.RemoveThingFromGroup(ctx, "bootcert-rotation", q.thing)
		}
		// no thing is over age
		for i := range n {
			th, _ := b.Reg.DescribeThing(ctx, "gw-"+strconv.Itoa(i))
			nb, _ := strconv.ParseInt(th.Attributes[fleet.AttrNotBefore], 10, 64)
			if age := now.Sub(time.Unix(nb, 0)); age > r.Config.MaxAge {
				t.Fatalf("%s: %s: certificate %v old, over MaxAge %v", now.Format(time.DateOnly), th.Name, age, r.Config.MaxAge)
			}
		}
		res, err := r.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range res.Added {
			log = append(log, queued{now, name})
		}
	}
	// pace: any window [log[i].at, log[j].at] holds at most Burst + rate*hours
	for i := range log {
		for j := i; j < len(log); j++ {
			h := log[j].at.Sub(log[i].at).Hours()
			if float64(j-i+1) > float64(r.Config.Burst)+r.Config.RotationsPerHour*h+1e-9 {
				t.Fatalf("%d rotations queued in %.0f h (from %s): over the pace %v/h, burst %d", j-i+1, h, log[i].at, r.Config.RotationsPerHour, r.Config.Burst)
			}
		}
	}
	total := 0
	for i := range n {
		k := rotations["gw-"+strconv.Itoa(i)]
		total += k
		if k < 10 || k > 12 {
			t.Errorf("gw-%d rotated %d times in 10 years, want 10-12 (MaxAge 365d, due from 90-95 %%)", i, k)
		}
	}
	t.Logf("%d rotations over 10 years for %d things, %d jobs", total, n, len(b.Reg.CreatedJobs))
	for _, j := range b.Reg.CreatedJobs {
		if len(j.Things) == 0 || len(j.Things) > renewal.WaveSize || !strings.HasPrefix(j.ID, "bootcert-r-") ||
			j.InProgressTimeout != time.Hour || j.MaxPerMinute != 100 || j.AbortThresholdPercent != 50 {
			t.Fatalf("job %+v", j)
		}
	}
}

func rotateEvent(thing, client, principal, extra string) json.RawMessage {
	return json.RawMessage(`{"clientToken":"t1","reason":"age"` + extra + `,"thingName":"` + thing + `","operation":"rotate","principal":"` + principal + `","clientId":"` + client + `","receivedAt":1}`)
}

func TestRotateRequest(t *testing.T) {
	b := testbed.New(t, nil)
	ctx := context.Background()
	r := b.Renewal()
	r.Config.Burst = 1
	r.Config.RotationsPerHour = 1
	now := b.Clock.Now()
	attrs := func(age time.Duration) map[string]string {
		return map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b", fleet.AttrOperational: "c",
			fleet.AttrNotBefore: strconv.FormatInt(now.Add(-age).Unix(), 10), fleet.AttrNotAfter: strconv.FormatInt(now.Add(20*365*24*time.Hour).Unix(), 10)}
	}
	b.Reg.CreateThing(ctx, "gw-old", "bootcert-gateway", attrs(350*24*time.Hour))
	b.Reg.CreateThing(ctx, "gw-old2", "bootcert-gateway", attrs(350*24*time.Hour))
	b.Reg.CreateThing(ctx, "gw-young", "bootcert-gateway", attrs(24*time.Hour))
	for _, n := range []string{"gw-old", "gw-old2", "gw-young"} {
		b.Reg.Certs["p-"+n] = &ports.Certificate{ID: "p-" + n, ARN: fake.ARNPrefix + "cert/p-" + n, Status: ports.StatusActive}
		if err := b.Reg.AttachThingPrincipal(ctx, n, fake.ARNPrefix+"cert/p-"+n); err != nil {
			t.Fatal(err)
		}
	}
	b.SetAllowList(manifest.Entry{DeviceID: "gw-old"}, manifest.Entry{DeviceID: "gw-old2"}, manifest.Entry{DeviceID: "gw-young"})
	handle := func(ev json.RawMessage) (string, map[string]any) {
		t.Helper()
		rep, err := r.HandleRotate(ctx, ev)
		if err != nil {
			t.Fatal(err)
		}
		var p map[string]any
		json.Unmarshal(rep.Payload, &p)
		return rep.Topic, p
	}
	// accepted: a job is queued, the thing joins the rotation group
	topic, p := handle(rotateEvent("gw-old", "gw-old", "p-gw-old", ""))
	if topic != "certificates/gw-old/rotate/accepted" || !strings.HasPrefix(p["jobId"].(string), "bootcert-r-") {
		t.Fatalf("%s %v", topic, p)
	}
	if !b.Reg.InGroup("bootcert-rotation", "gw-old") || len(b.Reg.CreatedJobs) != 1 {
		t.Fatal("no rotation queued")
	}
	// asked again: the same job, nothing new (idempotent)
	if topic, p2 := handle(rotateEvent("gw-old", "gw-old", "p-gw-old", "")); topic != "certificates/gw-old/rotate/accepted" || p2["jobId"] != p["jobId"] || len(b.Reg.CreatedJobs) != 1 {
		t.Fatalf("second request: %s %v, %d jobs", topic, p2, len(b.Reg.CreatedJobs))
	}
	// the bucket (1 token) is empty: throttled, retryable
	if topic, p := handle(rotateEvent("gw-old2", "gw-old2", "p-gw-old2", "")); topic != "certificates/gw-old2/rotate/rejected" || p["code"] != "THROTTLED" || p["retryable"] != true {
		t.Fatalf("over the pace: %s %v", topic, p)
	}
	// an hour later it has a token
	b.Clock.Advance(time.Hour)
	if topic, _ := handle(rotateEvent("gw-old2", "gw-old2", "p-gw-old2", "")); topic != "certificates/gw-old2/rotate/accepted" {
		t.Fatalf("after refill: %s", topic)
	}
	// refused: another device's client ID, a principal not attached, a
	// case-variant identity key; nothing is queued and the reply goes to the
	// broker-vouched thing only
	b.Clock.Advance(time.Hour)
	for _, ev := range []json.RawMessage{
		rotateEvent("gw-young", "gw-old", "p-gw-young", ""),
		rotateEvent("gw-young", "gw-young", "p-gw-old", ""),
		rotateEvent("gw-young", "gw-young", "p-gw-young", `,"thingname":"gw-old"`),
	} {
		if topic, p := handle(ev); topic != "certificates/gw-young/rotate/rejected" || p["code"] != "NOT_ALLOWED" {
			t.Errorf("%s: %s %v", ev, topic, p)
		}
	}
	if len(b.Reg.CreatedJobs) != 2 {
		t.Fatalf("%d jobs after refused requests, want 2", len(b.Reg.CreatedJobs))
	}
	// a young certificate: one accepted request per RequestInterval
	if topic, _ := handle(rotateEvent("gw-young", "gw-young", "p-gw-young", "")); topic != "certificates/gw-young/rotate/accepted" {
		t.Fatalf("young, first request: %s", topic)
	}
	job := b.Reg.CreatedJobs[2].ID
	b.Reg.Jobs["gw-young/"+job] = protocol.JobFailed
	b.Reg.RemoveThingFromGroup(ctx, "bootcert-rotation", "gw-young")
	b.Clock.Advance(2 * time.Hour)
	if topic, p := handle(rotateEvent("gw-young", "gw-young", "p-gw-young", "")); topic != "certificates/gw-young/rotate/rejected" || p["code"] != "NOT_ALLOWED" {
		t.Fatalf("young, again within the interval: %s %v", topic, p)
	}
	for _, m := range b.Pub.Msgs {
		if !strings.HasPrefix(m.Topic, "certificates/gw-old/") && !strings.HasPrefix(m.Topic, "certificates/gw-old2/") && !strings.HasPrefix(m.Topic, "certificates/gw-young/") {
			t.Errorf("published on %s", m.Topic)
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	c, err := renewal.ConfigFromEnv(func(k string) string {
		return map[string]string{renewal.EnvMaxCertificateAge: "90d", renewal.EnvRotationsPerHour: "120", renewal.EnvJobTimeout: "30m"}[k]
	})
	if err != nil || c.MaxAge != 90*24*time.Hour || c.RotationsPerHour != 120 || c.Burst != 10 || c.JobTimeout != 30*time.Minute {
		t.Fatalf("%+v %v", c, err)
	}
	for k, v := range map[string]string{renewal.EnvMaxCertificateAge: "a year", renewal.EnvRotationsPerHour: "0",
		renewal.EnvJobTimeout: "8d", renewal.EnvJobRolloutPerMinute: "1001", renewal.EnvJobAbortPercent: "101"} {
		if _, err := renewal.ConfigFromEnv(func(x string) string {
			if x == k {
				return v
			}
			return ""
		}); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: %v", k, v, err)
		}
	}
}

// A fleet due at once is queued at the pace: Burst now, RotationsPerHour
// per hour after, the oldest certificates first, the rest deferred.
func TestScanPace(t *testing.T) {
	b := testbed.New(t, nil)
	ctx := context.Background()
	r := b.Renewal()
	r.Config.Burst, r.Config.RotationsPerHour = 3, 2
	now := b.Clock.Now()
	var entries []manifest.Entry
	for i := range 10 {
		name := "gw-" + strconv.Itoa(i)
		b.Reg.CreateThing(ctx, name, "bootcert-gateway", map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b", fleet.AttrOperational: "c",
			fleet.AttrNotBefore: strconv.FormatInt(now.Add(-time.Duration(400+i)*24*time.Hour).Unix(), 10), fleet.AttrNotAfter: strconv.FormatInt(now.Add(9000*24*time.Hour).Unix(), 10)})
		entries = append(entries, manifest.Entry{DeviceID: name})
	}
	b.SetAllowList(entries...)
	res, err := r.Run(ctx)
	if err != nil || strings.Join(res.Added, ",") != "gw-9,gw-8,gw-7" || res.Deferred != 7 || len(res.Jobs) != 1 {
		t.Fatalf("first run: %+v %v", res, err)
	}
	res, _ = r.Run(ctx)
	if len(res.Added) != 0 || res.Pending != 3 || res.Deferred != 7 {
		t.Fatalf("second run at once: %+v", res)
	}
	b.Clock.Advance(time.Hour)
	res, _ = r.Run(ctx)
	if strings.Join(res.Added, ",") != "gw-6,gw-5" {
		t.Fatalf("an hour later: %+v", res)
	}
}

// cloud rotate's mark: due until a certificate issued after it.
func TestOperatorRequest(t *testing.T) {
	b := testbed.New(t, nil)
	r := b.Renewal()
	now := b.Clock.Now()
	attrs := map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b", fleet.AttrOperational: "c",
		fleet.AttrNotBefore: strconv.FormatInt(now.Add(-24*time.Hour).Unix(), 10), fleet.AttrNotAfter: strconv.FormatInt(now.Add(9000*24*time.Hour).Unix(), 10)}
	if r.Due("gw-1", attrs, now) {
		t.Fatal("a day-old certificate is due")
	}
	attrs[renewal.AttrRotationRequested] = strconv.FormatInt(now.Unix(), 10)
	if !r.Due("gw-1", attrs, now) {
		t.Fatal("requested, not due")
	}
	attrs[fleet.AttrNotBefore] = strconv.FormatInt(now.Add(time.Hour).Unix(), 10)
	if r.Due("gw-1", attrs, now.Add(2*time.Hour)) {
		t.Fatal("still due after a certificate issued after the request")
	}
}
