package engine

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/bootcert/bootcert/protocol"
)

// The device-side safety net (issue 10): when the operational certificate
// the device is connected with has used Config.RequestAfterLife of its
// validity, or is older than Config.MaxAge, and no rotation job is pending,
// bootcertd asks the cloud for one: protocol.RotateRequest on
// certificates/{thing}/rotate, answered on .../rotate/accepted or
// .../rotate/rejected. At most one request is outstanding; while no job
// comes it asks again after RequestInterval, doubling up to maxRequestGap
// (with jitter: a fleet whose certificates were issued together does not
// ask together). A device that was offline asks when it reconnects. The
// request topic is one the policies grant the thing itself; if they do not
// (a template from before the safety net), the broker refuses the
// subscription or closes the connection after the publish: the device then
// waits maxRequestGap before it asks again, and keeps working meanwhile.

// maxRequestGap bounds the wait between two requests for one certificate.
const maxRequestGap = 24 * time.Hour

// safetyNet is the request state; it outlives sessions and belongs to the
// engine goroutine.
type safetyNet struct {
	certID      string    // the certificate the requests are about
	attempts    int       // requests sent for it
	outstanding string    // clientToken of the request awaiting its reply
	sentAt      time.Time // of the outstanding request
	nextAt      time.Time // no request before this
}

// rotationDue returns when the certificate should be rotated by the
// device's own rule (zero: never) and why.
func (e *Engine) rotationDue(leaf *x509.Certificate) (time.Time, string) {
	var at time.Time
	var why string
	if f := e.cfg.RequestAfterLife; f > 0 {
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		at, why = leaf.NotBefore.Add(time.Duration(f*float64(life))), "expiry"
	}
	if a := e.cfg.MaxAge; a > 0 {
		if t := leaf.NotBefore.Add(a); at.IsZero() || t.Before(at) {
			at, why = t, "age"
		}
	}
	return at, why
}

// safetyStart is called when a session starts: a request left unanswered
// by the previous session will not be answered on this one.
func (s *session) safetyStart() {
	n := &s.e.net
	if n.outstanding != "" {
		n.outstanding = ""
		s.e.rotationRequest(func(r *RotationRequest) { r.Answer = "no reply" })
	}
}

// checkSafetyNet asks for a rotation when one is due and none is pending,
// and otherwise arms the session's timer for when to look again.
func (s *session) checkSafetyNet(ctx context.Context) error {
	e := s.e
	s.safetyAt = nil
	if !s.noJob || !idle(e.journal.Current().Phase) || s.cred.Generation == 0 || s.cred.Generation != e.activeGeneration() {
		return nil
	}
	if err := s.clockOK(); err != nil {
		return err
	}
	leaf := s.cred.Leaf()
	due, why := e.rotationDue(leaf)
	if due.IsZero() {
		return nil
	}
	now := e.clock.Now()
	if now.Before(due) {
		s.safetyAt = e.clock.After(due.Sub(now))
		return nil
	}
	n := &e.net
	if id := s.cred.CertificateID(); n.certID != id {
		*n = safetyNet{certID: id}
	}
	if n.outstanding != "" {
		wait := n.sentAt.Add(e.cfg.ReplyTimeout).Sub(now)
		if wait > 0 {
			s.safetyAt = e.clock.After(wait)
			return nil
		}
		n.outstanding = ""
		e.rotationRequest(func(r *RotationRequest) { r.Answer = "no reply" })
	}
	if now.Before(n.nextAt) {
		s.safetyAt = e.clock.After(n.nextAt.Sub(now))
		return nil
	}
	return s.requestRotation(ctx, why)
}

// requestRotation sends one request.
func (s *session) requestRotation(ctx context.Context, why string) error {
	e := s.e
	n := &e.net
	now := e.clock.Now()
	topic := protocol.RotateTopic(e.cfg.Thing)
	n.attempts++
	n.nextAt = now.Add(e.requestGap(n.attempts))
	req := &RotationRequest{Reason: why, CertificateID: n.certID, SentAt: now, Attempts: n.attempts, NextAt: n.nextAt}
	e.update(func(st *Status) { st.RotationRequest = req })
	if err := s.subscribe(ctx, topic+"/+"); err != nil {
		if isDenied(err) {
			return s.requestRefused(err.Error())
		}
		return err
	}
	tok := token()
	e.log.Info("asking the cloud for a rotation", "reason", why, "certificateId", n.certID, "attempt", n.attempts)
	if err := s.publishJSON(ctx, topic, protocol.RotateRequest{ClientToken: tok, Reason: why, CertificateID: n.certID}); err != nil {
		if closedByPeer(s.conn) {
			s.requestRefused(fmt.Sprintf("the broker closed the connection after the request on %s (the device's policy does not grant it)", topic))
		}
		return err
	}
	n.outstanding, n.sentAt = tok, now
	s.safetyAt = e.clock.After(e.cfg.ReplyTimeout)
	return nil
}

