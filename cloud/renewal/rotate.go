package renewal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/protocol"
)

// RotateEvent is what the rotate-requests rule delivers: the device's
// protocol.RotateRequest plus the fields the rule computes from the broker
// (topic(2) AS thingName, topic(3) AS operation, principal(), clientid(),
// timestamp()). Identity comes only from those.
type RotateEvent struct {
	ThingName  string `json:"thingName"`
	Operation  string `json:"operation"`
	Principal  string `json:"principal"`
	ClientID   string `json:"clientId"`
	ReceivedAt int64  `json:"receivedAt"`
	protocol.RotateRequest
}

// ruleFields are the keys the rule computes: a payload key equal to one of
// them ignoring case (but spelled differently) is an attempt to confuse a
// case-insensitive decoder and is refused.
var ruleFields = []string{"thingName", "operation", "principal", "clientId", "receivedAt"}

// ParseRotateEvent decodes a rotate-request event.
func ParseRotateEvent(b []byte) (RotateEvent, error) {
	var ev RotateEvent
	var keys map[string]json.RawMessage
	if err := protocol.Decode("rotate request event", b, &keys); err != nil {
		return ev, err
	}
	if err := protocol.Decode("rotate request event", b, &ev); err != nil {
		return ev, err
	}
	if err := protocol.ValidThingName(ev.ThingName); err != nil {
		return ev, fmt.Errorf("rotate request event: thingName: %w", err)
	}
	for k := range keys {
		for _, f := range ruleFields {
			if k != f && strings.EqualFold(k, f) {
				return ev, fmt.Errorf("rotate request from %s: payload key %q collides with the rule's field %q", ev.ThingName, k, f)
			}
		}
	}
	return ev, nil
}

// RotateReply is what HandleRotate published (also the function's result).
type RotateReply struct {
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
}

type refusal struct {
	code      protocol.Code
	msg       string
	retryable bool
}

func (r *refusal) Error() string { return string(r.code) + ": " + r.msg }

