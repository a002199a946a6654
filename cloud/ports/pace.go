package ports

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// DefaultQuotas are AWS IoT's default per-account rates (requests per
// second) of the control-plane operations the functions call, keyed by the
// operation's name in the AWS IoT API reference. They are the rows of the
// lab's aws-default preset (cloud/lab/limits.AWSDefaultQuotas, sourced in
// docs/cloud.md "Quotas"); TestDefaultQuotasMatchLab keeps them equal.
// Read your account's values before sizing a rollout:
// aws service-quotas list-service-quotas --service-code iotcore.
var DefaultQuotas = map[string]float64{
	"CreateCertificateFromCsr":  15,
	"DescribeCertificate":       10,
	"UpdateCertificate":         10,
	"DeleteCertificate":         10,
	"AttachPolicy":              15,
	"DetachPolicy":              15,
	"CreateThing":               100,
	"DescribeThing":             350,
	"UpdateThing":               100,
	"AttachThingPrincipal":      100,
	"DetachThingPrincipal":      100,
	"ListThingPrincipals":       10,
	"ListThings":                10,
	"AddThingToThingGroup":      100,
	"RemoveThingFromThingGroup": 100,
	"ListThingGroupsForThing":   100,
	"DescribeJobExecution":      10,
	"CreateJob":                 10,
}

// EnvQuotaShare names the environment variable with the share of each
// DefaultQuotas rate one function process may use (QuotaShareFromEnv).
const EnvQuotaShare = "API_QUOTA_SHARE"

// QuotaShareFromEnv reads EnvQuotaShare: "" means no pacing (0), else a
// number > 0 (1/N for N execution environments that share the account's
// quotas; above 1 for a raised quota or a lab with a scaled preset).
func QuotaShareFromEnv(getenv func(string) string) (float64, error) {
	v := getenv(EnvQuotaShare)
	if v == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || !(f > 0) || f > 1e6 {
		return 0, fmt.Errorf("%s=%q: want a number > 0 (the share of each API's default quota one function process may use)", EnvQuotaShare, v)
	}
	return f, nil
}

// Pacer spaces one process's calls to each API so that they never exceed
// that API's rate: the calls of all goroutines sharing the Pacer leave at
// most one per 1/rate (generic cell rate algorithm, burst 1), in the order
// they asked. A call whose turn would come after its context's deadline
// (less Margin, kept to reply) is not made: Wait returns an error wrapping
// ErrThrottled at once, as the service would have, without spending the
// turn. A Pacer sized from the account's quotas replaces throttling and
// retries by waiting: the retries' calls count against the quota too.
type Pacer struct {
	Clock  clock.Clock        // default clock.Real
	Rates  map[string]float64 // per second by operation; absent or 0: not paced
	Margin time.Duration      // default 500 ms
	// Budget bounds the wait when the context has no deadline, default 10 s.
	Budget time.Duration

	mu   sync.Mutex
	next map[string]time.Time // earliest start of the next call, by operation

	waits  map[string]time.Duration // total time waited, by operation
	refuse map[string]int           // calls refused (turn after the deadline)
}

// NewPacer paces at rates (copied) on clk (nil: clock.Real).
func NewPacer(clk clock.Clock, rates map[string]float64) *Pacer {
	r := make(map[string]float64, len(rates))
	for k, v := range rates {
		r[k] = v
	}
	return &Pacer{Clock: clk, Rates: r}
}

// SharedRates returns DefaultQuotas multiplied by share.
func SharedRates(share float64) map[string]float64 {
	out := make(map[string]float64, len(DefaultQuotas))
	for k, v := range DefaultQuotas {
		out[k] = v * share
	}
	return out
}

// Wait blocks until op's next turn, or fails with an error wrapping
// ErrThrottled when the turn is after the deadline, or with the context's
// error. A nil Pacer never waits.
func (p *Pacer) Wait(ctx context.Context, op string) error {
	if p == nil {
		return nil
	}
	rate := p.Rates[op]
	if rate <= 0 {
		return nil
	}
	clk := p.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	margin, budget := p.Margin, p.Budget
	if margin <= 0 {
		margin = 500 * time.Millisecond
	}
	if budget <= 0 {
		budget = 10 * time.Second
	}
	now := clk.Now()
	// A context's deadline is wall-clock time (context.WithTimeout), the
	// pacer's clock may be a fake one far from it: compare durations.
	left := budget
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	interval := time.Duration(float64(time.Second) / rate)
	p.mu.Lock()
	if p.next == nil {
		p.next, p.waits, p.refuse = map[string]time.Time{}, map[string]time.Duration{}, map[string]int{}
	}
	at := p.next[op]
	if at.Before(now) {
		at = now
	}
	if at.Sub(now) > left-margin {
		p.refuse[op]++
		p.mu.Unlock()
		return fmt.Errorf("%s: the pacer's next turn at %g/s is in %s, past the deadline: %w", op, rate, at.Sub(now).Round(time.Millisecond), ErrThrottled)
	}
	p.next[op] = at.Add(interval)
	wait := at.Sub(now)
	p.waits[op] += wait
	p.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return fmt.Errorf("%s: waiting for the pacer: %w", op, ctx.Err())
	case <-clk.After(wait):
		return nil
	}
}

// PacerStats are a Pacer's totals by operation.
type PacerStats struct {
	Waited  map[string]time.Duration
	Refused map[string]int
}

