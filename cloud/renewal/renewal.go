// Package renewal is the rotation trigger of the fleet. It runs on a
// schedule and queues a rotation for every activated, allow-listed thing
// that needs one:
//
//   - no operational certificate yet (its first rotation failed or never ran);
//   - an operator asked for one (bootcert-admin cloud rotate sets the thing
//     attribute rotationRequested) after its certificate was issued;
//   - its certificate is close to the fleet's maximum age (MaxAge, with a
//     stable per-thing jitter): the trigger that works with AWS-issued
//     certificates, which CreateCertificateFromCsr makes valid until 2049;
//   - its certificate is in the last RenewalFraction of its life (for
//     certificates with a real notAfter).
//
// It also answers devices' rotate requests (certificates/{thing}/rotate).
//
// Every rotation it queues is a new SNAPSHOT job that targets the things
// themselves (a wave of at most WaveSize), never a second execution of the
// continuous job: AWS documents that a continuous job runs on a thing added
// to its group, not that it runs again for a thing that already has an
// execution (docs/cloud.md, "Rotation triggers"). The thing is also added
// to the rotation group, which the vendor checks and removes it from at the
// commit. All queueing goes through one token bucket (Config.RotationsPerHour,
// Config.Burst), so the fleet never queues more than the configured pace.
package renewal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// Thing attributes the rotation triggers keep.
const (
	// AttrRotationRequested is the Unix time an operator asked for a
	// rotation (bootcert-admin cloud rotate); satisfied once the thing's
	// certificate was issued after it.
	AttrRotationRequested = "rotationRequested"
	// AttrRotationJob is the job of the rotation last queued for the thing.
	AttrRotationJob = "rotationJob"
	// AttrRotationQueuedAt is the Unix time that job was created.
	AttrRotationQueuedAt = "rotationQueuedAt"
	// AttrRotateRequestAt is the Unix time of the device's last accepted
	// rotate request.
	AttrRotateRequestAt = "rotateRequestAt"
)

// Registry is what renewal needs of the AWS IoT registry (ports.Registry
// has it all).
type Registry interface {
	// ListThings lists things of a type, one page at a time: the scan stops
	// between pages when the deadline nears.
	ListThings(ctx context.Context, thingType, nextToken string) (things []ports.Thing, next string, err error)
	DescribeThing(ctx context.Context, name string) (ports.Thing, error)
	UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error
	ListThingPrincipals(ctx context.Context, thing string) ([]string, error)
	AddThingToGroup(ctx context.Context, group, thing string) error
	RemoveThingFromGroup(ctx context.Context, group, thing string) error
	ListThingGroupsForThing(ctx context.Context, thing string) ([]string, error)
	JobExecutionStatus(ctx context.Context, jobID, thing string) (protocol.JobStatus, error)
}

// Result summarises a run.
type Result struct {
	Scanned int      `json:"scanned"`
	Added   []string `json:"added,omitempty"`
	// Due counts the things that needed a rotation; Pending those that had
	// one queued already; Deferred those left for a later run by the pace.
	Due      int      `json:"due"`
	Pending  int      `json:"pending,omitempty"`
	Deferred int      `json:"deferred,omitempty"`
	Jobs     []string `json:"jobs,omitempty"`
	// Truncated is true when the run stopped before the end of the fleet
	// (deadline); the next run starts again from the beginning.
	Truncated bool `json:"truncated,omitempty"`
}

// MaxListed bounds Result.Added.
const MaxListed = 1000

// Renewal is the scheduled function (and the rotate-request handler).
type Renewal struct {
	Registry  Registry
	Jobs      ports.JobCreator
	Store     PaceStore
	Publisher ports.Publisher
	Trust     *fleet.Trust
	Settings  fleet.Settings
	Config    Config
	Clock     clock.Clock
	Log       *slog.Logger

	mu sync.Mutex // one run or request at a time (the bucket)
}

// Why a thing is due, most urgent first.
type reason int

const (
	notDue reason = iota
	reasonFirst
	reasonRequested
	reasonOverdue // past MaxAge or notAfter
	reasonAge
	reasonExpiry
)

func (r reason) String() string {
	return [...]string{"", "no operational certificate", "operator request", "overdue", "age", "expiry"}[r]
}

// Due reports whether a thing needs a rotation at now, from its attributes.
func (r *Renewal) Due(name string, attrs map[string]string, now time.Time) bool {
	return r.due(name, attrs, now) != notDue
}

