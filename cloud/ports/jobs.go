package ports

import (
	"context"
	"time"
)

// JobSpec is a snapshot rotation job: one execution per thing in Things,
// with AWS IoT Jobs' timeout, rollout and abort configurations
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-configurations-details.html).
type JobSpec struct {
	ID       string   // 1-64 characters of [a-zA-Z0-9_-]
	Things   []string // thing names (the adapter turns them into ARNs)
	Document string
	// InProgressTimeout: an execution IN_PROGRESS this long becomes
	// TIMED_OUT (TimeoutConfig.inProgressTimeoutInMinutes, 1 min to 7 days);
	// zero: none.
	InProgressTimeout time.Duration
	// MaxPerMinute bounds how many things are notified per minute
	// (JobExecutionsRolloutConfig.maximumPerMinute, 1-1000); zero: no limit.
	MaxPerMinute int
	// Abort cancels the job when AbortThresholdPercent of at least
	// AbortMinExecuted executions ended FAILED, REJECTED or TIMED_OUT
	// (AbortConfig, failureType ALL, action CANCEL); zero percent: no abort.
	AbortThresholdPercent float64
	AbortMinExecuted      int
	Description           string
}

// JobCreator creates jobs (CreateJob). It is its own interface so that the
// functions that never create jobs do not see it.
type JobCreator interface {
	// CreateJob returns an error wrapping ErrExists when the job ID is taken.
	CreateJob(ctx context.Context, spec JobSpec) error
}

// RetryingJobCreator retries throttled CreateJob calls with b.
func RetryingJobCreator(c JobCreator, b Backoff) JobCreator { return retryingJobs{c, b} }

type retryingJobs struct {
	c JobCreator
	b Backoff
}

func (x retryingJobs) CreateJob(ctx context.Context, spec JobSpec) error {
	return x.b.Do(ctx, "CreateJob", func() error { return x.c.CreateJob(ctx, spec) })
}
