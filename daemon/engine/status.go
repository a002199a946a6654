package engine

import (
	"fmt"
	"strings"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// Status is what `bootcertctl status` shows: the control socket's wire type.
type Status = control.Status

// ActiveCredential describes the active credential set.
type ActiveCredential = control.ActiveCredential

// RotationRequest is the last device-initiated rotation request.
type RotationRequest = control.RotationRequest

// Status returns a snapshot.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}

// Watch returns a channel receiving status changes until cancel. Sends never
// block the engine: a reader that falls more than 8 changes behind misses the
// ones in between (Status is always the current state).
func (e *Engine) Watch() (<-chan Status, func()) {
	ch := make(chan Status, 8)
	e.mu.Lock()
	e.watchers[ch] = struct{}{}
	e.mu.Unlock()
	return ch, func() {
		e.mu.Lock()
		delete(e.watchers, ch)
		e.mu.Unlock()
	}
}

// OnStatus sets a function called on every change, from the engine
// goroutine with no lock held (sd_notify STATUS= uses it). Set it before Run.
func (e *Engine) OnStatus(f func(Status)) { e.onStatus = f }

func (e *Engine) update(f func(s *Status)) {
	e.notifyMu.Lock()
	defer e.notifyMu.Unlock()
	e.mu.Lock()
	f(&e.status)
	e.status.Summary = summary(e.status)
	if e.stall != "" {
		e.status.Summary = e.stall + "; " + e.status.Summary
	}
	s := e.status
	for ch := range e.watchers {
		select {
		case ch <- s:
		default:
		}
	}
	e.mu.Unlock()
	if e.onStatus != nil {
		e.onStatus(s)
	}
}

func (e *Engine) refreshStatus() {
	j := e.journal.Current()
	ptr, _ := e.store.Pointer()
	var a ActiveCredential
	if c, err := e.loadCred(ptr.Active); err == nil {
		leaf := c.Leaf()
		a = ActiveCredential{Generation: c.Generation, CertificateID: c.CertificateID(), Issuer: leaf.Issuer.String(), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, KeyURI: redactURI(c.KeyURI), Attested: c.Attested}
		if u, err := keystore.ParseURI(c.KeyURI); err == nil {
			a.Backend = u.Scheme
		}
	}
	e.update(func(s *Status) {
		s.Phase = j.Phase
		s.Active = a
		if !idle(j.Phase) {
			s.PendingJob = j.JobID
		}
		if j.Result != "" {
			s.Counters.AddJournalled(outcome(j), j.JobID, j.FinishedAt)
			if j.Result == protocol.JobSucceeded && j.FinishedAt.After(s.Counters.LastSuccess) {
				s.Counters.LastSuccess = j.FinishedAt
			}
			s.LastResult, s.LastReason, s.LastResultAt = j.Result, j.Reason, j.FinishedAt
		}
		s.Recovery = control.Recovery{Bootstrap: e.cfg.FallbackToBoot, BootstrapNotAfter: e.cfg.Bootstrap[0].NotAfter}
	})
}

func (e *Engine) setConn(state string, c *Credential) {
	e.update(func(s *Status) {
		if state == "connected" && c != nil {
			s.Counters.Connects++
			if c.Generation == 0 && s.Active.Generation > 0 {
				s.Counters.Fallbacks++
			}
		}
		s.Connection = state
		s.ConnectedWith = -1
		if c != nil {
			s.ConnectedWith = c.Generation
		}
		// a connect that now works resolves an earlier "cannot reach" or
		// refusal of the same credential (e.g. the JITR refusal of a new
		// device): status then shows no stale error on a healthy device
		if state == "connected" && c != nil && (strings.HasPrefix(s.LastError, "cannot reach") || e.refusedGen == c.Generation+1 || e.keyErr || (e.fallbackErr && c.Generation > 0)) {
			s.LastError, s.Advice, e.refusedGen, e.keyErr, e.fallbackErr = "", "", 0, false, false
		}
	})
}

func (e *Engine) setError(msg, advice string) {
	now := e.clock.Now()
	e.update(func(s *Status) {
		s.LastError, s.Advice, s.LastErrorAt, e.refusedGen, e.keyErr, e.fallbackErr = msg, advice, now, 0, false, false
	})
}

// setFallbackError records why the device connected with its bootstrap
// certificate while an operational one was active; the next connect with
// an operational credential (the recovery's rotation) clears it.
func (e *Engine) setFallbackError(msg, advice string) {
	now := e.clock.Now()
	e.update(func(s *Status) {
		s.LastError, s.Advice, s.LastErrorAt, e.refusedGen, e.keyErr, e.fallbackErr = msg, advice, now, 0, false, true
	})
}

// setKeyError is setError for a key that could not be used: a connect that
// works resolves it.
func (e *Engine) setKeyError(msg, advice string) {
	now := e.clock.Now()
	e.update(func(s *Status) {
		s.LastError, s.Advice, s.LastErrorAt, e.refusedGen, e.keyErr, e.fallbackErr = msg, advice, now, 0, true, false
	})
}

// setRefusal records that the broker refused credential generation gen.
func (e *Engine) setRefusal(gen int, msg, advice string) {
	now := e.clock.Now()
	e.update(func(s *Status) {
		s.LastError, s.Advice, s.LastErrorAt, e.refusedGen, e.keyErr, e.fallbackErr = msg, advice, now, gen+1, false, false
		s.LastRefusal, s.LastRefusalAt = msg, now
		s.Counters.Refusals++
	})
}

// setRefusalReason records a refusal that is not a connect's (a job
// document topic the broker refused), kept after errors clear.
func (e *Engine) setRefusalReason(msg string) {
	now := e.clock.Now()
	e.update(func(s *Status) { s.LastRefusal, s.LastRefusalAt = msg, now })
}

// noteFallback records a connect with the bootstrap certificate while an
// operational one is active.
func (e *Engine) noteFallback(why string) {
	now := e.clock.Now()
	e.update(func(s *Status) { s.LastFallback, s.LastFallbackAt = why, now })
}

// countRefusal counts a refusal of the just-switched credential (which
// onRefused reports through setError).
func (e *Engine) countRefusal() { e.update(func(s *Status) { s.Counters.Refusals++ }) }

// outcome is a finished rotation's label in Counters.Rotations.
func outcome(j journal.Entry) protocol.Result {
	if j.Phase == journal.RolledBack {
		return protocol.ResultRolledBack
	}
	return j.Result
}

func (e *Engine) setResult(result protocol.Result, reason string) {
	now := e.clock.Now()
	e.update(func(s *Status) {
		s.LastResult, s.LastReason, s.LastResultAt = result, reason, now
		s.Counters.AddRotation(result)
	})
}

func (e *Engine) setPending(job string) {
	e.update(func(s *Status) { s.PendingJob = job })
}

func summary(s Status) string {
	if s.ClockWait != "" {
		if !idle(s.Phase) {
			return "waiting for the system clock (rotation paused at " + string(s.Phase) + "): " + s.ClockWait
		}
		return "waiting for the system clock: " + s.ClockWait
	}
	switch s.Phase {
	case journal.KeyStaged:
		return "rotating: key staged"
	case journal.CertStaged:
		return "rotating: certificate staged"
	case journal.Switched:
		return "rotating: switched, waiting for acknowledgement"
	case journal.Committed:
		return "rotating: committed"
	case journal.RolledBack:
		return "rotating: rolled back"
	}
	if s.Connection != "connected" {
		if s.ConnectedWith == 0 || s.Active.Generation == 0 {
			return s.Connection + " with bootstrap certificate"
		}
		return fmt.Sprintf("%s with operational certificate (generation %d)", s.Connection, s.Active.Generation)
	}
	if s.ConnectedWith == 0 {
		return "connected with bootstrap certificate"
	}
	return "operational, certificate expires " + s.Active.NotAfter.UTC().Format("2006-01-02")
}

// Advice for a device off its operational credential (issue 10). It says
// what the cloud does: nothing queues a rotation for a device by itself
// when its certificate is revoked or its key is lost; the operator's
// bootcert-admin cloud revoke or recover does, within the device's
// recovery budget (cloud/lifecycle; docs/cloud.md, "A device's
// certificates over its life").
const (
	adviceOperationalRefused = "it may be revoked or inactive; bootcertd tries its bootstrap certificate next"
	adviceFallback           = "the operational certificate is revoked, inactive or expired (or its key unusable). " +
		"The cloud re-admitted the bootstrap certificate (bootcert-admin cloud revoke or recover, within the device's recovery budget, or BootstrapAfterRotation=KEEP); " +
		"revoke and recover also queue a rotation job, which bootcertd runs on this connection to a new key. If no job is pending, an operator runs `bootcert-admin cloud recover DEVICE`"
	adviceBootstrapRefusedAfterRotation = "the operational certificate is refused (revoked or inactive) or its key is gone, and the bootstrap certificate is not ACTIVE: " +
		"the cloud re-admits it only when an operator revokes or recovers the device within its recovery budget (default 2; past it the cloud's audit line says RECOVERY_BUDGET_EXHAUSTED) " +
		"and never for a decommissioned device. bootcertd keeps retrying; an operator checks `bootcert-admin cloud recovery-budget DEVICE`, raises it if the device is trusted, then runs `bootcert-admin cloud recover DEVICE`"
	adviceKeyGone = "the TPM or token may have been cleared. The bootstrap certificate connects only if the cloud re-admits it: " +
		"an operator runs `bootcert-admin cloud recover DEVICE` (bootstrap certificate ACTIVE again and a rotation job queued, which makes a new key; it counts against the recovery budget)"
)
