package engine

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/protocol"
)

// shortLived makes the fake cloud issue certificates valid for 100 days
// from the engine's now.
func (r *rig) shortLived() { r.lifetime(100 * 24 * time.Hour) }

// lifetime makes the fake cloud issue certificates valid for d from the
// engine's now.
func (r *rig) lifetime(d time.Duration) {
	r.cloud.getReply = func(req protocol.GetRequest, pub any) (string, []byte, bool) {
		now := r.clock.Now()
		cert := r.ca.Issue(r.t, "gw-1", pub, testca.Valid(now.Add(-time.Minute), now.Add(d)))
		id := protocol.CertificateID(cert.Raw)
		r.cloud.accept(id)
		p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificateID: id, CertificatePEM: string(testca.PEM(cert))})
		return "accepted", p, true
	}
}

// TestSafetyNetAsksAndRotates: once the operational certificate has used
// its share of life with no job, the device asks; the cloud queues a
// rotation and the device rotates; the request and its answer show in the
// status. Nothing is asked before the threshold.
func TestSafetyNetAsksAndRotates(t *testing.T) {
	r := newRig(t)
	r.cfg.RequestAfterLife = 0.8
	r.shortLived()
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.clock.Advance(79 * 24 * time.Hour) // 79% of 100 days
	r.settle(2)                          // beat and safety-net timers armed again: the engine has looked
	if n := len(r.cloud.rotateRequests()); n != 0 {
		t.Fatalf("%d requests before 80%% of the life", n)
	}
	r.clock.Advance(2 * 24 * time.Hour)
	s := r.waitFor("generation 2 after the request", operational(2))
	reqs := r.cloud.rotateRequests()
	if len(reqs) != 1 || reqs[0].Reason != "expiry" || !protocol.ValidCertificateID(reqs[0].CertificateID) {
		t.Fatalf("requests %+v", reqs)
	}
	// The reply and the job notification travel on different topics; either
	// may come first, and either answers the request.
	if rr := s.RotationRequest; rr == nil || (rr.Answer != "accepted" && rr.Answer != answerJobArrived) || rr.JobID != "rot-req-1" || rr.Attempts != 1 || rr.CertificateID != reqs[0].CertificateID {
		t.Errorf("status request %+v", s.RotationRequest)
	}
}

// TestSafetyNetMaxAge: a certificate valid for years is asked to be
// rotated once older than max_age.
func TestSafetyNetMaxAge(t *testing.T) {
	r := newRig(t)
	r.cfg.MaxAge = 10 * 24 * time.Hour
	r.lifetime(10 * 365 * 24 * time.Hour)
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.clock.Advance(11 * 24 * time.Hour)
	r.waitFor("generation 2", operational(2))
	if reqs := r.cloud.rotateRequests(); len(reqs) != 1 || reqs[0].Reason != "age" {
		t.Errorf("requests %+v", reqs)
	}
}

