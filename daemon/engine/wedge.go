package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/protocol"
)

// Jobs that cannot wedge a device (issue 10). A job document passes
// protocol.ParseJobDocument only with topics under certificates/{thingName}/,
// but the device's policy may still not grant them, and AWS IoT Core answers
// an MQTT 3.1.1 client that subscribes where it may not with a SUBACK
// failure (0x80), and one that publishes where it may not by closing its
// connection ("AWS IoT differences from MQTT specifications",
// https://docs.aws.amazon.com/iot/latest/developerguide/mqtt.html; the
// disconnect is reported as AUTH_ERROR,
// https://docs.aws.amazon.com/iot/latest/developerguide/life-cycle-events.html).
// Without the bounds below such a job held a device in a reconnect loop for
// ever, across restarts (the journal resumed it). Now:
//
//   - a SUBACK 0x80 on a document topic fails the rotation at once (the
//     connection is still up: the job is reported FAILED on it);
//   - a connection the broker closes right after a publish to a document
//     topic, before any reply, is a denial; deniedPublishes of them in one
//     phase fail the rotation;
//   - a rotation may start at most Config.PhaseSessions sessions in one
//     phase, whatever ends them;
//   - a job execution cancelled, removed or timed out in the cloud ends the
//     rotation without a report (the Jobs API refuses updates to it);
//
// and in each case the staged key is destroyed and the credentials are the
// ones from before the rotation. Every count is journalled, so a restart
// does not start the loop again. The reconnect backoff resets only after a
// useful session (Engine.useful).

// deniedPublishes is how many connections the broker may close right after
// a publish to a job document topic (before any reply) in one phase before
// the rotation fails. One could be a coincidence (the broker restarting);
// two in a row on the same step are the policy.
const deniedPublishes = 2

// isDenied reports whether err is a request the broker refused (SUBACK
// 0x80) on a connection that stays up.
func isDenied(err error) bool {
	var d interface{ Denied() bool }
	return errors.As(err, &d) && d.Denied()
}

// closedByPeer reports whether conn ended because the broker closed it.
func closedByPeer(conn Conn) bool {
	select {
	case <-conn.Done():
	default:
		return false
	}
	if c, ok := conn.(interface{ ClosedByPeer() bool }); ok {
		return c.ClosedByPeer()
	}
	err := conn.Err()
	return err != nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF))
}

// countSession journals one more session started in the rotation's current
// phase and reports whether the rotation is over its budget.
func (s *session) countSession() (over bool, err error) {
	e := s.e
	j := e.journal.Current()
	switch j.Phase {
	case journal.KeyStaged, journal.CertStaged, journal.Committed, journal.RolledBack:
	case journal.Switched:
		if s.cred.Generation != j.Generation {
			return false, nil
		}
	default:
		return false, nil
	}
	j.Sessions++
	j.UpdatedAt = e.clock.Now()
	if err := e.journal.Write(j); err != nil {
		return false, err
	}
	return j.Sessions > e.cfg.PhaseSessions, nil
}

// overBudget ends a rotation that started more than PhaseSessions sessions
// in its phase, on the session just made.
func (s *session) overBudget(ctx context.Context) error {
	e := s.e
	j := e.journal.Current()
	reason := fmt.Sprintf("%d sessions started in phase %s without progress (limit rotation.phase_sessions = %d)", j.Sessions, j.Phase, e.cfg.PhaseSessions)
	e.log.Warn("rotation over its session budget", "job", j.JobID, "phase", j.Phase, "sessions", j.Sessions)
	switch j.Phase {
	case journal.KeyStaged, journal.CertStaged:
		return s.fail(ctx, reason)
	case journal.Switched:
		e.rollback(reason + "; rolled back")
		return errSwitch
	case journal.Committed:
		return s.finishCommit(ctx, false)
	case journal.RolledBack:
		return s.finishRollback(ctx, false)
	}
	return nil
}

// subscribeDenied ends a rotation whose job document names a filter the
// broker refuses (SUBACK 0x80). Before the switch the job is reported FAILED
// on this session; after it, the new credential is rolled back.
func (s *session) subscribeDenied(ctx context.Context, filter string, cause error) error {
	e := s.e
	j := e.journal.Current()
	reason := fmt.Sprintf("the broker refused the subscription to %s named by the job document (SUBACK 0x80: the device's policy does not grant it)", filter)
	e.setRefusalReason(reason)
	switch j.Phase {
	case journal.KeyStaged, journal.CertStaged:
		return s.fail(ctx, reason)
	case journal.Switched:
		e.rollback(reason + "; rolled back")
		return errSwitch
	}
	return cause
}

// publishLost handles a connection that ended after a publish to a job
// document topic and before its reply: when the broker closed it, that is a
// denial, journalled; deniedPublishes of them in one phase end the rotation
// (abandoned before the switch, rolled back after it), and the engine
// reconnects at once to report it.
func (s *session) publishLost(topic string, cause error) error {
	e := s.e
	if !closedByPeer(s.conn) {
		return cause
	}
	j := e.journal.Current()
	if idle(j.Phase) {
		return cause
	}
	j.Denials++
	j.UpdatedAt = e.clock.Now()
	if err := e.journal.Write(j); err != nil {
		return err
	}
	reason := fmt.Sprintf("the broker closed the connection right after the publish to %s named by the job document, %d times (AWS IoT disconnects a client that publishes where its policy does not grant it)", topic, j.Denials)
	e.setRefusalReason(reason)
	e.log.Warn("connection closed by the broker after a publish to a job document topic", "topic", topic, "denials", j.Denials)
	if j.Denials < deniedPublishes {
		return fmt.Errorf("connection closed by the broker after publishing to %s: %w", topic, cause)
	}
	switch j.Phase {
	case journal.KeyStaged, journal.CertStaged:
		e.abandon(reason)
		return errSwitch
	case journal.Switched:
		e.rollback(reason + "; rolled back")
		return errSwitch
	}
	return cause
}

