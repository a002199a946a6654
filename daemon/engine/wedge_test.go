package engine

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/protocol"
)

// ungrantedDoc is a job document that ParseJobDocument accepts (its topics
// are under certificates/{thingName}/) naming a get topic the policy does
// not grant.
func ungrantedDoc() json.RawMessage {
	d := protocol.DefaultJobDocument()
	d.Get = protocol.TopicPair{Publish: "certificates/{thingName}/get2", Subscribe: "certificates/{thingName}/get2/+"}
	b, _ := json.Marshal(d)
	return b
}

// settled: the wedging job ended FAILED with a reason naming why, the
// device is idle on its bootstrap credential with no staged key or
// generation left, and a valid rotation then succeeds.
func (r *rig) settled(job, reasonPart string) {
	r.t.Helper()
	s := r.waitFor("the job failed", func(s Status) bool {
		return s.Phase == journal.Idle && s.LastResult == protocol.JobFailed && s.Connection == "connected"
	})
	if !strings.Contains(s.LastReason, reasonPart) {
		r.t.Errorf("reason %q does not say %q", s.LastReason, reasonPart)
	}
	testkit.Eventually(r.t, 10*time.Second, func() bool { return contains2(r.cloud.jobUpdates(), job+" FAILED "+s.LastReason[:20]) },
		"job not reported FAILED with the reason")
	if s.Active.Generation != 0 || s.ConnectedWith != 0 {
		r.t.Errorf("credentials changed: %+v", s)
	}
	if fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) {
		r.t.Error("staged key left behind")
	}
	if gens, _ := r.eng.store.Generations(); len(gens) != 0 {
		r.t.Errorf("generations stored: %v", gens)
	}
	if j := r.journalOnDisk(); j.Phase != journal.Idle || j.Sessions != 0 || j.Denials != 0 {
		r.t.Errorf("journal %+v", j)
	}
	r.cloud.mu.Lock()
	r.cloud.deniedSubs, r.cloud.deniedPubs = nil, nil
	r.cloud.dropGets = 0
	r.cloud.mu.Unlock()
	r.cloud.queueJob("rot-good")
	r.waitFor("the next valid rotation", operational(2))
}

// TestWedgingJobs: a job whose document names topics the policy refuses, or
// whose requests are never answered, ends FAILED with a reason and its
// staged key destroyed, after few connects, instead of holding the device
// in a reconnect loop.
func TestWedgingJobs(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setup    func(*fakeCloud)
		reason   string
		maxDials int
	}{
		{"subscribe refused", func(f *fakeCloud) { f.deniedSubs = map[string]bool{"certificates/gw-1/get2/+": true} }, "SUBACK 0x80", 1},
		{"publish closes the connection", func(f *fakeCloud) { f.deniedPubs = map[string]bool{"certificates/gw-1/get2": true} }, "closed the connection right after the publish to certificates/gw-1/get2", 1 + deniedPublishes},
		{"never answered", func(f *fakeCloud) { f.dropGets = 1000 }, "sessions started in phase key-staged", 1 + 5 + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.timeFlies = true
			tc.setup(r.cloud)
			r.start()
			r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
			r.cloud.queueJobDoc("rot-wedge", ungrantedDoc())
			r.waitFor("the job failed", func(s Status) bool { return s.Phase == journal.Idle && s.LastResult == protocol.JobFailed })
			if n := r.cloud.dialCount(); n > tc.maxDials {
				t.Errorf("%d connects before the job failed, want <= %d", n, tc.maxDials)
			}
			if st := r.eng.Status(); !strings.Contains(st.LastRefusal+st.LastReason, tc.reason) {
				t.Errorf("status %+v does not say %q", st, tc.reason)
			}
			r.settled("rot-wedge", tc.reason)
		})
	}
}

// TestWedgeSurvivesRestart: the denials are journalled, so a daemon
// restarted between them does not start the loop again.
func TestWedgeSurvivesRestart(t *testing.T) {
	r := newRig(t)
	r.cloud.deniedPubs = map[string]bool{"certificates/gw-1/get2": true}
	r.cfg.Backoff = Backoff{Initial: time.Hour, Max: time.Hour, Rand: func() float64 { return 0.99 }}
	r.start()
	r.cloud.queueJobDoc("rot-wedge", ungrantedDoc())
	testkit.Eventually(t, 30*time.Second, func() bool { return r.journalOnDisk().Denials == 1 }, "no denial journalled")
	r.stop()
	r.start()
	r.waitFor("the job failed", func(s Status) bool { return s.Phase == journal.Idle && s.LastResult == protocol.JobFailed })
	if n := r.cloud.dialCount(); n > 4 {
		t.Errorf("%d connects across the restart", n)
	}
	r.settled("rot-wedge", "closed the connection")
}

// TestSessionBudgetAfterSwitch: a new certificate whose sessions die
// before the acknowledgement is answered is rolled back after
// PhaseSessions sessions, and the job reported FAILED.
func TestSessionBudgetAfterSwitch(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true
	r.cloud.deafNew = 1000 // sessions with the new certificate hear nothing
	r.cfg.ReplyTimeout = 50 * time.Millisecond
	r.start()
	r.cloud.queueJob("rot-1")
	s := r.waitFor("rollback", func(s Status) bool {
		return s.Phase == journal.Idle && s.LastResult == protocol.ResultRolledBack && s.ConnectedWith == 0
	})
	if !strings.Contains(s.LastReason, "sessions started in phase switched") {
		t.Errorf("reason %q", s.LastReason)
	}
	ups := r.cloud.jobUpdates()
	if last := ups[len(ups)-1]; !strings.HasPrefix(last, "rot-1 FAILED 6 sessions started in phase switched") {
		t.Errorf("job updates %v", ups)
	}
	if fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) {
		t.Error("rolled-back key not destroyed")
	}
}

