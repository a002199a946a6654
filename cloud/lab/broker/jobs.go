package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/bootcert/bootcert/protocol"
)

// The Jobs device MQTT API, as AWS IoT documents it ("Jobs device MQTT
// API operations" and "Jobs events" in the AWS IoT Core developer guide):
//
//	$aws/things/{thing}/jobs/get                 GetPendingJobExecutions
//	$aws/things/{thing}/jobs/start-next          StartNextPendingJobExecution
//	$aws/things/{thing}/jobs/{jobId}/get         DescribeJobExecution ($next allowed)
//	$aws/things/{thing}/jobs/{jobId}/update      UpdateJobExecution
//
// each answered on .../accepted or .../rejected, plus the notifications
// .../jobs/notify and .../jobs/notify-next.

// Jobs is the job execution store the Jobs MQTT API works on. The registry
// implements the state machine (AWS's status transitions, expectedVersion,
// statusDetails limits); errors it returns should be *JobError (others are
// answered as InternalError).
type Jobs interface {
	// Pending lists a thing's IN_PROGRESS and QUEUED executions.
	Pending(thing string) (inProgress, queued []protocol.JobExecutionSummary, err error)
	// StartNext moves the next pending execution to IN_PROGRESS and returns
	// it (nil, nil when there is none).
	StartNext(thing string, req protocol.StartNextRequest) (*protocol.JobExecution, error)
	// Describe returns an execution; jobID "$next" is the next pending one
	// (nil, nil when there is none).
	Describe(thing, jobID string, executionNumber *int64, includeDocument bool) (*protocol.JobExecution, error)
	// Update changes an execution's status; the returned execution carries
	// the job document when req.IncludeJobDocument is set.
	Update(thing, jobID string, req protocol.UpdateRequest) (*protocol.JobExecution, error)
}

type tokenRequest struct {
	ClientToken string `json:"clientToken,omitempty"`
}

// JobError is an error with a Jobs API code; State is included in the
// rejection when known (VersionMismatch, InvalidStateTransition).
type JobError struct {
	Code    protocol.JobsErrorCode
	Message string
	State   *protocol.ExecutionState
}

func (e *JobError) Error() string { return string(e.Code) + ": " + e.Message }

// parseJobsTopic splits $aws/things/{thing}/jobs/{op}; op is "get",
// "start-next", "{jobId}/get" or "{jobId}/update". Replies and
// notifications (accepted, rejected, notify) are not requests.
func parseJobsTopic(topic string) (thing, op string, ok bool) {
	thing, op, ok = protocol.ParseJobsTopic(topic)
	if !ok || strings.Contains(thing, "/") {
		return "", "", false
	}
	if strings.HasSuffix(op, "/accepted") || strings.HasSuffix(op, "/rejected") || op == protocol.JobsNotify || op == protocol.JobsNotifyNext {
		return "", "", false
	}
	return thing, op, true
}