func (r *Renewal) due(name string, attrs map[string]string, now time.Time) reason {
	if attrs[fleet.AttrActivated] != "true" || attrs[fleet.AttrBootstrap] == "" {
		return notDue
	}
	if attrs[fleet.AttrOperational] == "" {
		return reasonFirst
	}
	nb, err1 := strconv.ParseInt(attrs[fleet.AttrNotBefore], 10, 64)
	na, err2 := strconv.ParseInt(attrs[fleet.AttrNotAfter], 10, 64)
	if err1 != nil || err2 != nil || na <= nb {
		return reasonFirst // unknown validity: rotate to learn it
	}
	if req, err := strconv.ParseInt(attrs[AttrRotationRequested], 10, 64); err == nil && req >= nb {
		return reasonRequested
	}
	t := now.Unix()
	j := jitter(name)
	maxAge := int64(r.Config.MaxAge / time.Second)
	if maxAge > 0 {
		if t-nb >= maxAge {
			return reasonOverdue
		}
		if float64(t-nb) >= float64(maxAge)*(1-AgeLead-r.Settings.RenewalJitter*j) {
			return reasonAge
		}
	}
	if t >= na {
		return reasonOverdue
	}
	life := float64(na - nb)
	if float64(t) >= float64(na)-life*(r.Settings.RenewalFraction+r.Settings.RenewalJitter*j) {
		return reasonExpiry
	}
	return notDue
}

// nearDeadline reports whether ctx's deadline (the invocation's, on the
// wall clock: a context's deadline is real time whatever r.Clock is) is
// less than margin away.
func nearDeadline(ctx context.Context, margin time.Duration) bool {
	d, ok := ctx.Deadline()
	return ok && time.Until(d) < margin
}

// jitter is a stable per-thing number in [0, 1).
func jitter(name string) float64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return float64(h.Sum64()>>11) / float64(1<<53)
}

type candidate struct {
	name   string
	why    reason
	nb     int64
	attrs  map[string]string
	groups []string
}

// HandleEvent dispatches an invocation: a rotate request from the rule
// (operation "rotate") or a schedule event (anything else).
func (r *Renewal) HandleEvent(ctx context.Context, event json.RawMessage) (any, error) {
	var probe struct {
		Operation string `json:"operation"`
	}
	if json.Unmarshal(event, &probe) == nil && probe.Operation == protocol.OpRotate {
		return r.HandleRotate(ctx, event)
	}
	return r.Run(ctx)
}

// Run scans the fleet once and queues the due things the pace allows.
func (r *Renewal) Run(ctx context.Context) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Result
	allow, err := r.Trust.AllowList(ctx)
	if err != nil {
		return res, err
	}
	var due []candidate
	next := ""
	for {
		if nearDeadline(ctx, 30*time.Second) {
			res.Truncated = true
			break
		}
		things, n, err := r.Registry.ListThings(ctx, r.Settings.ThingType, next)
		if err != nil {
			return res, err
		}
		now := r.Clock.Now()
		for _, t := range things {
			res.Scanned++
			if _, ok := allow.Lookup(t.Name); !ok {
				continue
			}
			why := r.due(t.Name, t.Attributes, now)
			if why == notDue {
				continue
			}
			nb, _ := strconv.ParseInt(t.Attributes[fleet.AttrNotBefore], 10, 64)
			due = append(due, candidate{name: t.Name, why: why, nb: nb, attrs: t.Attributes})
		}
		if n == "" {
			break
		}
		next = n
	}
	res.Due = len(due)
	sort.Slice(due, func(a, b int) bool {
		if due[a].why != due[b].why {
			return due[a].why < due[b].why
		}
		if due[a].nb != due[b].nb {
			return due[a].nb < due[b].nb
		}
		return due[a].name < due[b].name
	})
	bucket, err := loadBucket(ctx, r.Store)
	if err != nil {
		return res, err
	}
	bucket.refill(r.Clock.Now(), r.Config.RotationsPerHour, r.Config.Burst)
	var wave []candidate
	flush := func() error {
		if len(wave) == 0 {
			return nil
		}
		id, err := r.queue(ctx, wave, "renewal")
		wave = wave[:0]
		if id != "" {
			res.Jobs = append(res.Jobs, id)
		}
		return err
	}
	var runErr error
	for i, c := range due {
		if nearDeadline(ctx, 10*time.Second) {
			res.Truncated = true
			res.Deferred += len(due) - i
			break
		}
		pending, groups, err := r.pending(ctx, c.name, c.attrs)
		if errors.Is(err, ports.ErrNotFound) {
			continue
		}
		if err != nil {
			runErr = err
			res.Deferred += len(due) - i
			break
		}
		if pending {
			res.Pending++
			continue
		}
		if bucket.take(1) == 0 {
			res.Deferred += len(due) - i
			break
		}
		c.groups = groups
		wave = append(wave, c)
		if len(res.Added) < MaxListed {
			res.Added = append(res.Added, c.name)
		}
		if len(wave) == WaveSize {
			if runErr = flush(); runErr != nil {
				break
			}
		}
	}
	if runErr == nil {
		runErr = flush()
	}
	if err := saveBucket(ctx, r.Store, bucket); err != nil && runErr == nil {
		runErr = err
	}
	r.Log.Info("renewal scan", "scanned", res.Scanned, "due", res.Due, "queued", len(res.Added), "pending", res.Pending,
		"deferred", res.Deferred, "jobs", len(res.Jobs), "tokensLeft", fmt.Sprintf("%.1f", bucket.Tokens), "truncated", res.Truncated)
	return res, runErr
}