// abandon ends a rotation before its switch without a session to report
// on: the previous credential stays active (rolled-back, Abandoned), and
// the next session reports the job FAILED and destroys the staged key
// (finishRollback).
func (e *Engine) abandon(reason string) bool {
	return e.rollbackAs(reason, protocol.JobFailed, true)
}

// endedInCloud reports whether a result is a job execution status only the
// cloud sets: the execution is over and refuses updates.
func endedInCloud(r protocol.Result) bool {
	return r == protocol.JobCanceled || r == protocol.JobRemoved || r == protocol.JobTimedOut
}

// describeJob asks the Jobs API for the rotation's job execution
// (DescribeJobExecution): its answer tells whether the execution was
// cancelled, removed or timed out in the cloud.
func (s *session) describeJob(ctx context.Context) error {
	j := s.e.journal.Current()
	if j.JobID == "" || idle(j.Phase) {
		return nil
	}
	s.describeToken = token()
	no := false
	return s.publishJSON(ctx, protocol.JobDescribeTopic(s.e.cfg.Thing, j.JobID), protocol.DescribeRequest{ClientToken: s.describeToken, IncludeJobDocument: &no})
}

// onDescribed handles a DescribeJobExecution reply for the rotation's job.
func (s *session) onDescribed(ctx context.Context, accepted bool, payload []byte) error {
	e := s.e
	j := e.journal.Current()
	if idle(j.Phase) || s.describeToken == "" {
		return nil
	}
	if !accepted {
		var r protocol.JobsRejected
		if err := protocol.Decode("jobs describe rejected", payload, &r); err != nil || r.ClientToken != s.describeToken {
			return nil
		}
		s.describeToken = ""
		if r.Code == protocol.JobsResourceNotFound {
			return s.endedInCloud(ctx, protocol.JobRemoved, "the job execution no longer exists ("+r.Message+")")
		}
		e.log.Warn("describing the rotation's job execution rejected", "code", r.Code, "message", r.Message)
		return nil
	}
	var a protocol.ExecutionAccepted
	if err := protocol.Decode("jobs describe reply", payload, &a); err != nil || a.ClientToken != s.describeToken {
		return nil
	}
	s.describeToken = ""
	if a.Execution == nil {
		return s.endedInCloud(ctx, protocol.JobRemoved, "the job execution no longer exists")
	}
	if a.Execution.JobID == j.JobID && a.Execution.Status.Terminal() {
		return s.endedInCloud(ctx, a.Execution.Status, "the job execution is "+string(a.Execution.Status)+" in the cloud")
	}
	return nil
}

// onUpdateRejected handles a rejected UpdateJobExecution of the rotation's
// job: a rejection that carries a terminal state ends the rotation; any
// other is checked with a DescribeJobExecution.
func (s *session) onUpdateRejected(ctx context.Context, jobID string, r protocol.JobsRejected) error {
	j := s.e.journal.Current()
	if idle(j.Phase) || jobID != j.JobID {
		return nil
	}
	if r.ExecutionState != nil && r.ExecutionState.Status.Terminal() && (r.Code == protocol.JobsInvalidStateTransition || r.Code == protocol.JobsTerminalStateReached) {
		return s.endedInCloud(ctx, r.ExecutionState.Status, fmt.Sprintf("the job execution is %s in the cloud (update rejected: %s)", r.ExecutionState.Status, r.Code))
	}
	if r.Code == protocol.JobsRequestThrottled || r.Code == protocol.JobsInternalError {
		return nil
	}
	return s.describeJob(ctx)
}

// endedInCloud ends the rotation whose job execution the cloud ended
// (cancelled with force, removed, timed out): nothing is reported (the Jobs
// API refuses updates to a terminal execution), the staged key is destroyed
// and the previous credential stays or becomes active again. After the
// commit point nothing changes: the rotation has happened.
func (s *session) endedInCloud(ctx context.Context, status protocol.JobStatus, why string) error {
	e := s.e
	j := e.journal.Current()
	reason := fmt.Sprintf("job %s ended in the cloud: %s; rotation abandoned, previous credentials kept", j.JobID, why)
	switch j.Phase {
	case journal.KeyStaged, journal.CertStaged:
		e.log.Warn("rotation's job execution ended in the cloud", "job", j.JobID, "status", status, "phase", j.Phase)
		e.rot.staged = nil
		e.destroyKey(ctx, j.KeyURI, j.KeyRole, j.Mode)
		e.removeGeneration(j.Generation, "job execution ended in the cloud")
		if ptr, _ := e.store.Pointer(); ptr.Active != j.Previous {
			if err := e.store.SetPointer(credset.Pointer{Active: j.Previous}); err != nil {
				return err
			}
		}
		now := e.clock.Now()
		if err := e.journal.Write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, JobID: j.JobID, Result: status, Reason: reason, FinishedAt: now, UpdatedAt: now}); err != nil {
			return err
		}
		s.retryAt = nil
		e.setPending("")
		e.refreshStatus()
		return s.startNext(ctx)
	case journal.Switched:
		e.log.Warn("rotation's job execution ended in the cloud after the switch; rolling back", "job", j.JobID, "status", status)
		e.rollbackAs(reason, status, false)
		return errSwitch
	}
	return nil
}

// jobsOp splits a Jobs API op "{jobId}/{verb}/{suffix}".
func jobsOp(op string) (jobID, verb, suffix string, ok bool) {
	parts := strings.Split(op, "/")
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}
