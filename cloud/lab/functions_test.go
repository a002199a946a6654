package lab

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
)

func testInvoker(t *testing.T, clk clock.Clock, workers int) *invoker {
	t.Helper()
	iv := newInvoker(slog.New(slog.NewTextHandler(io.Discard, nil)), clk, workers, 1024, 5*time.Second)
	t.Cleanup(iv.close)
	return iv
}

// waitFor polls cond (real time) for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// One function's backlog does not delay another's events: Slow has one
// worker (reserved concurrency 1) blocked with 100 events behind it, and
// Fast's event still runs at once.
func TestInvokerBacklogIsPerFunction(t *testing.T) {
	iv := testInvoker(t, clock.Real{}, 1) // one shared worker was the old lab's worst case
	release := make(chan struct{})
	var slowRuns atomic.Int64
	iv.set("Slow", func(ctx context.Context, _ json.RawMessage) (json.RawMessage, error) {
		slowRuns.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil
	})
	iv.setConcurrency("Slow", 1)
	fast := make(chan struct{}, 1)
	iv.set("Fast", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		fast <- struct{}{}
		return nil, nil
	})
	for i := 0; i < 100; i++ {
		if err := iv.InvokeAsync("Slow", nil, "test"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the first Slow invocation", func() bool { return slowRuns.Load() == 1 })
	if err := iv.InvokeAsync("Fast", nil, "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fast:
	case <-time.After(5 * time.Second):
		t.Fatal("Fast waited behind Slow's backlog")
	}
	if n := slowRuns.Load(); n != 1 {
		t.Errorf("Slow ran %d at once with reserved concurrency 1", n)
	}
	st := iv.snapshot()
	if st["Slow"].Concurrency != 1 || st["Slow"].Queued != 99 || st["Fast"].Concurrency != 1 {
		t.Errorf("stats %+v", st)
	}
	close(release)
	waitFor(t, "Slow's backlog", func() bool { return slowRuns.Load() == 100 })
}

// Reserved concurrency bounds a function's parallel invocations.
func TestInvokerReservedConcurrency(t *testing.T) {
	iv := testInvoker(t, clock.Real{}, 8)
	var running, most atomic.Int64
	release := make(chan struct{})
	iv.set("F", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		n := running.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return nil, nil
	})
	iv.setConcurrency("F", 3)
	for i := 0; i < 20; i++ {
		if err := iv.InvokeAsync("F", nil, "test"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "3 running", func() bool { return running.Load() == 3 })
	time.Sleep(50 * time.Millisecond)
	if m := most.Load(); m != 3 {
		t.Errorf("%d ran at once, want 3", m)
	}
	close(release)
}

// A failing asynchronous invocation runs three times in all, as Lambda's:
// a retry after one minute, another after two more, then never again.
func TestInvokerAsyncRetry(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC))
	iv := testInvoker(t, clk, 4)
	var runs atomic.Int64
	iv.set("Fails", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		runs.Add(1)
		return nil, errors.New("boom")
	})
	if err := iv.InvokeAsync("Fails", nil, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first attempt", func() bool { return runs.Load() == 1 })
	if !clk.WaitForWaiters(1, 5*time.Second) {
		t.Fatal("no retry scheduled")
	}
	clk.Advance(59 * time.Second)
	time.Sleep(20 * time.Millisecond)
	if n := runs.Load(); n != 1 {
		t.Fatalf("retried after 59 s (%d runs), want after 1 minute", n)
	}
	clk.Advance(time.Second)
	waitFor(t, "the first retry", func() bool { return runs.Load() == 2 })
	if !clk.WaitForWaiters(1, 5*time.Second) {
		t.Fatal("no second retry scheduled")
	}
	clk.Advance(2 * time.Minute)
	waitFor(t, "the second retry", func() bool { return runs.Load() == 3 })
	time.Sleep(20 * time.Millisecond)
	if w := clk.Waiters(); w != 0 {
		t.Errorf("%d waiters after the second retry, want none (no third retry)", w)
	}
	clk.Advance(time.Hour)
	time.Sleep(20 * time.Millisecond)
	if n := runs.Load(); n != 3 {
		t.Errorf("%d attempts, want 3 (two retries)", n)
	}
	if st := iv.snapshot()["Fails"]; st.Invocations != 3 || st.Errors != 3 || st.Retries != 2 {
		t.Errorf("stats %+v", st)
	}

	// A success is not retried.
	var ok atomic.Int64
	iv.set("Works", func(context.Context, json.RawMessage) (json.RawMessage, error) { ok.Add(1); return nil, nil })
	if err := iv.InvokeAsync("Works", nil, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Works", func() bool { return ok.Load() == 1 })
	time.Sleep(20 * time.Millisecond)
	if w := clk.Waiters(); w != 0 {
		t.Errorf("a successful invocation scheduled %d retries", w)
	}
}

// An event older than the maximum event age is dropped, not run: here a
// retry that comes due after the age has passed.
func TestInvokerMaxEventAge(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC))
	iv := testInvoker(t, clk, 4)
	var runs atomic.Int64
	iv.set("Fails", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		runs.Add(1)
		return nil, errors.New("boom")
	})
	iv.setAsyncConfig("Fails", -1, 90*time.Second)
	if err := iv.InvokeAsync("Fails", nil, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first attempt", func() bool { return runs.Load() == 1 })
	clk.WaitForWaiters(1, 5*time.Second)
	clk.Advance(time.Minute)
	waitFor(t, "the first retry", func() bool { return runs.Load() == 2 })
	clk.WaitForWaiters(1, 5*time.Second)
	clk.Advance(2 * time.Minute) // the event is now 3 minutes old
	waitFor(t, "the expiry", func() bool { return iv.snapshot()["Fails"].Expired == 1 })
	if n := runs.Load(); n != 2 {
		t.Errorf("%d attempts, want 2 (the second retry came after the maximum age)", n)
	}
	// MaximumRetryAttempts 0: no retry.
	var once atomic.Int64
	iv.set("NoRetry", func(context.Context, json.RawMessage) (json.RawMessage, error) {
		once.Add(1)
		return nil, errors.New("boom")
	})
	iv.setAsyncConfig("NoRetry", 0, 0)
	if err := iv.InvokeAsync("NoRetry", nil, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "NoRetry", func() bool { return iv.snapshot()["NoRetry"].Errors == 1 })
	time.Sleep(20 * time.Millisecond)
	if w := clk.Waiters(); w != 0 || once.Load() != 1 {
		t.Errorf("MaximumRetryAttempts 0: %d waiters, %d runs", w, once.Load())
	}
}

