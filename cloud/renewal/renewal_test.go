package renewal_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testbed"
	"github.com/bootcert/bootcert/manifest"
)

func TestRenewal(t *testing.T) {
	b := testbed.New(t, map[string]string{fleet.EnvRenewalJitter: "0"})
	ctx := context.Background()
	now := b.Clock.Now()
	year := 365 * 24 * time.Hour
	valid := func(nb time.Time, life time.Duration) map[string]string {
		return map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b", fleet.AttrOperational: "c",
			fleet.AttrNotBefore: strconv.FormatInt(nb.Unix(), 10), fleet.AttrNotAfter: strconv.FormatInt(nb.Add(life).Unix(), 10)}
	}
	things := map[string]map[string]string{
		"gw-fresh":         valid(now.Add(-time.Hour), year),
		"gw-due":           valid(now.Add(-300*24*time.Hour), year),
		"gw-expired":       valid(now.Add(-2*year), year),
		"gw-never-rotated": {fleet.AttrActivated: "true", fleet.AttrBootstrap: "b"},
		"gw-not-activated": {fleet.AttrBootstrap: "b"},
		"gw-not-listed":    valid(now.Add(-300*24*time.Hour), year),
	}
	var entries []manifest.Entry
	for name, attrs := range things {
		b.Reg.CreateThing(ctx, name, "bootcert-gateway", attrs)
		if name != "gw-not-listed" {
			entries = append(entries, manifest.Entry{DeviceID: name})
		}
	}
	b.Reg.CreateThing(ctx, "other-type", "something-else", things["gw-due"])
	b.SetAllowList(entries...)
	res, err := b.Renewal().Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(res.Added)
	want := []string{"gw-due", "gw-expired", "gw-never-rotated"}
	if !slices.Equal(res.Added, want) || res.Scanned != len(things) {
		t.Fatalf("added %v (scanned %d), want %v", res.Added, res.Scanned, want)
	}
	for _, n := range want {
		if !b.Reg.InGroup("bootcert-rotation", n) {
			t.Errorf("%s not in the group", n)
		}
	}
}

func TestDueJitterIsStableAndBounded(t *testing.T) {
	b := testbed.New(t, map[string]string{fleet.EnvRenewalJitter: "0.1"})
	r := b.Renewal()
	nb := time.Unix(0, 0)
	attrs := map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b", fleet.AttrOperational: "c",
		fleet.AttrNotBefore: "0", fleet.AttrNotAfter: strconv.FormatInt(int64(900*time.Hour/time.Second), 10)}
	// Window [2/3 - 0.1, 2/3] of 900 h: never before 510 h, always after 600 h.
	again := b.Renewal()
	dueMid := 0
	for i := 0; i < 50; i++ {
		name := "gw-" + strconv.Itoa(i)
		if r.Due(name, attrs, nb.Add(509*time.Hour)) {
			t.Errorf("%s due before the jittered window", name)
		}
		if !r.Due(name, attrs, nb.Add(601*time.Hour)) {
			t.Errorf("%s not due inside the window", name)
		}
		mid := r.Due(name, attrs, nb.Add(550*time.Hour))
		if mid != again.Due(name, attrs, nb.Add(550*time.Hour)) {
			t.Errorf("%s: unstable", name)
		}
		if mid {
			dueMid++
		}
	}
	// Inside the window the jitter spreads the things: some are due, some not.
	if dueMid == 0 || dueMid == 50 {
		t.Errorf("%d of 50 things due in the middle of the window: no spread", dueMid)
	}
}

// TestRunDeadlineIsWallClock: the invocation's deadline (ctx) is real time;
// an injected clock far from it (the lab's clock.Fake moved years ahead)
// neither truncates a scan with minutes left nor lets one run past it.
func TestRunDeadlineIsWallClock(t *testing.T) {
	b := testbed.New(t, nil)
	ctx := context.Background()
	b.Reg.CreateThing(ctx, "gw-never-rotated", "bootcert-gateway", map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b"})
	b.SetAllowList(manifest.Entry{DeviceID: "gw-never-rotated"})
	b.Clock.Advance(3 * 365 * 24 * time.Hour)
	dctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	res, err := b.Renewal().Run(dctx)
	if err != nil || res.Truncated || res.Scanned != 1 || len(res.Added) != 1 {
		t.Fatalf("scan with 5 minutes left: %+v %v", res, err)
	}
	sctx, cancel2 := context.WithTimeout(ctx, 5*time.Second)
	defer cancel2()
	if res, err := b.Renewal().Run(sctx); err != nil || !res.Truncated || res.Scanned != 0 {
		t.Fatalf("scan with 5 seconds left: %+v %v, want truncated before the first page", res, err)
	}
}
