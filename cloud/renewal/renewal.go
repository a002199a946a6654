// Package renewal runs on a schedule and adds to the rotation group every
// activated, allow-listed thing whose committed certificate is inside its
// renewal window (by default the last third of its life, started earlier by
// a per-thing jitter), and every activated thing that has no operational
// certificate yet (including one whose first rotation failed).
package renewal

import (
	"context"
	"errors"
	"hash/fnv"
	"log/slog"
	"strconv"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
)

// Registry is what renewal needs of the AWS IoT registry (ports.Registry
// has it all).
type Registry interface {
	// ListThings lists things of a type, one page at a time: the scan stops
	// between pages when the deadline nears.
	ListThings(ctx context.Context, thingType, nextToken string) (things []ports.Thing, next string, err error)
	AddThingToGroup(ctx context.Context, group, thing string) error
}

// Result summarises a run.
type Result struct {
	Scanned int      `json:"scanned"`
	Added   []string `json:"added,omitempty"`
	// Truncated is true when the run stopped before the end of the fleet
	// (deadline); the next run starts again from the beginning.
	Truncated bool `json:"truncated,omitempty"`
}

// MaxListed bounds Result.Added.
const MaxListed = 1000

// Renewal is the scheduled function.
type Renewal struct {
	Registry Registry
	Trust    *fleet.Trust
	Settings fleet.Settings
	Clock    clock.Clock
	Log      *slog.Logger
}

// Due reports whether a thing needs a rotation at now, from its attributes.
func (r *Renewal) Due(name string, attrs map[string]string, now time.Time) bool {
	if attrs[fleet.AttrActivated] != "true" || attrs[fleet.AttrBootstrap] == "" {
		return false
	}
	if attrs[fleet.AttrOperational] == "" {
		return true
	}
	nb, err1 := strconv.ParseInt(attrs[fleet.AttrNotBefore], 10, 64)
	na, err2 := strconv.ParseInt(attrs[fleet.AttrNotAfter], 10, 64)
	if err1 != nil || err2 != nil || na <= nb {
		return true // unknown validity: rotate to learn it
	}
	life := float64(na - nb)
	start := float64(na) - life*(r.Settings.RenewalFraction+r.Settings.RenewalJitter*jitter(name))
	return float64(now.Unix()) >= start
}

// jitter is a stable per-thing number in [0, 1).
func jitter(name string) float64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return float64(h.Sum64()>>11) / float64(1<<53)
}

// Run scans the fleet once.
func (r *Renewal) Run(ctx context.Context) (Result, error) {
	var res Result
	allow, err := r.Trust.AllowList(ctx)
	if err != nil {
		return res, err
	}
	deadline, hasDeadline := ctx.Deadline()
	next := ""
	for {
		if hasDeadline && r.Clock.Now().Add(5*time.Second).After(deadline) {
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
			if _, ok := allow.Lookup(t.Name); !ok || !r.Due(t.Name, t.Attributes, now) {
				continue
			}
			if err := r.Registry.AddThingToGroup(ctx, r.Settings.RotationGroup, t.Name); err != nil {
				if errors.Is(err, ports.ErrNotFound) {
					continue
				}
				return res, err
			}
			if len(res.Added) < MaxListed {
				res.Added = append(res.Added, t.Name)
			}
		}
		if n == "" {
			break
		}
		next = n
	}
	r.Log.Info("renewal scan", "scanned", res.Scanned, "added", len(res.Added), "truncated", res.Truncated)
	return res, nil
}