// handleJobs answers one Jobs API request.
func (s *Server) handleJobs(thing, op string, payload []byte) {
	log := s.log.With("thing", thing, "request", op)
	reply := func(suffix string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			log.Error("encoding jobs reply", "err", err)
			return
		}
		if err := s.Publish(protocol.JobsTopic(thing, op+"/"+suffix), b, 1); err != nil {
			log.Error("publishing jobs reply", "err", err)
		}
	}
	now := s.cfg.Clock.Now().Unix()
	reject := func(token string, err error) {
		var je *JobError
		if !errors.As(err, &je) {
			log.Error("jobs store failed", "err", err)
			je = &JobError{Code: protocol.JobsInternalError, Message: "internal error"}
		}
		log.Info("jobs request rejected", "code", je.Code, "message", je.Message)
		reply("rejected", protocol.JobsRejected{Code: je.Code, Message: je.Message, ClientToken: token, Timestamp: now, ExecutionState: je.State})
	}
	if len(bytes.TrimSpace(payload)) == 0 {
		payload = []byte("{}")
	}
	var tok tokenRequest
	if err := json.Unmarshal(payload, &tok); err != nil {
		reject("", &JobError{Code: protocol.JobsInvalidJSON, Message: "request payload is not a JSON object: " + err.Error()})
		return
	}
	if s.cfg.Jobs == nil {
		reject(tok.ClientToken, &JobError{Code: protocol.JobsInvalidTopic, Message: "jobs are not available in this lab"})
		return
	}
	jobID, verb, _ := strings.Cut(op, "/")
	switch {
	case op == protocol.JobsGetPending:
		inProgress, queued, err := s.cfg.Jobs.Pending(thing)
		if err != nil {
			reject(tok.ClientToken, err)
			return
		}
		if inProgress == nil {
			inProgress = []protocol.JobExecutionSummary{}
		}
		if queued == nil {
			queued = []protocol.JobExecutionSummary{}
		}
		reply("accepted", protocol.GetPendingAccepted{InProgressJobs: inProgress, QueuedJobs: queued, Timestamp: now, ClientToken: tok.ClientToken})
	case op == protocol.JobsStartNext:
		var req protocol.StartNextRequest
		if err := strictJSON(payload, &req); err != nil {
			reject(tok.ClientToken, err)
			return
		}
		exec, err := s.cfg.Jobs.StartNext(thing, req)
		if err != nil {
			reject(req.ClientToken, err)
			return
		}
		out := protocol.ExecutionAccepted{Execution: exec, Timestamp: now, ClientToken: req.ClientToken}
		if exec != nil {
			log.Info("job execution started", "jobId", exec.JobID, "status", exec.Status, "versionNumber", exec.VersionNumber)
		}
		reply("accepted", out)
	case verb == "get" && jobID != "":
		var req protocol.DescribeRequest
		if err := strictJSON(payload, &req); err != nil {
			reject(tok.ClientToken, err)
			return
		}
		include := req.IncludeJobDocument == nil || *req.IncludeJobDocument
		exec, err := s.cfg.Jobs.Describe(thing, jobID, req.ExecutionNumber, include)
		if err != nil {
			reject(req.ClientToken, err)
			return
		}
		if exec == nil {
			reject(req.ClientToken, &JobError{Code: protocol.JobsResourceNotFound, Message: fmt.Sprintf("no job execution %s for thing %s", jobID, thing)})
			return
		}
		reply("accepted", protocol.ExecutionAccepted{Execution: exec, Timestamp: now, ClientToken: req.ClientToken})
	case verb == "update" && jobID != "":
		var req protocol.UpdateRequest
		if err := strictJSON(payload, &req); err != nil {
			reject(tok.ClientToken, err)
			return
		}
		if req.Status == "" {
			reject(req.ClientToken, &JobError{Code: protocol.JobsInvalidRequest, Message: "status is required"})
			return
		}
		exec, err := s.cfg.Jobs.Update(thing, jobID, req)
		if err != nil {
			reject(req.ClientToken, err)
			return
		}
		log.Info("job execution updated", "jobId", jobID, "status", exec.Status, "versionNumber", exec.VersionNumber)
		out := protocol.UpdateAccepted{Timestamp: now, ClientToken: req.ClientToken}
		if req.IncludeJobExecutionState {
			out.ExecutionState = &protocol.ExecutionState{Status: exec.Status, StatusDetails: exec.StatusDetails, VersionNumber: exec.VersionNumber}
		}
		if req.IncludeJobDocument && len(exec.JobDocument) > 0 {
			out.JobDocument = exec.JobDocument
		}
		reply("accepted", out)
	default:
		reject(tok.ClientToken, &JobError{Code: protocol.JobsInvalidTopic, Message: "unknown jobs topic " + protocol.JobsTopic(thing, op)})
	}
}

// strictJSON decodes a request: wrong types and trailing data are
// InvalidJson. Unknown fields are ignored, as AWS's JSON services ignore
// members they do not know.
func strictJSON(payload []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(v); err != nil {
		return &JobError{Code: protocol.JobsInvalidJSON, Message: err.Error()}
	}
	if dec.More() {
		return &JobError{Code: protocol.JobsInvalidJSON, Message: "trailing data after the JSON object"}
	}
	return nil
}