// HandleRotate answers a device's rotate request on
// certificates/{thing}/rotate/accepted (a rotation is queued, or already
// pending) or .../rejected, under the same pace as the scan.
func (r *Renewal) HandleRotate(ctx context.Context, raw json.RawMessage) (RotateReply, error) {
	ev, err := ParseRotateEvent(raw)
	if err != nil {
		if ev.ThingName == "" || protocol.ValidThingName(ev.ThingName) != nil {
			r.Log.Warn("rotate request dropped", "err", err.Error())
			return RotateReply{}, nil
		}
		return r.reply(ctx, ev, nil, &refusal{protocol.NotAllowed, "request refused: " + err.Error(), false})
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	acc, err := r.rotate(ctx, ev)
	return r.reply(ctx, ev, acc, err)
}

func (r *Renewal) rotate(ctx context.Context, ev RotateEvent) (*protocol.RotateAccepted, error) {
	if ev.ClientID != ev.ThingName {
		return nil, &refusal{protocol.NotAllowed, fmt.Sprintf("client ID %q is not the thing name %q", ev.ClientID, ev.ThingName), false}
	}
	allow, err := r.Trust.AllowList(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := allow.Lookup(ev.ThingName); !ok {
		return nil, &refusal{protocol.NotAllowed, ev.ThingName + " is not on the allow list", false}
	}
	thing, err := r.Registry.DescribeThing(ctx, ev.ThingName)
	if errors.Is(err, ports.ErrNotFound) {
		return nil, &refusal{protocol.NotAllowed, "no thing " + ev.ThingName, false}
	}
	if err != nil {
		return nil, err
	}
	if thing.Attributes[fleet.AttrActivated] != "true" {
		return nil, &refusal{protocol.NotActivated, ev.ThingName + " has not been activated", false}
	}
	principals, err := r.Registry.ListThingPrincipals(ctx, ev.ThingName)
	if err != nil {
		return nil, err
	}
	attached := false
	for _, p := range principals {
		attached = attached || (ev.Principal != "" && strings.HasSuffix(p, "/"+ev.Principal))
	}
	if !attached {
		return nil, &refusal{protocol.NotAllowed, "the connection's certificate is not attached to " + ev.ThingName, false}
	}
	pending, groups, err := r.pending(ctx, ev.ThingName, thing.Attributes)
	if err != nil {
		return nil, err
	}
	if pending {
		job := thing.Attributes[AttrRotationJob]
		if job == "" {
			job = r.Settings.JobID
		}
		return &protocol.RotateAccepted{ClientToken: ev.ClientToken, JobID: job}, nil
	}
	now := r.Clock.Now()
	why := r.due(ev.ThingName, thing.Attributes, now)
	if why == notDue {
		if last, err := strconv.ParseInt(thing.Attributes[AttrRotateRequestAt], 10, 64); err == nil {
			if next := time.Unix(last, 0).Add(r.Config.RequestInterval); now.Before(next) {
				return nil, &refusal{protocol.NotAllowed, fmt.Sprintf("a rotation was granted to %s at %s and its certificate is not due: ask again after %s",
					ev.ThingName, time.Unix(last, 0).UTC().Format(time.RFC3339), next.UTC().Format(time.RFC3339)), false}
			}
		}
		why = reasonRequested
	}
	bucket, err := loadBucket(ctx, r.Store)
	if err != nil {
		return nil, err
	}
	bucket.refill(now, r.Config.RotationsPerHour, r.Config.Burst)
	if bucket.take(1) == 0 {
		if err := saveBucket(ctx, r.Store, bucket); err != nil {
			return nil, err
		}
		return nil, &refusal{protocol.Throttled, "the fleet's rotation pace is used up: retry later", true}
	}
	id, qerr := r.queue(ctx, []candidate{{name: ev.ThingName, why: why, attrs: thing.Attributes, groups: groups}}, "device request: "+ev.Reason)
	if qerr != nil {
		bucket.Tokens++ // nothing was queued
		bucket.Queued--
	}
	if err := saveBucket(ctx, r.Store, bucket); err != nil && qerr == nil {
		qerr = err
	}
	if qerr != nil {
		return nil, qerr
	}
	if err := r.Registry.UpdateThingAttributes(ctx, ev.ThingName, map[string]string{AttrRotateRequestAt: strconv.FormatInt(now.Unix(), 10)}); err != nil {
		r.Log.Warn("rotate request granted but not recorded", "thing", ev.ThingName, "err", err)
	}
	return &protocol.RotateAccepted{ClientToken: ev.ClientToken, JobID: id}, nil
}

func (r *Renewal) reply(ctx context.Context, ev RotateEvent, acc *protocol.RotateAccepted, err error) (RotateReply, error) {
	var payload any = acc
	suffix := protocol.SuffixAccepted
	if err != nil {
		var rf *refusal
		switch {
		case errors.As(err, &rf):
		case errors.Is(err, ports.ErrThrottled):
			rf = &refusal{protocol.Throttled, "the registry is busy, retry later", true}
		default:
			rf = &refusal{protocol.Internal, "internal error, retry later", true}
		}
		r.Log.Warn("rotate request rejected", "thing", ev.ThingName, "reason", ev.Reason, "code", rf.code, "why", err.Error())
		payload = protocol.Rejected{ClientToken: ev.ClientToken, Code: rf.code, Message: rf.msg, Retryable: rf.retryable}
		suffix = protocol.SuffixRejected
	} else {
		r.Log.Info("rotate request accepted", "thing", ev.ThingName, "reason", ev.Reason, "jobId", acc.JobID)
	}
	body, merr := json.Marshal(payload)
	if merr != nil {
		return RotateReply{}, merr
	}
	topic := protocol.RotateTopic(ev.ThingName) + "/" + suffix
	if perr := r.Publisher.Publish(ctx, topic, body); perr != nil {
		return RotateReply{Topic: topic, Payload: body}, fmt.Errorf("replying on %s: %w", topic, perr)
	}
	return RotateReply{Topic: topic, Payload: body}, nil
}

// QueueRotation queues a rotation for thing now, outside the fleet's pace:
// an operator's recovery (cloud/lifecycle), which the device's recovery
// budget bounds instead. A rotation already queued or running is reused
// (its job returned). Like every later rotation it is a snapshot job
// targeting the thing: AWS documents no second execution of the continuous
// job for a thing that had one (docs/cloud.md, "Rotation triggers").
func (r *Renewal) QueueRotation(ctx context.Context, thing, why string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, err := r.Registry.DescribeThing(ctx, thing)
	if err != nil {
		return "", fmt.Errorf("describing thing %s: %w", thing, err)
	}
	pending, groups, err := r.pending(ctx, thing, t.Attributes)
	if err != nil {
		return "", fmt.Errorf("checking for a pending rotation of %s: %w", thing, err)
	}
	if pending {
		if job := t.Attributes[AttrRotationJob]; job != "" {
			return job, nil
		}
		return r.Settings.JobID, nil
	}
	return r.queue(ctx, []candidate{{name: thing, why: reasonRequested, attrs: t.Attributes, groups: groups}}, why)
}