// TestSwitchedAckRefused: the new certificate's policy refuses the ack
// subscription: rolled back at once, not looped.
func TestSwitchedAckRefused(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true
	r.cloud.deniedSubs = map[string]bool{"certificates/gw-1/ack/+": true}
	r.start()
	r.cloud.queueJob("rot-1")
	s := r.waitFor("rollback", func(s Status) bool {
		return s.Phase == journal.Idle && s.LastResult == protocol.ResultRolledBack && s.ConnectedWith == 0
	})
	if !strings.Contains(s.LastReason, "SUBACK 0x80") {
		t.Errorf("reason %q", s.LastReason)
	}
	if n := r.cloud.dialCount(); n > 4 {
		t.Errorf("%d connects", n)
	}
}

// TestCancelledExecution: a job execution cancelled (with force) or
// removed in the cloud mid-rotation ends the rotation cleanly: no report,
// staged key destroyed, credentials unchanged or rolled back; the next
// job rotates.
func TestCancelledExecution(t *testing.T) {
	for _, tc := range []struct {
		name   string
		phase  journal.Phase
		status protocol.JobStatus
	}{
		{"cancelled at key-staged", journal.KeyStaged, protocol.JobCanceled},
		{"removed at key-staged", journal.KeyStaged, protocol.JobRemoved},
		{"cancelled after the switch", journal.Switched, protocol.JobCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t) // time stands still: nothing is retried before the cancel
			if tc.phase == journal.KeyStaged {
				r.cloud.dropGets = 1 // the get goes unanswered: the rotation waits in key-staged
			} else {
				r.cloud.dropAcks = 1000
			}
			r.cfg.ReplyTimeout = time.Hour // no retry before the cancel
			r.start()
			r.cloud.queueJob("rot-1")
			r.waitFor(string(tc.phase), func(s Status) bool { return s.Phase == tc.phase })
			testkit.Eventually(t, 10*time.Second, func() bool {
				r.cloud.mu.Lock()
				defer r.cloud.mu.Unlock()
				return len(r.cloud.csrs) > 0
			}, "no certificate request")
			r.cloud.cancel("rot-1", tc.status)
			s := r.waitFor("the rotation ended", func(s Status) bool {
				return s.Phase == journal.Idle && s.LastResult == tc.status && s.Connection == "connected"
			})
			if s.Active.Generation != 0 || s.ConnectedWith != 0 || !strings.Contains(s.LastReason, "previous credentials kept") {
				t.Errorf("status %+v", s)
			}
			if fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) {
				t.Error("staged key left behind")
			}
			if gens, _ := r.eng.store.Generations(); len(gens) != 0 {
				t.Errorf("generations stored: %v", gens)
			}
			for _, u := range r.cloud.jobUpdates() {
				if strings.Contains(u, "FAILED") || strings.Contains(u, "SUCCEEDED") {
					t.Errorf("a terminal update was sent for the cancelled execution: %v", r.cloud.jobUpdates())
				}
			}
			r.cloud.mu.Lock()
			r.cloud.dropAcks, r.cloud.dropGets = 0, 0
			r.cloud.mu.Unlock()
			r.cloud.queueJob("rot-2")
			r.waitFor("the next rotation", operational(2))
		})
	}
}

// TestCancelledWhileAway: a rotation journalled in key-staged whose
// execution was removed while the daemon was down ends at the next start
// (DescribeJobExecution on resume).
func TestCancelledWhileAway(t *testing.T) {
	r := newRig(t)
	r.cloud.dropGets = 1
	r.cfg.ReplyTimeout = time.Hour
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("key-staged", func(s Status) bool { return s.Phase == journal.KeyStaged })
	r.stop()
	r.cloud.cancel("rot-1", protocol.JobCanceled)
	r.start()
	r.waitFor("the rotation ended", func(s Status) bool { return s.Phase == journal.Idle && s.LastResult == protocol.JobCanceled })
	// the key may be made again (resume) while the execution is described:
	// it is destroyed when that key generation returns
	testkit.Eventually(t, 10*time.Second, func() bool { return !fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) }, "staged key left behind")
}

// TestBackoffGrowsOnUselessSessions: a broker that closes every session
// right after it starts does not get a connect per backoff.initial: the
// backoff resets only after a useful session.
func TestBackoffGrowsOnUselessSessions(t *testing.T) {
	r := newRig(t)
	r.cloud.dropAfterStartNext = true
	r.cfg.Backoff = Backoff{Initial: time.Second, Max: time.Hour, Rand: func() float64 { return 0.999 }}
	r.start()
	// 63 s of engine time in 1 s steps: a backoff that resets connects
	// about 63 times, one that grows 1+2+4+8+16+32 s about 6
	for i := 0; i < 63; i++ {
		r.clock.WaitForWaiters(2, 200*time.Millisecond)
		r.clock.Advance(time.Second)
	}
	if n := r.cloud.dialCount(); n < 3 || n > 10 {
		t.Errorf("%d connects in 63 s with sessions that die at once, want 3..10", n)
	}
}

// journalOnDisk reads the journal file (the engine's in-memory copy belongs
// to its goroutine).
func (r *rig) journalOnDisk() journal.Entry {
	j, err := journal.Open(r.cfg.StateDir)
	if err != nil {
		r.t.Fatal(err)
	}
	return j.Current()
}