// JobExecutionEvent describes a change of a job execution, for
// JobExecutionChanged.
type JobExecutionEvent struct {
	ThingName     string
	JobID         string
	Status        protocol.JobStatus // new status
	OldStatus     protocol.JobStatus // "" for a new (QUEUED) execution
	StatusDetails map[string]string
	Operation     string // "update", "start", "queue", "cancel", "timeout" ...
	// NoEvent: JOB_EXECUTION events are disabled (UpdateEventConfigurations);
	// only the device's notify and notify-next go out.
	NoEvent bool
}

// JobExecutionChanged publishes what AWS publishes when a job execution
// changes: $aws/events/jobExecution/{jobId}/{status} (unless ev.NoEvent: as
// in AWS only with JOB_EXECUTION event configurations enabled), and to the
// device, when an execution is new or became terminal, .../jobs/notify with
// its pending list and .../jobs/notify-next with the next pending execution.
func (s *Server) JobExecutionChanged(ev JobExecutionEvent) {
	now := s.cfg.Clock.Now()
	event := map[string]any{
		"eventType": "JOB_EXECUTION",
		"eventId":   randomID(),
		"timestamp": now.Unix(),
		"operation": ev.Operation,
		"jobId":     ev.JobID,
		"thingArn":  s.arn("thing", ev.ThingName),
		"status":    ev.Status,
	}
	if len(ev.StatusDetails) > 0 {
		event["statusDetails"] = ev.StatusDetails
	}
	b, _ := json.Marshal(event)
	s.log.Info("job execution event", "thing", ev.ThingName, "jobId", ev.JobID, "from", ev.OldStatus, "to", ev.Status, "operation", ev.Operation, "published", !ev.NoEvent)
	if !ev.NoEvent {
		if err := s.Publish("$aws/events/jobExecution/"+ev.JobID+"/"+strings.ToLower(string(ev.Status)), b, 1); err != nil {
			s.log.Error("publishing job execution event", "err", err)
		}
	}
	// notify and notify-next go out when an execution joins or leaves the
	// thing's pending list ("Jobs device MQTT API": notify "whenever a job
	// execution is added to or removed from the list of pending job
	// executions").
	if s.cfg.Jobs == nil || !(ev.OldStatus == "" || ev.Status.Terminal()) {
		return
	}
	inProgress, queued, err := s.cfg.Jobs.Pending(ev.ThingName)
	if err != nil {
		s.log.Error("listing pending jobs for notify", "thing", ev.ThingName, "err", err)
		return
	}
	jobs := map[protocol.JobStatus][]protocol.JobExecutionSummary{}
	if len(inProgress) > 0 {
		jobs[protocol.JobInProgress] = inProgress
	}
	if len(queued) > 0 {
		jobs[protocol.JobQueued] = queued
	}
	b, _ = json.Marshal(map[string]any{"timestamp": now.Unix(), "jobs": jobs})
	if err := s.Publish(protocol.JobsTopic(ev.ThingName, protocol.JobsNotify), b, 1); err != nil {
		s.log.Error("publishing notify", "err", err)
	}
	s.NotifyNext(ev.ThingName)
}

// NotifyNext publishes .../jobs/notify-next with the thing's next pending
// execution (without "execution" when there is none).
func (s *Server) NotifyNext(thing string) {
	if s.cfg.Jobs == nil {
		return
	}
	exec, err := s.cfg.Jobs.Describe(thing, protocol.JobsNextID, nil, true)
	if err != nil {
		var je *JobError
		if !errors.As(err, &je) || je.Code != protocol.JobsResourceNotFound {
			s.log.Error("describing next job for notify-next", "thing", thing, "err", err)
			return
		}
		exec = nil
	}
	b, _ := json.Marshal(protocol.ExecutionAccepted{Execution: exec, Timestamp: s.cfg.Clock.Now().Unix()})
	if err := s.Publish(protocol.JobsTopic(thing, protocol.JobsNotifyNext), b, 1); err != nil {
		s.log.Error("publishing notify-next", "err", err)
	}
}
