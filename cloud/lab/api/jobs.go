package api

import (
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/protocol"
)

// The Jobs operations keep map replies for now: their shape grows with the
// Jobs features (timeouts, abort, rollout) and each key is set where it is
// known.

func (s *Server) createJob(q *request) (any, error) {
	var in struct {
		Targets         []string `json:"targets"`
		Document        string   `json:"document"`
		DocumentSource  string   `json:"documentSource"`
		TargetSelection string   `json:"targetSelection"`
		Description     string   `json:"description"`
		TimeoutConfig   *struct {
			InProgressTimeoutInMinutes int64 `json:"inProgressTimeoutInMinutes"`
		} `json:"timeoutConfig"`
		RolloutConfig *struct {
			MaximumPerMinute int `json:"maximumPerMinute"`
		} `json:"jobExecutionsRolloutConfig"`
		AbortConfig *struct {
			CriteriaList []registry.AbortCriteria `json:"criteriaList"`
		} `json:"abortConfig"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.DocumentSource != "" {
		return nil, errInvalid("documentSource (a document in S3) is not supported by the lab: pass document")
	}
	ci := registry.CreateJobInput{JobID: q.v("jobId"), Targets: in.Targets, Document: in.Document,
		TargetSelection: in.TargetSelection, Description: in.Description}
	if in.TimeoutConfig != nil {
		ci.InProgressTimeoutInMinutes = in.TimeoutConfig.InProgressTimeoutInMinutes
	}
	if in.RolloutConfig != nil {
		ci.MaxPerMinute = in.RolloutConfig.MaximumPerMinute
	}
	if in.AbortConfig != nil {
		ci.Abort = in.AbortConfig.CriteriaList
	}
	j, err := s.reg.CreateJob(ci)
	if err != nil {
		return nil, err
	}
	return map[string]any{"jobArn": j.ARN, "jobId": j.ID, "description": strPtr(j.Description)}, nil
}

func (s *Server) describeJob(q *request) (any, error) {
	j, counts, err := s.reg.DescribeJob(q.v("jobId"))
	if err != nil {
		return nil, err
	}
	job := map[string]any{"jobArn": j.ARN, "jobId": j.ID, "targetSelection": j.TargetSelection, "status": j.Status,
		"forceCanceled": j.ForceCanceled, "targets": j.Targets, "description": strPtr(j.Description),
		"createdAt": epoch(j.CreatedAt), "lastUpdatedAt": epoch(j.LastUpdatedAt), "completedAt": epoch(j.CompletedAt),
		"jobProcessDetails": map[string]int{
			"numberOfCanceledThings":   counts[protocol.JobCanceled],
			"numberOfSucceededThings":  counts[protocol.JobSucceeded],
			"numberOfFailedThings":     counts[protocol.JobFailed],
			"numberOfRejectedThings":   counts[protocol.JobRejected],
			"numberOfQueuedThings":     counts[protocol.JobQueued],
			"numberOfInProgressThings": counts[protocol.JobInProgress],
			"numberOfRemovedThings":    counts[protocol.JobRemoved],
			"numberOfTimedOutThings":   counts[protocol.JobTimedOut],
		}}
	if j.InProgressTimeoutInMinutes > 0 {
		job["timeoutConfig"] = map[string]int64{"inProgressTimeoutInMinutes": j.InProgressTimeoutInMinutes}
	}
	return map[string]any{"job": job}, nil
}

func (s *Server) execution(e registry.JobExecution) map[string]any {
	out := map[string]any{"jobId": e.JobID, "status": e.Status, "forceCanceled": e.ForceCanceled,
		"thingArn": e.ThingARN, "queuedAt": epoch(e.QueuedAt), "startedAt": epoch(e.StartedAt),
		"lastUpdatedAt": epoch(e.LastUpdatedAt), "executionNumber": e.ExecutionNumber, "versionNumber": e.VersionNumber,
		"statusDetails": map[string]any{"detailsMap": e.StatusDetails}}
	if at := e.TimeoutAt(); !at.IsZero() && e.Status == protocol.JobInProgress {
		out["approximateSecondsBeforeTimedOut"] = max(0, int64(at.Sub(s.reg.Now()).Seconds()))
	}
	return out
}

func (s *Server) describeJobExecution(q *request) (any, error) {
	num, err := q.intQuery("executionNumber")
	if err != nil {
		return nil, err
	}
	thing := q.v("thingName")
	e, err := s.reg.DescribeJobExecution(q.v("jobId"), thing, num)
	if err != nil {
		return nil, err
	}
	return map[string]any{"execution": s.execution(e)}, nil
}

func (s *Server) listJobExecutionsForThing(q *request) (any, error) {
	execs, err := s.reg.ListJobExecutionsForThing(q.v("thingName"), protocol.JobStatus(q.query.Get("status")))
	if err != nil {
		return nil, err
	}
	if job := q.query.Get("jobId"); job != "" {
		kept := execs[:0]
		for _, e := range execs {
			if e.JobID == job {
				kept = append(kept, e)
			}
		}
		execs = kept
	}
	type summary struct {
		JobID   string         `json:"jobId"`
		Summary map[string]any `json:"jobExecutionSummary"`
	}
	list := make([]summary, len(execs))
	for i, e := range execs {
		list[i] = summary{e.JobID, map[string]any{"status": e.Status, "queuedAt": epoch(e.QueuedAt), "startedAt": epoch(e.StartedAt),
			"lastUpdatedAt": epoch(e.LastUpdatedAt), "executionNumber": e.ExecutionNumber}}
	}
	return listReply(q, "executionSummaries", list, false)
}

func (s *Server) cancelJobExecution(q *request) (any, error) {
	var in struct {
		ExpectedVersion *int64            `json:"expectedVersion"`
		StatusDetails   map[string]string `json:"statusDetails"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	force, err := q.boolQuery("force")
	if err != nil {
		return nil, err
	}
	thing := q.v("thingName")
	return nil, s.reg.CancelJobExecution(q.v("jobId"), thing, force, in.ExpectedVersion, in.StatusDetails)
}

func (s *Server) cancelJob(q *request) (any, error) {
	var in struct {
		Comment    string `json:"comment"`
		ReasonCode string `json:"reasonCode"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	force, err := q.boolQuery("force")
	if err != nil {
		return nil, err
	}
	j, err := s.reg.CancelJob(q.v("jobId"), force, in.Comment, in.ReasonCode)
	if err != nil {
		return nil, err
	}
	return map[string]any{"jobArn": j.ARN, "jobId": j.ID, "description": strPtr(j.Description)}, nil
}

func (s *Server) listJobs(q *request) (any, error) {
	jobs := s.reg.ListJobs(q.query.Get("status"), q.query.Get("targetSelection"), q.query.Get("thingGroupName"))
	list := make([]map[string]any, len(jobs))
	for i, j := range jobs {
		list[i] = map[string]any{"jobArn": j.ARN, "jobId": j.ID, "targetSelection": j.TargetSelection, "status": j.Status,
			"createdAt": epoch(j.CreatedAt), "lastUpdatedAt": epoch(j.LastUpdatedAt), "completedAt": epoch(j.CompletedAt)}
	}
	return listReply(q, "jobs", list, false)
}

func (s *Server) getJobDocument(q *request) (any, error) {
	doc, err := s.reg.GetJobDocument(q.v("jobId"))
	if err != nil {
		return nil, err
	}
	return map[string]string{"document": doc}, nil
}