// requestRefused records that the broker refused the request topic: ask
// again only after maxRequestGap.
func (s *session) requestRefused(why string) error {
	e := s.e
	n := &e.net
	n.outstanding = ""
	n.nextAt = e.clock.Now().Add(maxRequestGap)
	e.log.Warn("rotation request refused by the broker", "why", why)
	e.setRefusalReason("rotation request: " + why)
	e.rotationRequest(func(r *RotationRequest) { r.Answer, r.Message, r.NextAt = "refused by the broker", why, n.nextAt })
	s.safetyAt = e.clock.After(maxRequestGap)
	return nil
}

// requestGap is the wait after the n-th request (n from 1): RequestInterval
// doubling to maxRequestGap, jittered to [1/2, 1] of it.
func (e *Engine) requestGap(n int) time.Duration {
	d := e.cfg.RequestInterval
	for i := 1; i < n && d < maxRequestGap; i++ {
		d *= 2
	}
	d = min(d, max(maxRequestGap, e.cfg.RequestInterval))
	r := e.cfg.Backoff.Rand
	if r == nil {
		r = cryptoFloat
	}
	return d/2 + time.Duration(r()*float64(d/2))
}

// onRotateReply handles .../rotate/accepted and .../rotate/rejected.
func (s *session) onRotateReply(ctx context.Context, suffix string, payload []byte) error {
	e := s.e
	n := &e.net
	if n.outstanding == "" {
		return nil
	}
	now := e.clock.Now()
	switch suffix {
	case protocol.SuffixAccepted:
		var a protocol.RotateAccepted
		if err := protocol.Decode("rotate/accepted", payload, &a); err != nil || a.ClientToken != n.outstanding {
			return nil
		}
		n.outstanding = ""
		e.log.Info("rotation request accepted", "job", a.JobID)
		e.rotationRequest(func(r *RotationRequest) { r.Answer, r.JobID, r.AnsweredAt = protocol.SuffixAccepted, a.JobID, now })
		return s.startNext(ctx) // the job may be there already
	case protocol.SuffixRejected:
		var r protocol.Rejected
		if err := protocol.Decode("rotate/rejected", payload, &r); err != nil || r.ClientToken != n.outstanding {
			return nil
		}
		n.outstanding = ""
		if !r.Retryable {
			n.nextAt = now.Add(maxRequestGap)
		}
		e.log.Warn("rotation request rejected", "code", r.Code, "message", r.Message, "retryable", r.Retryable)
		e.rotationRequest(func(rr *RotationRequest) {
			rr.Answer, rr.Code, rr.Message, rr.AnsweredAt, rr.NextAt = protocol.SuffixRejected, string(r.Code), r.Message, now, n.nextAt
		})
		return s.checkSafetyNet(ctx)
	}
	return nil
}

// jobAnswersRequest: a rotation job that starts while a request is
// awaited answers it, whichever of the job notification and the
// rotate/accepted reply the broker delivered first (they travel on
// different topics, so MQTT does not order them).
func (s *session) jobAnswersRequest(jobID string, now time.Time) {
	n := &s.e.net
	if n.outstanding == "" {
		return
	}
	n.outstanding = ""
	s.e.rotationRequest(func(r *RotationRequest) { r.Answer, r.JobID, r.AnsweredAt = answerJobArrived, jobID, now })
}

// answerJobArrived is the request's answer when the rotation job came
// before the rotate/accepted reply.
const answerJobArrived = "job arrived"

// rotationRequest changes the status's last request.
func (e *Engine) rotationRequest(f func(*RotationRequest)) {
	e.update(func(st *Status) {
		if st.RotationRequest == nil {
			return
		}
		r := *st.RotationRequest
		f(&r)
		st.RotationRequest = &r
	})
}

// noJobPending records the start-next answer "no pending execution".
func (s *session) noJobPending(ctx context.Context) error {
	s.noJob = idle(s.e.journal.Current().Phase)
	return s.checkSafetyNet(ctx)
}
