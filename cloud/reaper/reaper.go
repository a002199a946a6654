// Package reaper handles job execution terminal events
// ($aws/events/jobExecution/{jobId}/{status}): after a successful rotation it
// retires the previous operational certificate (never the bootstrap one);
// after a rotation that failed before the commit it removes the certificates
// issued for it; after a commit that the job did not report it keeps both
// and raises an alert.
package reaper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/protocol"
)

// Event is an AWS IoT job execution event.
type Event struct {
	EventType     string             `json:"eventType"`
	EventID       string             `json:"eventId"`
	Timestamp     int64              `json:"timestamp"`
	Operation     string             `json:"operation"`
	JobID         string             `json:"jobId"`
	ThingArn      string             `json:"thingArn"`
	ThingName     string             `json:"thingName"`
	Status        protocol.JobStatus `json:"status"`
	StatusDetails map[string]string  `json:"statusDetails"`
}

// ParseEvent decodes an event and fills ThingName from thingArn.
// The thing comes from AWS's thingName or thingArn; an event with a key
// equal to one of them ignoring case (or twice) is refused.
func ParseEvent(b []byte) (Event, error) {
	var ev Event
	if err := fleet.CheckComputedKeys("job execution event", b, "thingName", "thingArn", "jobId", "status"); err != nil {
		return ev, err
	}
	if err := protocol.Decode("job execution event", b, &ev); err != nil {
		return ev, err
	}
	if ev.ThingName == "" {
		if i := strings.LastIndex(ev.ThingArn, ":thing/"); i >= 0 {
			ev.ThingName = ev.ThingArn[i+len(":thing/"):]
		}
	}
	if err := protocol.ValidThingName(ev.ThingName); err != nil {
		return ev, fmt.Errorf("job execution event: thing: %v", err)
	}
	if ev.JobID == "" {
		return ev, errors.New("job execution event: jobId is missing")
	}
	ev.Status = protocol.JobStatus(strings.ToUpper(string(ev.Status)))
	if ev.Status == "" {
		ev.Status = protocol.JobStatus(strings.ToUpper(ev.Operation))
	}
	return ev, nil
}

// Result says what the reaper did.
type Result struct {
	Thing     string             `json:"thing"`
	JobID     string             `json:"jobId"`
	Status    protocol.JobStatus `json:"status"`
	Committed bool               `json:"committed"`
	Retired   []string           `json:"retired,omitempty"`
	Alert     string             `json:"alert,omitempty"`
	Ignored   string             `json:"ignored,omitempty"`
}

// Registry is what the reaper needs of the AWS IoT registry
// (ports.Registry has it all).
type Registry interface {
	DescribeThing(ctx context.Context, name string) (ports.Thing, error)
	UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error
	RemoveThingFromGroup(ctx context.Context, group, thing string) error
	DescribeCertificate(ctx context.Context, id string) (ports.Certificate, error)
	UpdateCertificate(ctx context.Context, id, status string) error
	DetachPolicy(ctx context.Context, policy, targetARN string) error
	DetachThingPrincipal(ctx context.Context, thing, principalARN string) error
	// DeleteCertificate deletes an INACTIVE or REVOKED, detached certificate.
	DeleteCertificate(ctx context.Context, id string) error
}

// Store is what the reaper needs of the bucket: the issuance records and
// the packages.
type Store interface {
	Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error)
	List(ctx context.Context, prefix string) ([]string, error)
	Delete(ctx context.Context, key string) error
}

// Reaper handles job execution events.
type Reaper struct {
	Registry Registry
	Store    Store
	Settings fleet.Settings
	Log      *slog.Logger
}

