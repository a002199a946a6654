package registry

import (
	"encoding/json"
	"maps"
	"regexp"
	"slices"
	"sort"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/bootcert/bootcert/protocol"
)

// Limits of the Jobs APIs
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CancelJobExecution.html:
// "You can specify at most 10 name/value pairs";
// https://docs.aws.amazon.com/iot/latest/apireference/API_iot-jobs-data_JobExecutionState.html:
// keys [a-zA-Z0-9:_-]{1,128}, values 1 to 1024 characters without control
// characters; job documents at most 32 KB,
// https://docs.aws.amazon.com/general/latest/gr/iot_device_management.html).
const (
	MaxStatusDetails      = 10
	MaxStatusDetailKey    = 128
	MaxStatusDetailValue  = 1024
	MaxJobDocument        = 32 * 1024
	MaxStepTimeoutMinutes = 10080
	MaxJobTargets         = 100
)

var statusKeyRE = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)

// CheckStatusDetails validates a statusDetails map against AWS's limits.
func CheckStatusDetails(d map[string]string) error {
	if len(d) > MaxStatusDetails {
		return invalid("statusDetails", "%d entries: at most %d", len(d), MaxStatusDetails)
	}
	for k, v := range d {
		if !statusKeyRE.MatchString(k) {
			return invalid("statusDetails", "key %q: 1-128 characters of [a-zA-Z0-9:_-]", k)
		}
		n := utf8.RuneCountInString(v)
		if n < 1 || n > MaxStatusDetailValue {
			return invalid("statusDetails", "value of %q: 1 to %d characters, got %d", k, MaxStatusDetailValue, n)
		}
		for _, c := range v {
			if unicode.IsControl(c) || c == utf8.RuneError {
				return invalid("statusDetails", "value of %q contains a control or invalid character", k)
			}
		}
	}
	return nil
}

func checkStepTimeout(m *int64) error {
	if m != nil && (*m < 1 || *m > MaxStepTimeoutMinutes) {
		return invalid("stepTimeoutInMinutes", "must be 1 to %d, got %d", MaxStepTimeoutMinutes, *m)
	}
	return nil
}

// CreateJobInput is CreateJob's input.
type CreateJobInput struct {
	JobID                      string
	Targets                    []string // thing group or thing ARNs
	Document                   string
	TargetSelection            string // CONTINUOUS or SNAPSHOT (default)
	Description                string
	InProgressTimeoutInMinutes int64
	// MaxPerMinute is jobExecutionsRolloutConfig.maximumPerMinute (1-1000;
	// zero: not set).
	MaxPerMinute int
	Abort        []AbortCriteria
}

// Limits of CreateJob's rollout and abort configurations
// (https://docs.aws.amazon.com/iot/latest/apireference/API_JobExecutionsRolloutConfig.html,
// https://docs.aws.amazon.com/iot/latest/apireference/API_AbortCriteria.html).
const (
	MaxRolloutPerMinute = 1000
)

func checkAbort(list []AbortCriteria) error {
	for i, c := range list {
		switch c.FailureType {
		case "FAILED", "REJECTED", "TIMED_OUT", "ALL":
		default:
			return invalid("abortConfig.criteriaList", "[%d].failureType %q: FAILED, REJECTED, TIMED_OUT or ALL", i, c.FailureType)
		}
		if c.Action != "CANCEL" {
			return invalid("abortConfig.criteriaList", "[%d].action %q: only CANCEL", i, c.Action)
		}
		if c.Threshold <= 0 || c.Threshold > 100 {
			return invalid("abortConfig.criteriaList", "[%d].thresholdPercentage %v: above 0, at most 100", i, c.Threshold)
		}
		if c.MinExecuted < 1 {
			return invalid("abortConfig.criteriaList", "[%d].minNumberOfExecutedThings %d: at least 1", i, c.MinExecuted)
		}
	}
	return nil
}

