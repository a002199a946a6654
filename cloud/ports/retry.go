package ports

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// Backoff retries throttled calls with exponential backoff and full jitter,
// never past the context's deadline (or Budget from the first call when the
// context has none). It gives up with the last error, which still wraps
// ErrThrottled, so the caller can answer THROTTLED with retryable: true.
type Backoff struct {
	Clock  clock.Clock   // default clock.Real
	Base   time.Duration // first cap, default 50 ms
	Max    time.Duration // largest cap, default 2 s
	Budget time.Duration // used when ctx has no deadline, default 10 s
	// Margin is kept free before the deadline to reply, default 500 ms.
	Margin time.Duration
	Rand   func(n int64) int64 // default math/rand/v2 Int64N
}

func (b Backoff) withDefaults() Backoff {
	if b.Clock == nil {
		b.Clock = clock.Real{}
	}
	if b.Base <= 0 {
		b.Base = 50 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 2 * time.Second
	}
	if b.Budget <= 0 {
		b.Budget = 10 * time.Second
	}
	if b.Margin <= 0 {
		b.Margin = 500 * time.Millisecond
	}
	if b.Rand == nil {
		b.Rand = rand.Int64N
	}
	return b
}

// Do calls fn until it returns something other than a throttling error.
func (b Backoff) Do(ctx context.Context, what string, fn func() error) error {
	b = b.withDefaults()
	start := b.Clock.Now()
	deadline := start.Add(b.Budget)
	if d, ok := ctx.Deadline(); ok {
		// the context's deadline is wall-clock time: keep what is left of
		// it, on b.Clock's time line (an injected clock in tests)
		deadline = start.Add(time.Until(d))
	}
	deadline = deadline.Add(-b.Margin)
	limit := b.Base
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !errors.Is(err, ErrThrottled) {
			return err
		}
		wait := time.Duration(b.Rand(int64(limit)) + 1)
		if b.Clock.Now().Add(wait).After(deadline) {
			return fmt.Errorf("%s: still throttled after %d attempts, giving up before the deadline: %w", what, attempt, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (while throttled: %w)", what, ctx.Err(), err)
		case <-b.Clock.After(wait):
		}
		if limit *= 2; limit > b.Max {
			limit = b.Max
		}
	}
}

// RetryingRegistry wraps a Registry so that every call is retried with b
// while throttled.
func RetryingRegistry(r Registry, b Backoff) Registry { return retrying{r, b} }

type retrying struct {
	r Registry
	b Backoff
}

func do1[T any](ctx context.Context, b Backoff, what string, fn func() (T, error)) (T, error) {
	var v T
	err := b.Do(ctx, what, func() error {
		var err error
		v, err = fn()
		return err
	})
	return v, err
}

func (x retrying) DescribeCertificate(ctx context.Context, id string) (Certificate, error) {
	return do1(ctx, x.b, "DescribeCertificate", func() (Certificate, error) { return x.r.DescribeCertificate(ctx, id) })
}
func (x retrying) UpdateCertificate(ctx context.Context, id, status string) error {
	return x.b.Do(ctx, "UpdateCertificate", func() error { return x.r.UpdateCertificate(ctx, id, status) })
}
func (x retrying) DeleteCertificate(ctx context.Context, id string) error {
	return x.b.Do(ctx, "DeleteCertificate", func() error { return x.r.DeleteCertificate(ctx, id) })
}
func (x retrying) CreateCertificateFromCSR(ctx context.Context, csrPEM string, active bool) (Certificate, error) {
	return do1(ctx, x.b, "CreateCertificateFromCsr", func() (Certificate, error) { return x.r.CreateCertificateFromCSR(ctx, csrPEM, active) })
}
func (x retrying) CreateThing(ctx context.Context, name, thingType string, attrs map[string]string) error {
	return x.b.Do(ctx, "CreateThing", func() error { return x.r.CreateThing(ctx, name, thingType, attrs) })
}
func (x retrying) DescribeThing(ctx context.Context, name string) (Thing, error) {
	return do1(ctx, x.b, "DescribeThing", func() (Thing, error) { return x.r.DescribeThing(ctx, name) })
}
func (x retrying) UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error {
	return x.b.Do(ctx, "UpdateThing", func() error { return x.r.UpdateThingAttributes(ctx, name, attrs) })
}
func (x retrying) ListThings(ctx context.Context, thingType, next string) ([]Thing, string, error) {
	var things []Thing
	var n string
	err := x.b.Do(ctx, "ListThings", func() error {
		var err error
		things, n, err = x.r.ListThings(ctx, thingType, next)
		return err
	})
	return things, n, err
}
func (x retrying) AttachPolicy(ctx context.Context, policy, target string) error {
	return x.b.Do(ctx, "AttachPolicy", func() error { return x.r.AttachPolicy(ctx, policy, target) })
}
func (x retrying) DetachPolicy(ctx context.Context, policy, target string) error {
	return x.b.Do(ctx, "DetachPolicy", func() error { return x.r.DetachPolicy(ctx, policy, target) })
}
func (x retrying) AttachThingPrincipal(ctx context.Context, thing, principal string) error {
	return x.b.Do(ctx, "AttachThingPrincipal", func() error { return x.r.AttachThingPrincipal(ctx, thing, principal) })
}
func (x retrying) DetachThingPrincipal(ctx context.Context, thing, principal string) error {
	return x.b.Do(ctx, "DetachThingPrincipal", func() error { return x.r.DetachThingPrincipal(ctx, thing, principal) })
}
func (x retrying) ListThingPrincipals(ctx context.Context, thing string) ([]string, error) {
	return do1(ctx, x.b, "ListThingPrincipals", func() ([]string, error) { return x.r.ListThingPrincipals(ctx, thing) })
}
func (x retrying) AddThingToGroup(ctx context.Context, group, thing string) error {
	return x.b.Do(ctx, "AddThingToThingGroup", func() error { return x.r.AddThingToGroup(ctx, group, thing) })
}
func (x retrying) RemoveThingFromGroup(ctx context.Context, group, thing string) error {
	return x.b.Do(ctx, "RemoveThingFromThingGroup", func() error { return x.r.RemoveThingFromGroup(ctx, group, thing) })
}
func (x retrying) ListThingGroupsForThing(ctx context.Context, thing string) ([]string, error) {
	return do1(ctx, x.b, "ListThingGroupsForThing", func() ([]string, error) { return x.r.ListThingGroupsForThing(ctx, thing) })
}
func (x retrying) JobExecutionStatus(ctx context.Context, jobID, thing string) (protocol.JobStatus, error) {
	return do1(ctx, x.b, "DescribeJobExecution", func() (protocol.JobStatus, error) { return x.r.JobExecutionStatus(ctx, jobID, thing) })
}
