package ports_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/internal/fake"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
)

func TestBackoff(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	throttled := fmt.Errorf("x: %w", ports.ErrThrottled)
	t.Run("ok/retries-until-success", func(t *testing.T) {
		c := clock.NewFake(start)
		fake.DriveClock(t, c, 10*time.Millisecond)
		n := 0
		err := ports.Backoff{Clock: c}.Do(context.Background(), "op", func() error {
			if n++; n < 5 {
				return throttled
			}
			return nil
		})
		if err != nil || n != 5 {
			t.Fatalf("err %v after %d calls", err, n)
		}
	})
	t.Run("ok/context-deadline-on-an-injected-clock", func(t *testing.T) {
		// the context's deadline is wall time; the clock is years away
		// from it: the retries get what is left of the deadline
		c := clock.NewFake(time.Now().AddDate(5, 0, 0))
		fake.DriveClock(t, c, 10*time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		n := 0
		err := ports.Backoff{Clock: c}.Do(ctx, "op", func() error {
			if n++; n < 3 {
				return throttled
			}
			return nil
		})
		if err != nil || n != 3 {
			t.Fatalf("err %v after %d calls", err, n)
		}
	})
	t.Run("ok/other-errors-not-retried", func(t *testing.T) {
		n := 0
		boom := errors.New("boom")
		err := ports.Backoff{Clock: clock.NewFake(start)}.Do(context.Background(), "op", func() error { n++; return boom })
		if !errors.Is(err, boom) || n != 1 {
			t.Fatalf("err %v after %d calls", err, n)
		}
	})
	t.Run("fail/gives-up-before-the-deadline", func(t *testing.T) {
		start := time.Now() // the context's deadline runs on the real clock
		c := clock.NewFake(start)
		fake.DriveClock(t, c, 10*time.Millisecond)
		ctx, cancel := context.WithDeadline(context.Background(), start.Add(3*time.Second))
		defer cancel()
		n := 0
		err := ports.Backoff{Clock: c, Rand: func(n int64) int64 { return n - 1 }}.Do(ctx, "op", func() error { n++; return throttled })
		if !errors.Is(err, ports.ErrThrottled) {
			t.Fatalf("err %v", err)
		}
		if c.Now().After(start.Add(3*time.Second - 500*time.Millisecond)) {
			t.Errorf("slept past the margin: %v", c.Now().Sub(start))
		}
		// Full jitter with the maximum draw: 50+100+200+400+800 ms = 1.55 s,
		// then 1.6 s would pass the 2.5 s budget.
		if n != 6 {
			t.Errorf("%d calls, want 6", n)
		}
	})
	t.Run("ok/caps-the-wait", func(t *testing.T) {
		c := clock.NewFake(start)
		fake.DriveClock(t, c, 10*time.Millisecond)
		var waits []time.Duration
		last := start
		n := 0
		ports.Backoff{Clock: c, Budget: time.Hour, Max: 400 * time.Millisecond, Rand: func(n int64) int64 { return n - 1 }}.Do(context.Background(), "op", func() error {
			waits = append(waits, c.Now().Sub(last))
			last = c.Now()
			if n++; n < 8 {
				return throttled
			}
			return nil
		})
		// The maximum draw waits exactly each cap: 50, 100, 200, then 400 ms.
		want := []time.Duration{0, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond,
			400 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond}
		if !slices.Equal(waits, want) {
			t.Fatalf("waited %v, want %v", waits, want)
		}
	})
}

func TestRetryingRegistry(t *testing.T) {
	r := fake.NewRegistry()
	r.CreateThing(context.Background(), "gw", "", nil)
	r.Throttle = 3
	c := clock.NewFake(time.Unix(0, 0))
	fake.DriveClock(t, c, 10*time.Millisecond)
	reg := ports.RetryingRegistry(r, ports.Backoff{Clock: c})
	if _, err := reg.DescribeThing(context.Background(), "gw"); err != nil {
		t.Fatal(err)
	}
	if r.Calls != 5 { // CreateThing + 3 throttled + 1
		t.Errorf("%d calls", r.Calls)
	}
}