// CreateJob creates a job and queues an execution for every thing it
// targets now; a continuous job also queues one for every thing that joins
// a target group later
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CreateJob.html).
func (r *Registry) CreateJob(in CreateJobInput) (Job, error) {
	if !jobIDRE.MatchString(in.JobID) {
		return Job{}, invalid("jobId", "%q: 1-64 characters of [a-zA-Z0-9_-]", in.JobID)
	}
	sel := in.TargetSelection
	if sel == "" {
		sel = TargetSnapshot
	}
	if sel != TargetSnapshot && sel != TargetContinuous {
		return Job{}, invalid("targetSelection", "must be CONTINUOUS or SNAPSHOT, got %q", sel)
	}
	if len(in.Targets) == 0 || len(in.Targets) > MaxJobTargets {
		return Job{}, invalid("targets", "1 to %d thing or thing group ARNs", MaxJobTargets)
	}
	if len(in.Document) > MaxJobDocument {
		return Job{}, invalid("document", "%d bytes: at most %d", len(in.Document), MaxJobDocument)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(in.Document), &doc); err != nil {
		return Job{}, invalid("document", "not a JSON object: %v", err)
	}
	if in.InProgressTimeoutInMinutes < 0 || in.InProgressTimeoutInMinutes > MaxStepTimeoutMinutes {
		return Job{}, invalid("timeoutConfig.inProgressTimeoutInMinutes", "must be 1 to %d", MaxStepTimeoutMinutes)
	}
	if in.MaxPerMinute < 0 || in.MaxPerMinute > MaxRolloutPerMinute {
		return Job{}, invalid("jobExecutionsRolloutConfig.maximumPerMinute", "must be 1 to %d, got %d", MaxRolloutPerMinute, in.MaxPerMinute)
	}
	if err := checkAbort(in.Abort); err != nil {
		return Job{}, err
	}
	var out Job
	err := r.do(func(now time.Time) error {
		if _, ok := r.st.Jobs[in.JobID]; ok {
			return newErr(CodeAlreadyExists, "job "+in.JobID, "job %s already exists", in.JobID)
		}
		for _, t := range in.Targets {
			if !r.jobTargetExistsLocked(t) {
				return notFound("job target", t)
			}
		}
		j := &Job{ID: in.JobID, ARN: r.arn("job", in.JobID), Description: in.Description, Document: in.Document,
			Targets: append([]string(nil), in.Targets...), TargetSelection: sel, Status: JobInProgress,
			InProgressTimeoutInMinutes: in.InProgressTimeoutInMinutes, CreatedAt: now, LastUpdatedAt: now,
			MaxPerMinute: in.MaxPerMinute, Abort: append([]AbortCriteria(nil), in.Abort...)}
		r.st.Jobs[j.ID] = j
		r.touch()
		r.logDecision("CreateJob", j.ID, "created", "targetSelection", sel, "targets", len(j.Targets))
		for _, thing := range slices.Sorted(maps.Keys(r.st.Things)) {
			if r.targetsLocked(j, thing) {
				r.queueLocked(j, thing, now)
			}
		}
		r.releaseLocked(j, now)
		out = copyJob(j)
		return nil
	})
	return out, err
}

func copyJob(j *Job) Job {
	c := *j
	c.Targets = append([]string(nil), j.Targets...)
	c.Abort = append([]AbortCriteria(nil), j.Abort...)
	c.Held = append([]string(nil), j.Held...)
	c.Notified = append([]time.Time(nil), j.Notified...)
	return c
}

// releaseLocked queues held executions of j as its rollout rate allows:
// at most MaxPerMinute notifications in any minute. AWS:
// "maximumPerMinute: The maximum number of things that will be notified of
// a pending job, per minute"
// (https://docs.aws.amazon.com/iot/latest/apireference/API_JobExecutionsRolloutConfig.html);
// the lab holds the execution itself until its slot, so a device sees it
// no earlier than AWS would notify it.
func (r *Registry) releaseLocked(j *Job, now time.Time) {
	if j.MaxPerMinute <= 0 {
		return
	}
	keep := j.Notified[:0]
	for _, t := range j.Notified {
		if now.Sub(t) < time.Minute {
			keep = append(keep, t)
		}
	}
	j.Notified = keep
	for len(j.Held) > 0 && len(j.Notified) < j.MaxPerMinute && j.Status == JobInProgress {
		thing := j.Held[0]
		j.Held = j.Held[1:]
		j.Notified = append(j.Notified, now)
		r.touch()
		if _, ok := r.st.Things[thing]; ok {
			r.createExecLocked(j, thing, now)
		}
	}
	if j.Status != JobInProgress && len(j.Held) > 0 {
		j.Held = nil
		r.touch()
	}
}

