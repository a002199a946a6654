package protocol

import (
	"encoding/json"
	"strings"
)

// The AWS IoT Jobs device MQTT API, as bootcertd speaks it and the lab
// serves it ("Jobs device MQTT and HTTPS APIs",
// https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html):
//
//	$aws/things/{thing}/jobs/get                 GetPendingJobExecutions
//	$aws/things/{thing}/jobs/start-next          StartNextPendingJobExecution
//	$aws/things/{thing}/jobs/{jobId}/get         DescribeJobExecution ($next allowed)
//	$aws/things/{thing}/jobs/{jobId}/update      UpdateJobExecution
//
// Each request is answered on its topic + "/accepted" or "/rejected"; the
// service pushes .../jobs/notify and .../jobs/notify-next.

// JobStatus is a job execution's status (API_JobExecution, "status").
type JobStatus string

// Job execution statuses
// (https://docs.aws.amazon.com/iot/latest/developerguide/iot-jobs-lifecycle.html).
const (
	JobQueued     JobStatus = "QUEUED"
	JobInProgress JobStatus = "IN_PROGRESS"
	JobSucceeded  JobStatus = "SUCCEEDED"
	JobFailed     JobStatus = "FAILED"
	JobRejected   JobStatus = "REJECTED"
	JobRemoved    JobStatus = "REMOVED"
	JobCanceled   JobStatus = "CANCELED"
	JobTimedOut   JobStatus = "TIMED_OUT"
)

// Terminal reports whether no further update can change the execution.
func (s JobStatus) Terminal() bool {
	switch s {
	case JobSucceeded, JobFailed, JobRejected, JobRemoved, JobCanceled, JobTimedOut:
		return true
	}
	return false
}

// Pending reports whether the execution is QUEUED or IN_PROGRESS.
func (s JobStatus) Pending() bool { return s == JobQueued || s == JobInProgress }

// Result is how a rotation ended, as bootcertd records it in its journal and
// reports it to the Jobs API (a terminal JobStatus, or "" while none ended).
type Result = JobStatus

// Jobs API operations: the last part of a request topic.
const (
	JobsGetPending = "get"
	JobsStartNext  = "start-next"
	JobsNotify     = "notify"
	JobsNotifyNext = "notify-next"
	JobsNextID     = "$next" // DescribeJobExecution's "next pending" job ID
)

// JobsTopic is $aws/things/{thing}/jobs/{op}.
func JobsTopic(thing, op string) string { return "$aws/things/" + thing + "/jobs/" + op }

// JobDescribeTopic is the DescribeJobExecution topic of a job.
func JobDescribeTopic(thing, jobID string) string { return JobsTopic(thing, jobID+"/get") }

// JobUpdateTopic is the UpdateJobExecution topic of a job.
func JobUpdateTopic(thing, jobID string) string { return JobsTopic(thing, jobID+"/update") }

// ParseJobsTopic splits $aws/things/{thing}/jobs/{op}; op is "get",
// "start-next", "{jobId}/get", "{jobId}/update", or a reply or notification
// topic's rest ("start-next/accepted", "notify-next", ...).
func ParseJobsTopic(topic string) (thing, op string, ok bool) {
	rest, found := strings.CutPrefix(topic, "$aws/things/")
	if !found {
		return "", "", false
	}
	thing, op, found = strings.Cut(rest, "/jobs/")
	if !found || thing == "" || op == "" {
		return "", "", false
	}
	return thing, op, true
}

// JobExecutionSummary is an element of inProgressJobs/queuedJobs and of
// notify's lists. Times are seconds since the epoch, as in the Jobs API.
type JobExecutionSummary struct {
	JobID           string `json:"jobId"`
	QueuedAt        int64  `json:"queuedAt"`
	StartedAt       int64  `json:"startedAt,omitempty"`
	LastUpdatedAt   int64  `json:"lastUpdatedAt"`
	VersionNumber   int64  `json:"versionNumber"`
	ExecutionNumber int64  `json:"executionNumber"`
}

// JobExecution is the execution object of the Jobs MQTT API.
type JobExecution struct {
	JobID           string            `json:"jobId"`
	ThingName       string            `json:"thingName"`
	JobDocument     json.RawMessage   `json:"jobDocument,omitempty"`
	Status          JobStatus         `json:"status"`
	StatusDetails   map[string]string `json:"statusDetails,omitempty"`
	QueuedAt        int64             `json:"queuedAt"`
	StartedAt       int64             `json:"startedAt,omitempty"`
	LastUpdatedAt   int64             `json:"lastUpdatedAt"`
	VersionNumber   int64             `json:"versionNumber"`
	ExecutionNumber int64             `json:"executionNumber"`
}

