package clock

import (
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