// TestSafetyNetBackoff: a rejected (throttled) or unanswered request is
// asked again later with a growing gap, one at a time; a non-retryable
// rejection waits a day.
func TestSafetyNetBackoff(t *testing.T) {
	r := newRig(t)
	r.cfg.MaxAge = 10 * 24 * time.Hour
	r.cfg.RequestInterval = time.Hour
	r.cfg.Backoff.Rand = func() float64 { return 0.999 }
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	answers := []protocol.Code{protocol.Throttled, "", protocol.Throttled, protocol.RecoveryBudgetExhausted}
	r.cloud.mu.Lock()
	r.cloud.rotateReply = func(req protocol.RotateRequest) (string, []byte) {
		n := len(r.cloud.rotates) - 1 // called with mu unlocked, rotates already appended
		if n >= len(answers) || answers[n] == "" {
			return "", nil // no reply
		}
		p, _ := json.Marshal(protocol.Rejected{ClientToken: req.ClientToken, Code: answers[n], Message: "m", Retryable: answers[n] == protocol.Throttled})
		return "rejected", p
	}
	r.cloud.mu.Unlock()
	r.clock.Advance(10*24*time.Hour + time.Minute)
	wantAsk := func(n int, what string) {
		t.Helper()
		testkit.Eventually(t, 10*time.Second, func() bool { return len(r.cloud.rotateRequests()) >= n }, "%s", what)
		if got := len(r.cloud.rotateRequests()); got != n {
			t.Fatalf("%d requests, want %d (%s)", got, n, what)
		}
	}
	wantAsk(1, "first request")
	// throttled: the next one after ~1h, not before
	r.waitFor("rejected", func(s Status) bool {
		return s.RotationRequest != nil && s.RotationRequest.Code == string(protocol.Throttled)
	})
	r.clock.Advance(50 * time.Minute)
	r.settle(2)
	wantAsk(1, "no request before the gap")
	r.clock.Advance(15 * time.Minute)
	wantAsk(2, "second request after ~1h")
	// unanswered: "no reply" after the reply timeout, the next after ~2h
	r.clock.Advance(r.cfg.ReplyTimeout)
	r.waitFor("no reply", func(s Status) bool { return s.RotationRequest.Answer == "no reply" })
	r.clock.Advance(90 * time.Minute)
	r.settle(2)
	wantAsk(2, "no request before the doubled gap")
	r.clock.Advance(31 * time.Minute)
	wantAsk(3, "third request after ~2h")
	r.waitFor("rejected again", func(s Status) bool { return s.RotationRequest.Attempts == 3 && s.RotationRequest.Answer == "rejected" })
	r.clock.Advance(4*time.Hour + time.Minute)
	wantAsk(4, "fourth request after ~4h")
	s := r.waitFor("budget exhausted", func(s Status) bool { return s.RotationRequest.Code == string(protocol.RecoveryBudgetExhausted) })
	if gap := s.RotationRequest.NextAt.Sub(s.RotationRequest.AnsweredAt); gap != maxRequestGap {
		t.Errorf("after a non-retryable rejection the next request is in %s, want %s", gap, maxRequestGap)
	}
	r.clock.Advance(23 * time.Hour)
	r.settle(2)
	wantAsk(4, "no request within a day of a non-retryable rejection")
}

// TestSafetyNetRefusedTopic: a policy that does not grant the request topic
// (the broker closes the connection after the publish) does not make the
// device loop: it waits a day before asking again.
func TestSafetyNetRefusedTopic(t *testing.T) {
	r := newRig(t)
	r.cfg.MaxAge = 10 * 24 * time.Hour
	r.lifetime(10 * 365 * 24 * time.Hour)
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.cloud.mu.Lock()
	r.cloud.deniedPubs = map[string]bool{"certificates/gw-1/rotate": true}
	r.cloud.mu.Unlock()
	dials := r.cloud.dialCount()
	r.clock.Advance(10*24*time.Hour + time.Minute)
	s := r.waitFor("refused", func(s Status) bool {
		return s.RotationRequest != nil && s.RotationRequest.Answer == "refused by the broker"
	})
	if !strings.Contains(s.LastRefusal, "rotation request") {
		t.Errorf("last refusal %q", s.LastRefusal)
	}
	for i := 0; i < 10; i++ {
		r.clock.Advance(time.Hour)
		r.settle(1)
	}
	s = r.waitFor("connected", operational(1))
	if n := s.RotationRequest.Attempts; n != 1 {
		t.Errorf("%d requests within 10h of a refusal, want 1", n)
	}
	if n := r.cloud.dialCount() - dials; n > 3 {
		t.Errorf("%d connects after the refusal", n)
	}
}

// TestSafetyNetOnlyWithoutJob: with a rotation job pending, or on the
// bootstrap certificate, the device does not ask.
func TestSafetyNetOnlyWithoutJob(t *testing.T) {
	r := newRig(t)
	r.cfg.RequestAfterLife = 0.5
	r.start()
	r.waitFor("bootstrap", func(s Status) bool { return s.Connection == "connected" })
	r.clock.Advance(20 * time.Hour) // the bootstrap certificate is past half its life
	r.settle(1)
	if n := len(r.cloud.rotateRequests()); n != 0 {
		t.Errorf("%d requests on the bootstrap certificate", n)
	}
}

// settle waits until the engine waits on n timers again (its beat, the
// safety net's): it has handled what the last Advance fired.
func (r *rig) settle(n int) {
	r.t.Helper()
	if !r.clock.WaitForWaiters(n, 10*time.Second) {
		r.t.Fatalf("the engine does not wait on %d timers", n)
	}
}
