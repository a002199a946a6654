package engine

import (
	"testing"
	"time"

	"github.com/bootcert/bootcert/protocol"
)

// The counters behind the metrics (daemon/metrics) follow rotations,
// refusals and fallbacks, each counted once.
func TestCounters(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true
	r.start()
	s := r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
	if s.Counters.Connects != 1 || s.Counters.Refusals != 0 || len(s.Counters.Rotations) != 0 || s.Counters.Since.IsZero() {
		t.Errorf("after the first connect: %+v", s.Counters)
	}
	if !s.Recovery.Bootstrap || !s.Recovery.BootstrapNotAfter.Equal(r.cfg.Bootstrap[0].NotAfter) || s.Recovery.Left(r.clock.Now()) != 1 {
		t.Errorf("recovery %+v", s.Recovery)
	}
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.cloud.queueJob("rot-2")
	s = r.waitFor("generation 2", operational(2))
	if got := s.Counters.Rotations[protocol.JobSucceeded]; got != 2 || len(s.Counters.Rotations) != 1 {
		t.Errorf("rotations %v, want 2 SUCCEEDED", s.Counters.Rotations)
	}
	if s.Counters.LastSuccess.IsZero() || !s.Counters.LastSuccess.Equal(s.LastResultAt) {
		t.Errorf("last success %v, last result at %v", s.Counters.LastSuccess, s.LastResultAt)
	}
	if s.Active.NotBefore.IsZero() || !s.Active.NotBefore.Before(s.Active.NotAfter) {
		t.Errorf("active not before %v", s.Active.NotBefore)
	}
	connects := s.Counters.Connects
	// the operational certificate revoked: a refusal, then a fallback
	r.cloud.revoke(s.Active.CertificateID)
	r.stop()
	r.clock.Advance(time.Second) // the restart is later than the last commit
	r.start()
	s = r.waitFor("bootstrap fallback", func(s Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	if s.Counters.Refusals != 1 || s.Counters.Fallbacks != 1 || s.Counters.Connects != 1 {
		t.Errorf("after the fallback (a new process: counters start again; before: %d connects): %+v", connects, s.Counters)
	}
	// a restart does not count the journal's old result again
	if len(s.Counters.Rotations) != 0 || s.Counters.LastSuccess.IsZero() {
		t.Errorf("after a restart: rotations %v, last success %v", s.Counters.Rotations, s.Counters.LastSuccess)
	}
}

// A rollback is counted as ROLLED_BACK, and every refusal of the new
// certificate is counted.
func TestCountersRollback(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true
	r.cloud.acceptNew = false
	r.start()
	r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
	r.cloud.queueJob("rot-1")
	s := r.waitFor("rollback", func(s Status) bool { return s.LastResult == "ROLLED_BACK" && s.Connection == "connected" })
	if s.Counters.Rotations[protocol.ResultRolledBack] != 1 || s.Counters.Refusals != 3 || !s.Counters.LastSuccess.IsZero() {
		t.Errorf("counters %+v", s.Counters)
	}
}