// Handle processes one event. It is idempotent: a replay finds the
// certificates already retired.
func (r *Reaper) Handle(ctx context.Context, ev Event) (Result, error) {
	res := Result{Thing: ev.ThingName, JobID: ev.JobID, Status: ev.Status}
	if !ev.Status.Terminal() {
		res.Ignored = "status " + string(ev.Status) + " is not terminal"
		return res, nil
	}
	thing, err := r.Registry.DescribeThing(ctx, ev.ThingName)
	if errors.Is(err, ports.ErrNotFound) {
		res.Ignored = "thing does not exist"
		return res, nil
	}
	if err != nil {
		return res, err
	}
	issued, recKeys, err := r.issued(ctx, ev.ThingName, ev.JobID)
	if err != nil {
		return res, err
	}
	op := thing.Attributes[fleet.AttrOperational]
	res.Committed = op != "" && issued[op]
	bootstrap := thing.Attributes[fleet.AttrBootstrap]
	keep := func(id string) bool { return id == "" || id == "none" || id == bootstrap || id == op }

	switch {
	case res.Committed && (ev.Status == protocol.JobSucceeded || ev.Status == protocol.JobCanceled || ev.Status == protocol.JobRemoved):
		// The previous operational certificate, from the registry (never
		// from the device), and any other certificate issued for this job
		// and never committed.
		var victims []string
		if prev := thing.Attributes[fleet.AttrPrevious]; !keep(prev) {
			victims = append(victims, prev)
		}
		for id := range issued {
			if !keep(id) && id != thing.Attributes[fleet.AttrPrevious] {
				victims = append(victims, id)
			}
		}
		for _, id := range victims {
			if err := r.retire(ctx, ev.ThingName, id, r.Settings.PreviousCertificate); err != nil {
				return res, err
			}
			res.Retired = append(res.Retired, id)
		}
		if p := thing.Attributes[fleet.AttrPrevious]; p != "" && r.Settings.PreviousCertificate == "DELETE" {
			if err := r.Registry.UpdateThingAttributes(ctx, ev.ThingName, map[string]string{fleet.AttrPrevious: ""}); err != nil {
				return res, err
			}
		}
	case res.Committed:
		// Committed (ack accepted) but the execution ended otherwise: the
		// device may still hold either certificate. Keep both.
		res.Alert = fmt.Sprintf("job %s of %s ended %s after the commit: keeping certificates %s and %s; check the device", ev.JobID, ev.ThingName, ev.Status, op, thing.Attributes[fleet.AttrPrevious])
		r.Log.Error("ALERT rotation ended after commit", "thing", ev.ThingName, "jobId", ev.JobID, "status", ev.Status, "operationalCert", op, "previousCert", thing.Attributes[fleet.AttrPrevious])
	case ev.Status == protocol.JobSucceeded:
		res.Alert = fmt.Sprintf("job %s of %s SUCCEEDED without a committed certificate: nothing retired", ev.JobID, ev.ThingName)
		r.Log.Error("ALERT job succeeded without commit", "thing", ev.ThingName, "jobId", ev.JobID)
	default:
		// Failed before the commit: the new certificates were never used
		// for an ack; remove them. The thing leaves the rotation group so
		// that the renewal function adds it again later (a failed rotation
		// does not drop the device from renewal).
		// An unreadable package must not turn the factory key's certificate
		// into one to delete: the invocation fails and is retried.
		pre := ""
		preKey := fleet.PackageKey(ev.ThingName, fleet.PreProvisionedName)
		obj, err := r.Store.Get(ctx, preKey, "")
		switch {
		case err == nil:
			pre = obj.Metadata[fleet.MetaCertificateID]
		case !errors.Is(err, ports.ErrNotFound):
			return res, fmt.Errorf("reading the pre-provisioned package %s: %w", preKey, err)
		}
		for id := range issued {
			if keep(id) {
				continue
			}
			action := "DELETE"
			if id == pre {
				action = "INACTIVE" // the factory key's only certificate: kept for the next attempt
			}
			if err := r.retire(ctx, ev.ThingName, id, action); err != nil {
				return res, err
			}
			res.Retired = append(res.Retired, id)
		}
		if err := r.Registry.RemoveThingFromGroup(ctx, r.Settings.RotationGroup, ev.ThingName); err != nil && !errors.Is(err, ports.ErrNotFound) {
			return res, err
		}
	}
	// The continuous job reuses its ID for every execution: close this
	// execution's issuance records so that the next one starts empty.
	for _, k := range recKeys {
		if err := r.Store.Delete(ctx, k); err != nil && !errors.Is(err, ports.ErrNotFound) {
			return res, fmt.Errorf("deleting issuance record %s: %w", k, err)
		}
	}
	r.Log.Info("job execution ended", "thing", ev.ThingName, "jobId", ev.JobID, "status", ev.Status, "committed", res.Committed, "retired", res.Retired)
	return res, nil
}

// issued returns the certificate IDs the vendor issued for (thing, job) in
// the current execution, and the keys of their records.
func (r *Reaper) issued(ctx context.Context, thing, jobID string) (map[string]bool, []string, error) {
	keys, err := r.Store.List(ctx, fleet.IssuanceJobPrefix(thing, jobID))
	if err != nil {
		return nil, nil, err
	}
	out := map[string]bool{}
	for _, k := range keys {
		obj, err := r.Store.Get(ctx, k, "")
		if errors.Is(err, ports.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		var rec fleet.Issuance
		if err := json.Unmarshal(obj.Body, &rec); err != nil || !protocol.ValidCertificateID(rec.CertificateID) {
			r.Log.Warn("corrupt issuance record: its certificate is not retired", "thing", thing, "jobId", jobID, "key", k, "err", err)
			continue
		}
		out[rec.CertificateID] = true
	}
	return out, keys, nil
}

// retire deactivates a certificate and, for DELETE, detaches and deletes it.
func (r *Reaper) retire(ctx context.Context, thing, id, action string) error {
	if action == "KEEP" {
		return nil
	}
	c, err := r.Registry.DescribeCertificate(ctx, id)
	if errors.Is(err, ports.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if c.Status == ports.StatusActive {
		if err := r.Registry.UpdateCertificate(ctx, id, ports.StatusInactive); err != nil {
			return err
		}
	}
	if action != "DELETE" {
		return nil
	}
	for _, p := range []string{r.Settings.OperationalPolicy, r.Settings.BootstrapPolicy} {
		if err := r.Registry.DetachPolicy(ctx, p, c.ARN); err != nil && !errors.Is(err, ports.ErrNotFound) {
			return err
		}
	}
	if err := r.Registry.DetachThingPrincipal(ctx, thing, c.ARN); err != nil && !errors.Is(err, ports.ErrNotFound) {
		return err
	}
	if err := r.Registry.DeleteCertificate(ctx, id); err != nil && !errors.Is(err, ports.ErrNotFound) {
		return err
	}
	if err := r.Store.Delete(ctx, fleet.PackageKey(thing, id)); err != nil && !errors.Is(err, ports.ErrNotFound) {
		r.Log.Warn("deleting package", "thing", thing, "certificateId", id, "err", err)
	}
	return nil
}