// rolloutLocked releases held executions of every job with a rollout rate.
func (r *Registry) rolloutLocked(now time.Time) {
	for _, id := range slices.Sorted(maps.Keys(r.st.Jobs)) {
		if j := r.st.Jobs[id]; len(j.Held) > 0 {
			r.releaseLocked(j, now)
		}
	}
}

// abortLocked cancels j when one of its abort criteria is met
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-configurations-details.html:
// the job is canceled when the threshold percentage of executions failed
// and at least minNumberOfExecutedThings executions ended). Canceling
// is CancelJob without force: QUEUED executions are canceled, IN_PROGRESS
// ones run on.
func (r *Registry) abortLocked(j *Job, now time.Time) {
	if len(j.Abort) == 0 || j.Status != JobInProgress {
		return
	}
	executed := 0
	failed := map[protocol.JobStatus]int{}
	for _, byJob := range r.st.Execs {
		for _, e := range byJob[j.ID] {
			if e.Status.Terminal() && e.Status != protocol.JobCanceled && e.Status != protocol.JobRemoved {
				executed++
				failed[e.Status]++
			}
		}
	}
	for _, c := range j.Abort {
		n := failed[protocol.JobStatus(c.FailureType)]
		if c.FailureType == "ALL" {
			n = failed[protocol.JobFailed] + failed[protocol.JobRejected] + failed[protocol.JobTimedOut]
		}
		if executed < c.MinExecuted || float64(n)*100 < c.Threshold*float64(executed) {
			continue
		}
		j.Status, j.ReasonCode, j.Comment, j.LastUpdatedAt = JobCanceled, "ABORTED", "abort criteria met: "+c.FailureType, now
		j.Held = nil
		r.touch()
		r.logDecision("AbortJob", j.ID, "canceled", "failureType", c.FailureType, "failed", n, "executed", executed)
		for _, thing := range slices.Sorted(maps.Keys(r.st.Execs)) {
			execs := r.st.Execs[thing][j.ID]
			if len(execs) > 0 && execs[len(execs)-1].Status == protocol.JobQueued {
				r.setStatusLocked(j, execs[len(execs)-1], protocol.JobCanceled, now)
			}
		}
		return
	}
}

func (r *Registry) jobTargetExistsLocked(arn string) bool {
	if g, ok := r.st.Groups[nameFromARN("thinggroup", arn)]; ok && g.ARN == arn {
		return true
	}
	t, ok := r.st.Things[nameFromARN("thing", arn)]
	return ok && t.ARN == arn
}

// targetsLocked reports whether job j targets thing now (directly, through
// a group or through a parent of its groups).
func (r *Registry) targetsLocked(j *Job, thing string) bool {
	if contains(j.Targets, r.ThingARN(thing)) {
		return true
	}
	for g := range r.groupsOfLocked(thing) {
		if contains(j.Targets, r.ThingGroupARN(g)) {
			return true
		}
	}
	return false
}

// queueLocked queues an execution of j for thing unless the thing already
// has one. AWS documents that a continuous job runs on a thing added to a
// target group: "If continuous, the job may also be run on a thing when a
// change is detected in a target. For example, a job will run on a thing
// when the thing is added to a target group, even after the job was
// completed by all things originally in the group"
// (https://docs.aws.amazon.com/iot/latest/apireference/API_JobSummary.html,
// targetSelection). It does not document a second execution for a thing
// that leaves the group and joins it again after its execution ended, so
// the lab does not create one: a thing gets one execution per job (docs/cloud.md,
// "Rotation triggers"; bootcert queues every later rotation as a new
// snapshot job). With a rollout rate the target is held until its slot
// (releaseLocked).
func (r *Registry) queueLocked(j *Job, thing string, now time.Time) {
	if len(r.st.Execs[thing][j.ID]) > 0 || contains(j.Held, thing) {
		return
	}
	if j.MaxPerMinute > 0 {
		j.Held = append(j.Held, thing)
		r.touch()
		r.releaseLocked(j, now)
		return
	}
	r.createExecLocked(j, thing, now)
}

