package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/bootcert/bootcert/protocol"
)

// The AWS IoT Jobs MQTT API client: the engine asks for the next pending
// execution (StartNextPendingJobExecution), is told of new ones
// (notify-next) and reports progress (UpdateJobExecution)
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html).

// jobsTopic is $aws/things/{thing}/jobs/{op}.
func (s *session) jobsTopic(op string) string { return protocol.JobsTopic(s.e.cfg.Thing, op) }

// jobsSubscriptions are the Jobs topics every session subscribes to.
func (s *session) jobsSubscriptions() []string {
	return []string{
		s.jobsTopic(protocol.JobsNotifyNext),
		s.jobsTopic(protocol.JobsStartNext + "/+"),
		s.jobsTopic("+/update/+"),
		s.jobsTopic("+/get/+"), // DescribeJobExecution replies
	}
}

func token() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// startNext asks for the next pending job execution. Only the reply to the
// latest request counts: a duplicated or late reply would restart a job
// that has just finished.
func (s *session) startNext(ctx context.Context) error {
	s.startToken = token()
	return s.publishJSON(ctx, s.jobsTopic(protocol.JobsStartNext), protocol.StartNextRequest{
		ClientToken: s.startToken, StatusDetails: map[string]string{"progress": "started"},
	})
}

// maxDetail is the longest statusDetails value bootcertd sends (the Jobs API
// allows 1024 characters).
const maxDetail = 512

// updateJob reports a job execution's status. A terminal status waits for
// the PUBACK (the journal forgets the job next); progress does not wait (a
// lost update is repeated at the next step or resume).
func (s *session) updateJob(ctx context.Context, jobID string, status protocol.JobStatus, details map[string]string) error {
	if jobID == "" {
		return nil
	}
	for k, v := range details {
		if len(v) > maxDetail {
			details[k] = v[:maxDetail]
		}
	}
	b, err := json.Marshal(protocol.UpdateRequest{Status: status, StatusDetails: details})
	if err != nil {
		return err
	}
	topic := protocol.JobUpdateTopic(s.e.cfg.Thing, jobID)
	if status.Terminal() {
		return s.publish(ctx, topic, b)
	}
	return s.conn.PublishNoWait(topic, b)
}

// updateJobNoWait reports a status without waiting for the PUBACK, logging
// a failure.
func (s *session) updateJobNoWait(jobID string, status protocol.JobStatus, details map[string]string) {
	if jobID == "" {
		return
	}
	b, err := json.Marshal(protocol.UpdateRequest{Status: status, StatusDetails: details})
	if err == nil {
		err = s.conn.PublishNoWait(protocol.JobUpdateTopic(s.e.cfg.Thing, jobID), b)
	}
	if err != nil {
		s.e.log.Warn("job status not reported", "job", jobID, "status", status, "err", err)
	}
}

// handleJobs handles a Jobs API message; handled is false for other topics.
func (s *session) handleJobs(ctx context.Context, m message) (handled bool, err error) {
	thing, op, ok := protocol.ParseJobsTopic(m.topic)
	if !ok || thing != s.e.cfg.Thing {
		return false, nil
	}
	j := s.e.journal.Current()
	switch {
	case op == protocol.JobsNotifyNext:
		var r protocol.ExecutionAccepted
		if err := protocol.Decode("jobs notify-next", m.payload, &r); err != nil {
			s.e.log.Warn("ignoring message", "topic", m.topic, "err", err)
			return true, nil
		}
		if r.Execution != nil && idle(j.Phase) {
			s.noJob = false
			return true, s.startNext(ctx)
		}
		if !idle(j.Phase) && (r.Execution == nil || r.Execution.JobID != j.JobID) {
			// the rotation's execution left the pending list: cancelled
			// or removed? (the reply decides: notifications are not ordered)
			return true, s.describeJob(ctx)
		}
	case op == protocol.JobsStartNext+"/accepted":
		var r protocol.ExecutionAccepted
		if err := protocol.Decode("jobs start-next reply", m.payload, &r); err != nil {
			s.e.log.Warn("ignoring message", "topic", m.topic, "err", err)
			return true, nil
		}
		if r.ClientToken != s.startToken {
			return true, nil
		}
		s.startToken = ""
		if r.Execution == nil {
			s.e.setPending("")
			if !idle(j.Phase) {
				return true, s.describeJob(ctx)
			}
			return true, s.noJobPending(ctx)
		}
		s.noJob = false
		if !idle(j.Phase) {
			if r.Execution.JobID != j.JobID {
				return true, s.describeJob(ctx)
			}
			return true, nil // a rotation is in progress; its own job comes back here too
		}
		return true, s.begin(ctx, r.Execution)
	case op == protocol.JobsStartNext+"/rejected":
		s.logRejected("jobs start-next rejected", m)
	case strings.HasSuffix(op, "/update/rejected"):
		s.logRejected("job update rejected", m)
		var r protocol.JobsRejected
		if protocol.Decode("job update rejected", m.payload, &r) == nil {
			jobID, _, _, _ := jobsOp(op)
			return true, s.onUpdateRejected(ctx, jobID, r)
		}
	case strings.HasSuffix(op, "/get/accepted") || strings.HasSuffix(op, "/get/rejected"):
		if jobID, _, suffix, ok := jobsOp(op); ok && jobID == j.JobID {
			return true, s.onDescribed(ctx, suffix == protocol.SuffixAccepted, m.payload)
		}
	default:
		return false, nil // .../update/accepted, or a job document's own topic
	}
	return true, nil
}

func (s *session) logRejected(what string, m message) {
	var r protocol.JobsRejected
	if err := protocol.Decode(what, m.payload, &r); err != nil {
		s.e.log.Warn(what, "topic", m.topic, "payload", truncate(m.payload))
		return
	}
	s.e.log.Warn(what, "topic", m.topic, "code", r.Code, "message", r.Message)
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
