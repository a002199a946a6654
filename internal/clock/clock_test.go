package clock

import (
	"runtime/debug"
	"testing"
	"time"
)

func TestFakeFiresInOrderWhenDue(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	late, early := f.After(2*time.Second), f.After(time.Second)
	if n := f.Waiters(); n != 2 {
		t.Fatalf("Waiters = %d, want 2", n)
	}
	f.Advance(999 * time.Millisecond)
	select {
	case <-early:
		t.Fatal("fired before its deadline")
	default:
	}
	f.Advance(time.Millisecond)
	if got := <-early; !got.Equal(t0.Add(time.Second)) {
		t.Fatalf("early fired with %v", got)
	}
	select {
	case <-late:
		t.Fatal("late fired early")
	default:
	}
	f.Set(t0.Add(time.Hour))
	<-late
	if f.Waiters() != 0 {
		t.Fatalf("waiters left: %d", f.Waiters())
	}
	if !f.Now().Equal(t0.Add(time.Hour)) {
		t.Fatalf("Now = %v", f.Now())
	}
}

func TestFakeZeroDurationFiresAtOnce(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	select {
	case <-f.After(0):
	default:
		t.Fatal("After(0) did not fire")
	}
}

func TestWaitForWaiters(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	go func() { time.Sleep(10 * time.Millisecond); f.After(time.Minute) }()
	if !f.WaitForWaiters(1, 5*time.Second) {
		t.Fatal("waiter never registered")
	}
	if f.WaitForWaiters(2, 20*time.Millisecond) {
		t.Fatal("reported 2 waiters, have 1")
	}
}

var _ Clock = Real{}
var _ Clock = (*Fake)(nil)

func TestJumpKeepsTimersRunning(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(t0)
	w := f.After(3 * time.Second)
	f.Jump(-24 * time.Hour)
	if got := f.Now(); !got.Equal(t0.Add(-24 * time.Hour)) {
		t.Fatalf("Now after a jump back = %v", got)
	}
	f.Advance(2 * time.Second)
	select {
	case <-w:
		t.Fatal("a jump back made the waiter fire early")
	default:
	}
	f.Jump(48 * time.Hour) // forward: nothing fires either
	select {
	case <-w:
		t.Fatal("a jump forward fired the waiter")
	default:
	}
	f.Advance(time.Second)
	if got := <-w; !got.Equal(t0.Add(24*time.Hour + 3*time.Second)) {
		t.Fatalf("fired with %v", got)
	}
}

func TestFloorFromBuildInfo(t *testing.T) {
	min := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name, vcsTime string
		want          time.Time
	}{
		{"ok/later commit raises it", "2027-03-04T05:06:07Z", time.Date(2027, 3, 4, 5, 6, 7, 0, time.UTC)},
		{"ok/earlier commit keeps the constant", "2025-01-01T00:00:00Z", min},
		{"fail/unparsable keeps the constant", "yesterday", min},
		{"ok/no vcs info", "", min},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bi := &debug.BuildInfo{}
			if tc.vcsTime != "" {
				bi.Settings = []debug.BuildSetting{{Key: "vcs.time", Value: tc.vcsTime}}
			}
			if got := floorFrom(bi, min); !got.Equal(tc.want) {
				t.Fatalf("floorFrom = %v, want %v", got, tc.want)
			}
		})
	}
	if Floor().Before(FloorDate) {
		t.Fatalf("Floor %v before FloorDate %v", Floor(), FloorDate)
	}
}