// Stats returns the time waited and the calls refused, by operation.
func (p *Pacer) Stats() PacerStats {
	s := PacerStats{Waited: map[string]time.Duration{}, Refused: map[string]int{}}
	if p == nil {
		return s
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, v := range p.waits {
		s.Waited[k] = v
	}
	for k, v := range p.refuse {
		s.Refused[k] = v
	}
	return s
}

// PacedRegistry wraps a Registry so that every call first waits for its
// turn at p (nil p: r unchanged).
func PacedRegistry(r Registry, p *Pacer) Registry {
	if p == nil {
		return r
	}
	return paced{r, p}
}

type paced struct {
	r Registry
	p *Pacer
}

func pace1[T any](ctx context.Context, p *Pacer, op string, fn func() (T, error)) (T, error) {
	if err := p.Wait(ctx, op); err != nil {
		var zero T
		return zero, err
	}
	return fn()
}

func (x paced) DescribeCertificate(ctx context.Context, id string) (Certificate, error) {
	return pace1(ctx, x.p, "DescribeCertificate", func() (Certificate, error) { return x.r.DescribeCertificate(ctx, id) })
}
func (x paced) UpdateCertificate(ctx context.Context, id, status string) error {
	return x.do(ctx, "UpdateCertificate", func() error { return x.r.UpdateCertificate(ctx, id, status) })
}
func (x paced) DeleteCertificate(ctx context.Context, id string) error {
	return x.do(ctx, "DeleteCertificate", func() error { return x.r.DeleteCertificate(ctx, id) })
}
func (x paced) CreateCertificateFromCSR(ctx context.Context, csrPEM string, active bool) (Certificate, error) {
	return pace1(ctx, x.p, "CreateCertificateFromCsr", func() (Certificate, error) { return x.r.CreateCertificateFromCSR(ctx, csrPEM, active) })
}
func (x paced) CreateThing(ctx context.Context, name, thingType string, attrs map[string]string) error {
	return x.do(ctx, "CreateThing", func() error { return x.r.CreateThing(ctx, name, thingType, attrs) })
}
func (x paced) DescribeThing(ctx context.Context, name string) (Thing, error) {
	return pace1(ctx, x.p, "DescribeThing", func() (Thing, error) { return x.r.DescribeThing(ctx, name) })
}
func (x paced) UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error {
	return x.do(ctx, "UpdateThing", func() error { return x.r.UpdateThingAttributes(ctx, name, attrs) })
}
func (x paced) ListThings(ctx context.Context, thingType, next string) ([]Thing, string, error) {
	if err := x.p.Wait(ctx, "ListThings"); err != nil {
		return nil, "", err
	}
	return x.r.ListThings(ctx, thingType, next)
}
func (x paced) AttachPolicy(ctx context.Context, policy, target string) error {
	return x.do(ctx, "AttachPolicy", func() error { return x.r.AttachPolicy(ctx, policy, target) })
}
func (x paced) DetachPolicy(ctx context.Context, policy, target string) error {
	return x.do(ctx, "DetachPolicy", func() error { return x.r.DetachPolicy(ctx, policy, target) })
}
func (x paced) AttachThingPrincipal(ctx context.Context, thing, principal string) error {
	return x.do(ctx, "AttachThingPrincipal", func() error { return x.r.AttachThingPrincipal(ctx, thing, principal) })
}
func (x paced) DetachThingPrincipal(ctx context.Context, thing, principal string) error {
	return x.do(ctx, "DetachThingPrincipal", func() error { return x.r.DetachThingPrincipal(ctx, thing, principal) })
}
func (x paced) ListThingPrincipals(ctx context.Context, thing string) ([]string, error) {
	return pace1(ctx, x.p, "ListThingPrincipals", func() ([]string, error) { return x.r.ListThingPrincipals(ctx, thing) })
}
func (x paced) AddThingToGroup(ctx context.Context, group, thing string) error {
	return x.do(ctx, "AddThingToThingGroup", func() error { return x.r.AddThingToGroup(ctx, group, thing) })
}
func (x paced) RemoveThingFromGroup(ctx context.Context, group, thing string) error {
	return x.do(ctx, "RemoveThingFromThingGroup", func() error { return x.r.RemoveThingFromGroup(ctx, group, thing) })
}
func (x paced) ListThingGroupsForThing(ctx context.Context, thing string) ([]string, error) {
	return pace1(ctx, x.p, "ListThingGroupsForThing", func() ([]string, error) { return x.r.ListThingGroupsForThing(ctx, thing) })
}
func (x paced) JobExecutionStatus(ctx context.Context, jobID, thing string) (protocol.JobStatus, error) {
	return pace1(ctx, x.p, "DescribeJobExecution", func() (protocol.JobStatus, error) { return x.r.JobExecutionStatus(ctx, jobID, thing) })
}

func (x paced) do(ctx context.Context, op string, fn func() error) error {
	if err := x.p.Wait(ctx, op); err != nil {
		return err
	}
	return fn()
}

// PacedJobCreator paces CreateJob calls at p (nil p: c unchanged).
func PacedJobCreator(c JobCreator, p *Pacer) JobCreator {
	if p == nil {
		return c
	}
	return pacedJobs{c, p}
}

type pacedJobs struct {
	c JobCreator
	p *Pacer
}

func (x pacedJobs) CreateJob(ctx context.Context, spec JobSpec) error {
	if err := x.p.Wait(ctx, "CreateJob"); err != nil {
		return err
	}
	return x.c.CreateJob(ctx, spec)
}