func (r *Registry) createExecLocked(j *Job, thing string, now time.Time) {
	byJob := r.st.Execs[thing]
	if byJob == nil {
		byJob = map[string][]*JobExecution{}
		r.st.Execs[thing] = byJob
	}
	execs := byJob[j.ID]
	num := int64(len(execs)) + 1
	e := &JobExecution{JobID: j.ID, ThingName: thing, ThingARN: r.ThingARN(thing), Status: protocol.JobQueued,
		QueuedAt: now, LastUpdatedAt: now, VersionNumber: 1, ExecutionNumber: num}
	byJob[j.ID] = append(execs, e)
	r.touchRec(recExecs, thing)
	r.logDecision("QueueJobExecution", j.ID+"/"+thing, "queued", "executionNumber", num)
	r.emit(JobExecutionChanged{Exec: copyExec(e), Job: copyJob(j), OldStatus: ""})
}

// setStatusLocked changes an execution's status and bumps its version.
func (r *Registry) setStatusLocked(j *Job, e *JobExecution, status protocol.JobStatus, now time.Time) {
	old := e.Status
	e.Status = status
	e.LastUpdatedAt = now
	e.VersionNumber++
	if status == protocol.JobInProgress && e.StartedAt.IsZero() {
		e.StartedAt = now
		if j.InProgressTimeoutInMinutes > 0 {
			e.InProgressTimeoutAt = now.Add(time.Duration(j.InProgressTimeoutInMinutes) * time.Minute)
		}
	}
	if status.Terminal() {
		e.StepTimeoutAt, e.InProgressTimeoutAt = time.Time{}, time.Time{}
	}
	r.trackTimeout(e)
	// The execution's record, and the job's: maybeCompleteLocked and
	// abortLocked below may change it.
	r.touchRec(recExecs, e.ThingName)
	r.touchRec(recJob, j.ID)
	r.logDecision("JobExecution", j.ID+"/"+e.ThingName, "status "+string(status), "old", old, "version", e.VersionNumber, "executionNumber", e.ExecutionNumber)
	r.emit(JobExecutionChanged{Exec: copyExec(e), Job: copyJob(j), OldStatus: old})
	if status.Terminal() {
		r.abortLocked(j, now)
		r.maybeCompleteLocked(j, now)
	}
}

// maybeCompleteLocked completes a snapshot job whose executions are all
// terminal (continuous jobs stay IN_PROGRESS).
func (r *Registry) maybeCompleteLocked(j *Job, now time.Time) {
	if j.TargetSelection != TargetSnapshot || j.Status != JobInProgress || len(j.Held) > 0 {
		return
	}
	for _, byJob := range r.st.Execs {
		for _, e := range byJob[j.ID] {
			if !e.Status.Terminal() {
				return
			}
		}
	}
	j.Status = JobCompleted
	j.CompletedAt, j.LastUpdatedAt = now, now
	r.logDecision("Job", j.ID, "completed")
}

// trackTimeout keeps r.timed in step with e.
func (r *Registry) trackTimeout(e *JobExecution) {
	if e.Status == protocol.JobInProgress && !e.TimeoutAt().IsZero() {
		r.timed[e] = true
	} else {
		delete(r.timed, e)
	}
}

// expireLocked times out IN_PROGRESS executions whose step or in-progress
// timer has run out
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-configurations-details.html#job-timeouts).
func (r *Registry) expireLocked(now time.Time) {
	var due []*JobExecution
	for e := range r.timed {
		if !now.Before(e.TimeoutAt()) {
			due = append(due, e)
		}
	}
	sort.Slice(due, func(a, b int) bool {
		if due[a].ThingName != due[b].ThingName {
			return due[a].ThingName < due[b].ThingName
		}
		return due[a].JobID < due[b].JobID
	})
	for _, e := range due {
		if j := r.st.Jobs[e.JobID]; j != nil {
			r.setStatusLocked(j, e, protocol.JobTimedOut, now)
		} else {
			delete(r.timed, e)
		}
	}
}