// A synchronous invocation runs at once even while the function's
// asynchronous workers are all busy, returns the function's result and
// error, and is never retried.
func TestInvokerSyncUnchanged(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC))
	iv := testInvoker(t, clk, 4)
	release := make(chan struct{})
	defer close(release)
	var calls atomic.Int64
	iv.set("F", func(_ context.Context, ev json.RawMessage) (json.RawMessage, error) {
		calls.Add(1)
		switch string(ev) {
		case `"block"`:
			<-release
		case `"fail"`:
			return json.RawMessage(`{"errorMessage":"no"}`), errors.New("no")
		}
		return json.RawMessage(`{"echo":` + string(ev) + `}`), nil
	})
	iv.setConcurrency("F", 1)
	if err := iv.InvokeAsync("F", json.RawMessage(`"block"`), "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the async worker busy", func() bool { return calls.Load() == 1 })
	out, err := iv.Invoke(context.Background(), "F", json.RawMessage(`"x"`), "test")
	if err != nil || string(out) != `{"echo":"x"}` {
		t.Fatalf("Invoke = %s, %v", out, err)
	}
	out, err = iv.Invoke(context.Background(), "F", json.RawMessage(`"fail"`), "test")
	if err == nil || string(out) != `{"errorMessage":"no"}` {
		t.Fatalf("failing Invoke = %s, %v", out, err)
	}
	time.Sleep(20 * time.Millisecond)
	if w := clk.Waiters(); w != 0 {
		t.Errorf("a failed synchronous invocation scheduled %d retries", w)
	}
	if _, err := iv.Invoke(context.Background(), "Missing", nil, "test"); !errors.Is(err, ErrNoFunction) {
		t.Errorf("missing function: %v", err)
	}
}
