package ports_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/limits"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
)

// The functions pace at the lab preset's rates: the two tables are one.
func TestDefaultQuotasMatchLab(t *testing.T) {
	lab := limits.AWSDefault()
	for op, r := range ports.DefaultQuotas {
		if got := lab.APIRate(op); got != r {
			t.Errorf("%s: ports.DefaultQuotas %g, lab aws-default %g", op, r, got)
		}
	}
}

func TestQuotaShareFromEnv(t *testing.T) {
	for v, want := range map[string]float64{"": 0, "0.0625": 0.0625, "10": 10} {
		got, err := ports.QuotaShareFromEnv(func(string) string { return v })
		if err != nil || got != want {
			t.Errorf("%q: %g %v, want %g", v, got, err, want)
		}
	}
	for _, v := range []string{"0", "-1", "x", "NaN", "1e9"} {
		if _, err := ports.QuotaShareFromEnv(func(string) string { return v }); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

// Concurrent callers leave one per interval, in turn: of 10 calls at 5/s
// one goes at once and the others wait for turns 200 ms apart, each timer
// firing alone (the fake clock's waiters drop by one per 200 ms).
func TestPacerSpacesCalls(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	p := ports.NewPacer(clk, map[string]float64{"DescribeCertificate": 5})
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Wait(context.Background(), "DescribeCertificate"); err != nil {
				t.Error(err)
			}
		}()
	}
	if !clk.WaitForWaiters(9, 5*time.Second) {
		t.Fatalf("%d waiters, want 9", clk.Waiters())
	}
	// Unpaced operations never wait.
	if err := p.Wait(context.Background(), "CreateThing"); err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= 9; k++ {
		clk.Advance(199 * time.Millisecond)
		if w := clk.Waiters(); w != 10-k {
			t.Fatalf("after %d ms: %d waiters, want %d", 200*k-1, w, 10-k)
		}
		clk.Advance(time.Millisecond)
		if w := clk.Waiters(); w != 9-k {
			t.Fatalf("after %d ms: %d waiters, want %d", 200*k, w, 9-k)
		}
	}
	wg.Wait()
	if s := p.Stats(); s.Waited["DescribeCertificate"] != 9*time.Second {
		t.Errorf("waited %v, want 9s (0.2+0.4+...+1.8)", s.Waited)
	}
}

// A turn after the deadline is refused at once as throttled, and does not
// use up a turn.
func TestPacerRefusesPastDeadline(t *testing.T) {
	clk := clock.NewFake(time.Now())
	p := ports.NewPacer(clk, map[string]float64{"DescribeCertificate": 1})
	p.Margin = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ { // turns now and in 1 s: both before the deadline
		go p.Wait(ctx, "DescribeCertificate")
	}
	if !clk.WaitForWaiters(1, 5*time.Second) { // the second waits for its turn
		t.Fatal("no waiter")
	}
	err := p.Wait(ctx, "DescribeCertificate") // turn in 2 s: past it
	if !errors.Is(err, ports.ErrThrottled) {
		t.Fatalf("got %v, want throttled", err)
	}
	if s := p.Stats(); s.Refused["DescribeCertificate"] != 1 {
		t.Errorf("stats %+v", s)
	}
	// The refused call took no turn: with a later deadline the next turn
	// is still 2 s away.
	ctx2, cancel2 := context.WithTimeout(context.Background(), time.Minute)
	defer cancel2()
	done := make(chan error, 1)
	go func() { done <- p.Wait(ctx2, "DescribeCertificate") }()
	if !clk.WaitForWaiters(2, 5*time.Second) {
		t.Fatal("no waiter")
	}
	clk.Advance(1999 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("turn came early")
	case <-time.After(20 * time.Millisecond):
	}
	clk.Advance(time.Millisecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