// ExpireTimeouts applies job execution timeouts now (the assembly calls it
// on a ticker of its clock; every other call does it too) and returns the
// next deadline (zero: none).
func (r *Registry) ExpireTimeouts() time.Time {
	var next time.Time
	_ = r.do(func(time.Time) error {
		for e := range r.timed {
			if at := e.TimeoutAt(); next.IsZero() || at.Before(next) {
				next = at
			}
		}
		return nil
	})
	return next
}

// DescribeJob returns a job and the number of executions in each status.
func (r *Registry) DescribeJob(jobID string) (Job, map[protocol.JobStatus]int, error) {
	var out Job
	counts := map[protocol.JobStatus]int{}
	err := r.do(func(time.Time) error {
		j, ok := r.st.Jobs[jobID]
		if !ok {
			return notFound("job", jobID)
		}
		out = copyJob(j)
		for _, byJob := range r.st.Execs {
			for _, e := range byJob[jobID] {
				counts[e.Status]++
			}
		}
		return nil
	})
	return out, counts, err
}

// GetJobDocument returns a job's document.
func (r *Registry) GetJobDocument(jobID string) (string, error) {
	var doc string
	err := r.do(func(time.Time) error {
		j, ok := r.st.Jobs[jobID]
		if !ok {
			return notFound("job", jobID)
		}
		doc = j.Document
		return nil
	})
	return doc, err
}

func (r *Registry) execLocked(thing, jobID string, num *int64) (*JobExecution, *Job, error) {
	j, ok := r.st.Jobs[jobID]
	if !ok {
		return nil, nil, notFound("job", jobID)
	}
	execs := r.st.Execs[thing][jobID]
	if len(execs) == 0 {
		return nil, nil, notFound("job execution", jobID+"/"+thing)
	}
	if num == nil {
		return execs[len(execs)-1], j, nil
	}
	for _, e := range execs {
		if e.ExecutionNumber == *num {
			return e, j, nil
		}
	}
	return nil, nil, notFound("job execution", jobID+"/"+thing)
}

// DescribeJobExecution returns an execution (the latest, or executionNumber
// when given).
func (r *Registry) DescribeJobExecution(jobID, thing string, executionNumber *int64) (JobExecution, error) {
	var out JobExecution
	err := r.do(func(time.Time) error {
		e, _, err := r.execLocked(thing, jobID, executionNumber)
		if err != nil {
			return err
		}
		out = copyExec(e)
		return nil
	})
	return out, err
}

// ListJobExecutionsForThing lists a thing's executions (all of them, newest
// queued first), optionally only those with status.
func (r *Registry) ListJobExecutionsForThing(thing string, status protocol.JobStatus) ([]JobExecution, error) {
	var out []JobExecution
	err := r.do(func(time.Time) error {
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		for _, execs := range r.st.Execs[thing] {
			for _, e := range execs {
				if status == "" || e.Status == status {
					out = append(out, copyExec(e))
				}
			}
		}
		sort.Slice(out, func(a, b int) bool {
			if !out[a].QueuedAt.Equal(out[b].QueuedAt) {
				return out[a].QueuedAt.After(out[b].QueuedAt)
			}
			if out[a].JobID != out[b].JobID {
				return out[a].JobID < out[b].JobID
			}
			return out[a].ExecutionNumber > out[b].ExecutionNumber
		})
		return nil
	})
	return out, err
}