// pending reports whether a rotation is queued or running for the thing:
// it is in the rotation group and its last rotation job (or the continuous
// job) has a QUEUED or IN_PROGRESS execution.
func (r *Renewal) pending(ctx context.Context, thing string, attrs map[string]string) (bool, []string, error) {
	groups, err := r.Registry.ListThingGroupsForThing(ctx, thing)
	if err != nil {
		return false, nil, err
	}
	if !slices.Contains(groups, r.Settings.RotationGroup) {
		return false, groups, nil
	}
	for _, job := range []string{attrs[AttrRotationJob], r.Settings.JobID} {
		if job == "" {
			continue
		}
		st, err := r.Registry.JobExecutionStatus(ctx, job, thing)
		if errors.Is(err, ports.ErrNotFound) {
			// A job's rollout may not have reached the thing yet: pending
			// while the job is young.
			at, perr := strconv.ParseInt(attrs[AttrRotationQueuedAt], 10, 64)
			if job == attrs[AttrRotationJob] && perr == nil && r.Clock.Now().Unix()-at < int64((r.Config.JobTimeout+time.Hour)/time.Second) {
				return true, groups, nil
			}
			continue
		}
		if err != nil {
			return false, groups, err
		}
		if st.Pending() {
			return true, groups, nil
		}
	}
	return false, groups, nil
}

// queue queues one rotation job for a wave of things (their tokens taken):
// each thing joins the rotation group (the vendor's check), then one
// snapshot job targets them all, then each thing records the job. A thing
// whose job could not be created leaves the group again.
func (r *Renewal) queue(ctx context.Context, wave []candidate, why string) (string, error) {
	var names []string
	for _, c := range wave {
		if !slices.Contains(c.groups, r.Settings.RotationGroup) {
			if err := r.Registry.AddThingToGroup(ctx, r.Settings.RotationGroup, c.name); err != nil {
				return "", fmt.Errorf("adding %s to %s: %w", c.name, r.Settings.RotationGroup, err)
			}
		}
		names = append(names, c.name)
	}
	doc, err := json.Marshal(protocol.DefaultJobDocument())
	if err != nil {
		return "", err
	}
	now := r.Clock.Now().UTC()
	spec := ports.JobSpec{Things: names, Document: string(doc), InProgressTimeout: r.Config.JobTimeout,
		MaxPerMinute: r.Config.JobRolloutPerMinute, AbortThresholdPercent: r.Config.JobAbortPercent,
		AbortMinExecuted: r.Config.JobAbortMinExecuted, Description: "bootcert rotation (" + why + ")"}
	for attempt := 0; ; attempt++ {
		spec.ID = fmt.Sprintf("bootcert-r-%s-%s", now.Format("20060102T150405"), strconv.FormatInt(now.UnixNano()%1e9+int64(attempt), 36))
		err = r.Jobs.CreateJob(ctx, spec)
		if !errors.Is(err, ports.ErrExists) || attempt == 5 {
			break
		}
	}
	if err != nil {
		for _, n := range names {
			if rerr := r.Registry.RemoveThingFromGroup(ctx, r.Settings.RotationGroup, n); rerr != nil && !errors.Is(rerr, ports.ErrNotFound) {
				r.Log.Warn("thing left in the rotation group without a job; the next scan queues it again", "thing", n, "err", rerr)
			}
		}
		return "", fmt.Errorf("creating rotation job for %d things: %w", len(names), err)
	}
	for _, c := range wave {
		if err := r.Registry.UpdateThingAttributes(ctx, c.name, map[string]string{AttrRotationJob: spec.ID, AttrRotationQueuedAt: strconv.FormatInt(now.Unix(), 10)}); err != nil {
			r.Log.Warn("rotation queued but not recorded on the thing", "thing", c.name, "jobId", spec.ID, "err", err)
		}
		r.Log.Info("rotation queued", "thing", c.name, "jobId", spec.ID, "why", c.why.String())
	}
	return spec.ID, nil
}