// ExecutionState is the short state in update replies and rejections.
type ExecutionState struct {
	Status        JobStatus         `json:"status"`
	StatusDetails map[string]string `json:"statusDetails,omitempty"`
	VersionNumber int64             `json:"versionNumber"`
}

// StartNextRequest is the start-next request body.
type StartNextRequest struct {
	StatusDetails        map[string]string `json:"statusDetails,omitempty"`
	StepTimeoutInMinutes *int64            `json:"stepTimeoutInMinutes,omitempty"`
	ClientToken          string            `json:"clientToken,omitempty"`
}

// UpdateRequest is the {jobId}/update request body.
type UpdateRequest struct {
	Status                   JobStatus         `json:"status"`
	StatusDetails            map[string]string `json:"statusDetails,omitempty"`
	ExpectedVersion          *int64            `json:"expectedVersion,omitempty"`
	ExecutionNumber          *int64            `json:"executionNumber,omitempty"`
	IncludeJobExecutionState bool              `json:"includeJobExecutionState,omitempty"`
	IncludeJobDocument       bool              `json:"includeJobDocument,omitempty"`
	StepTimeoutInMinutes     *int64            `json:"stepTimeoutInMinutes,omitempty"`
	ClientToken              string            `json:"clientToken,omitempty"`
}

// DescribeRequest is the {jobId}/get request body.
type DescribeRequest struct {
	ExecutionNumber    *int64 `json:"executionNumber,omitempty"`
	IncludeJobDocument *bool  `json:"includeJobDocument,omitempty"`
	ClientToken        string `json:"clientToken,omitempty"`
}

// GetPendingAccepted is the reply on .../jobs/get/accepted.
type GetPendingAccepted struct {
	InProgressJobs []JobExecutionSummary `json:"inProgressJobs"`
	QueuedJobs     []JobExecutionSummary `json:"queuedJobs"`
	Timestamp      int64                 `json:"timestamp"`
	ClientToken    string                `json:"clientToken,omitempty"`
}

// ExecutionAccepted is the reply on start-next/accepted and
// {jobId}/get/accepted, and the notify-next message (no token there).
// Execution is nil when there is no pending execution.
type ExecutionAccepted struct {
	Execution   *JobExecution `json:"execution,omitempty"`
	Timestamp   int64         `json:"timestamp"`
	ClientToken string        `json:"clientToken,omitempty"`
}

// UpdateAccepted is the reply on {jobId}/update/accepted.
type UpdateAccepted struct {
	ExecutionState *ExecutionState `json:"executionState,omitempty"`
	JobDocument    json.RawMessage `json:"jobDocument,omitempty"`
	Timestamp      int64           `json:"timestamp"`
	ClientToken    string          `json:"clientToken,omitempty"`
}

// JobsRejected is the error response on every .../rejected topic.
type JobsRejected struct {
	Code           JobsErrorCode   `json:"code"`
	Message        string          `json:"message"`
	ClientToken    string          `json:"clientToken,omitempty"`
	Timestamp      int64           `json:"timestamp"`
	ExecutionState *ExecutionState `json:"executionState,omitempty"`
}

// JobsErrorCode is a Jobs MQTT API error code.
type JobsErrorCode string

// Jobs MQTT API error codes ("Jobs device MQTT and HTTPS APIs" > error
// response).
const (
	JobsInvalidTopic           JobsErrorCode = "InvalidTopic"
	JobsInvalidJSON            JobsErrorCode = "InvalidJson"
	JobsInvalidRequest         JobsErrorCode = "InvalidRequest"
	JobsInvalidStateTransition JobsErrorCode = "InvalidStateTransition"
	JobsResourceNotFound       JobsErrorCode = "ResourceNotFound"
	JobsVersionMismatch        JobsErrorCode = "VersionMismatch"
	JobsInternalError          JobsErrorCode = "InternalError"
	JobsRequestThrottled       JobsErrorCode = "RequestThrottled"
	JobsTerminalStateReached   JobsErrorCode = "TerminalStateReached"
)