// CancelJobExecution cancels a thing's execution: QUEUED becomes CANCELED;
// IN_PROGRESS only with force; a terminal one is InvalidStateTransition
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CancelJobExecution.html).
func (r *Registry) CancelJobExecution(jobID, thing string, force bool, expectedVersion *int64, statusDetails map[string]string) error {
	if err := CheckStatusDetails(statusDetails); err != nil {
		return err
	}
	return r.do(func(now time.Time) error {
		e, j, err := r.execLocked(thing, jobID, nil)
		if err != nil {
			return err
		}
		if expectedVersion != nil && *expectedVersion != e.VersionNumber {
			return newErr(CodeVersionMismatch, "job execution "+jobID+"/"+thing, "expected version %d, current version is %d", *expectedVersion, e.VersionNumber)
		}
		switch {
		case e.Status.Terminal():
			return newErr(CodeInvalidStateTransition, "job execution "+jobID+"/"+thing, "execution is %s (terminal)", e.Status)
		case e.Status == protocol.JobInProgress && !force:
			return newErr(CodeInvalidStateTransition, "job execution "+jobID+"/"+thing, "execution is IN_PROGRESS: use force to cancel it")
		}
		if statusDetails != nil {
			e.StatusDetails = copyMap(statusDetails)
		}
		e.ForceCanceled = e.Status == protocol.JobInProgress
		r.setStatusLocked(j, e, protocol.JobCanceled, now)
		return nil
	})
}

// pendingLocked returns a thing's non-terminal latest executions of
// in-progress jobs: IN_PROGRESS first, then QUEUED, each oldest first.
func (r *Registry) pendingLocked(thing string) (inProgress, queued []*JobExecution) {
	for jobID, execs := range r.st.Execs[thing] {
		j := r.st.Jobs[jobID]
		if j == nil || j.Status != JobInProgress {
			continue
		}
		e := execs[len(execs)-1]
		switch e.Status {
		case protocol.JobInProgress:
			inProgress = append(inProgress, e)
		case protocol.JobQueued:
			queued = append(queued, e)
		}
	}
	order := func(l []*JobExecution) {
		sort.Slice(l, func(a, b int) bool {
			if !l[a].QueuedAt.Equal(l[b].QueuedAt) {
				return l[a].QueuedAt.Before(l[b].QueuedAt)
			}
			return l[a].JobID < l[b].JobID
		})
	}
	order(inProgress)
	order(queued)
	return inProgress, queued
}

// GetPendingJobExecutions is the Jobs API's get (topic
// $aws/things/{thing}/jobs/get): the thing's IN_PROGRESS and QUEUED
// executions
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-mqtt-api.html).
func (r *Registry) GetPendingJobExecutions(thing string) (inProgress, queued []JobExecutionSummary, err error) {
	err = r.do(func(time.Time) error {
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		ip, q := r.pendingLocked(thing)
		for _, e := range ip {
			inProgress = append(inProgress, e.Summary())
		}
		for _, e := range q {
			queued = append(queued, e.Summary())
		}
		return nil
	})
	return inProgress, queued, err
}

// NextPendingJobExecution returns the execution $next names: the oldest
// IN_PROGRESS one, else the oldest QUEUED one; ok is false when none.
func (r *Registry) NextPendingJobExecution(thing string) (e JobExecution, j Job, ok bool, err error) {
	err = r.do(func(time.Time) error {
		if _, found := r.st.Things[thing]; !found {
			return notFound("thing", thing)
		}
		if n := r.nextLocked(thing); n != nil {
			e, j, ok = copyExec(n), copyJob(r.st.Jobs[n.JobID]), true
		}
		return nil
	})
	return e, j, ok, err
}

func (r *Registry) nextLocked(thing string) *JobExecution {
	ip, q := r.pendingLocked(thing)
	if len(ip) > 0 {
		return ip[0]
	}
	if len(q) > 0 {
		return q[0]
	}
	return nil
}

