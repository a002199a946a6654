package engine

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testkit"
)

// TestReconfigureWaitsForRotation: settings handed over during a rotation
// (a reload that moves the broker) are not applied until the rotation has
// committed; then the session ends and the engine reconnects at once with
// the new credential, not a new one, and the status shows the new endpoint.
func TestReconfigureWaitsForRotation(t *testing.T) {
	r := newRig(t)
	r.cfg.ReplyTimeout = 50 * time.Millisecond
	r.cloud.dropGets = 1 // the rotation waits on its retry timer (fake clock)
	r.start()
	r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	r.cloud.queueJob("rot-1")
	r.waitFor("the certificate request sent", func(s Status) bool {
		r.cloud.mu.Lock()
		defer r.cloud.mu.Unlock()
		return s.Phase == journal.KeyStaged && len(r.cloud.csrs) == 1
	})
	dials := r.cloud.dialCount()
	var appliedIn atomic.Value
	var done atomic.Bool
	t2 := Tunables{Endpoint: "broker2.test", ReplyTimeout: r.cfg.ReplyTimeout, Backoff: r.cfg.Backoff,
		RollbackRefusals: 3, RollbackWindow: time.Minute, FallbackToBoot: true, Reconnect: true,
		Apply: func() { appliedIn.Store(r.eng.journal.Current().Phase) }, Done: func() { done.Store(true) }}
	r.eng.Reconfigure(t2)
	// the engine has taken the wake-up, and left the settings pending
	if !testkit.Poll(10*time.Second, func() bool { return len(r.eng.reload.wake) == 0 }) {
		t.Fatal("the engine did not look at the new settings")
	}
	if !r.eng.ReconfigurePending() || appliedIn.Load() != nil || r.eng.Status().Endpoint != "broker.test" || r.cloud.dialCount() != dials {
		t.Fatalf("settings applied during the rotation: pending %v, applied in %v, endpoint %s, dials %d -> %d",
			r.eng.ReconfigurePending(), appliedIn.Load(), r.eng.Status().Endpoint, dials, r.cloud.dialCount())
	}
	// the retry fires: the rotation goes on to its commit
	r.clock.Advance(r.cfg.ReplyTimeout + r.cfg.Backoff.Max)
	s := r.waitFor("generation 1 at the new endpoint", func(s Status) bool { return operational(1)(s) && s.Endpoint == "broker2.test" && done.Load() })
	if got := appliedIn.Load(); got != journal.Idle {
		t.Errorf("settings applied in phase %v, want idle", got)
	}
	if s.LastResult != "SUCCEEDED" || r.eng.ReconfigurePending() {
		t.Errorf("after the rotation: %+v, pending %v", s, r.eng.ReconfigurePending())
	}
	// switch reconnect + the reload's reconnect, both with generation 1
	testkit.Poll(10*time.Second, func() bool { return r.cloud.dialCount() >= dials+2 && operational(1)(r.eng.Status()) })
	if got := r.cloud.dialCount(); got < dials+2 {
		t.Errorf("dials %d -> %d: want the switch's reconnect and the reload's", dials, got)
	}
	r.cloud.mu.Lock()
	issued := len(r.cloud.issued)
	r.cloud.mu.Unlock()
	if issued != 1 {
		t.Errorf("%d certificates issued, want 1: a reload makes no new credential", issued)
	}
}