// StartNextPendingJobExecution is the Jobs API's start-next: the next
// pending execution; a QUEUED one becomes IN_PROGRESS with statusDetails and
// the step timeout (an IN_PROGRESS one is returned unchanged). ok is false
// when nothing is pending
// (https://docs.aws.amazon.com/iot/latest/apireference/API_iot-jobs-data_StartNextPendingJobExecution.html).
func (r *Registry) StartNextPendingJobExecution(thing string, statusDetails map[string]string, stepTimeoutMinutes *int64) (e JobExecution, j Job, ok bool, err error) {
	if err := CheckStatusDetails(statusDetails); err != nil {
		return e, j, false, err
	}
	if err := checkStepTimeout(stepTimeoutMinutes); err != nil {
		return e, j, false, err
	}
	err = r.do(func(now time.Time) error {
		if _, found := r.st.Things[thing]; !found {
			return notFound("thing", thing)
		}
		n := r.nextLocked(thing)
		if n == nil {
			return nil
		}
		job := r.st.Jobs[n.JobID]
		if n.Status == protocol.JobQueued {
			if statusDetails != nil {
				n.StatusDetails = copyMap(statusDetails)
			}
			if stepTimeoutMinutes != nil {
				n.StepTimeoutAt = now.Add(time.Duration(*stepTimeoutMinutes) * time.Minute)
			}
			r.setStatusLocked(job, n, protocol.JobInProgress, now)
		}
		e, j, ok = copyExec(n), copyJob(job), true
		return nil
	})
	return e, j, ok, err
}

// UpdateJobExecutionInput is UpdateJobExecution's input.
type UpdateJobExecutionInput struct {
	ThingName            string
	JobID                string
	Status               protocol.JobStatus // IN_PROGRESS, SUCCEEDED, FAILED or REJECTED
	StatusDetails        map[string]string
	ExpectedVersion      *int64
	ExecutionNumber      *int64
	StepTimeoutInMinutes *int64
}

// UpdateJobExecution is the Jobs API's update: a device moves its execution
// from QUEUED or IN_PROGRESS to IN_PROGRESS, SUCCEEDED, FAILED or REJECTED
// (https://docs.aws.amazon.com/iot/latest/apireference/API_iot-jobs-data_UpdateJobExecution.html).
// A terminal execution is InvalidStateTransition; ExpectedVersion different
// from the current version is VersionMismatch. The returned execution is
// the current state, also on VersionMismatch and InvalidStateTransition
// (the MQTT rejection carries it when includeJobExecutionState is set).
func (r *Registry) UpdateJobExecution(in UpdateJobExecutionInput) (JobExecution, Job, error) {
	switch in.Status {
	case protocol.JobInProgress, protocol.JobSucceeded, protocol.JobFailed, protocol.JobRejected:
	default:
		return JobExecution{}, Job{}, invalid("status", "a device can set IN_PROGRESS, SUCCEEDED, FAILED or REJECTED, not %q", in.Status)
	}
	if err := CheckStatusDetails(in.StatusDetails); err != nil {
		return JobExecution{}, Job{}, err
	}
	if err := checkStepTimeout(in.StepTimeoutInMinutes); err != nil {
		return JobExecution{}, Job{}, err
	}
	var out JobExecution
	var job Job
	err := r.do(func(now time.Time) error {
		e, j, err := r.execLocked(in.ThingName, in.JobID, in.ExecutionNumber)
		if err != nil {
			return err
		}
		out, job = copyExec(e), copyJob(j)
		res := "job execution " + in.JobID + "/" + in.ThingName
		if in.ExpectedVersion != nil && *in.ExpectedVersion != e.VersionNumber {
			r.logDecision("UpdateJobExecution", res, "rejected: version mismatch", "expected", *in.ExpectedVersion, "current", e.VersionNumber)
			return newErr(CodeVersionMismatch, res, "expected version %d, current version is %d", *in.ExpectedVersion, e.VersionNumber)
		}
		if e.Status.Terminal() {
			r.logDecision("UpdateJobExecution", res, "rejected: terminal", "status", e.Status)
			return newErr(CodeInvalidStateTransition, res, "execution is %s (terminal), cannot become %s", e.Status, in.Status)
		}
		if in.StatusDetails != nil {
			e.StatusDetails = copyMap(in.StatusDetails)
		}
		if in.StepTimeoutInMinutes != nil && in.Status == protocol.JobInProgress {
			e.StepTimeoutAt = now.Add(time.Duration(*in.StepTimeoutInMinutes) * time.Minute)
		}
		r.setStatusLocked(j, e, in.Status, now)
		out = copyExec(e)
		return nil
	})
	return out, job, err
}
