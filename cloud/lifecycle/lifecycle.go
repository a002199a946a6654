// Package lifecycle is what happens to a device's certificates after its
// first rotation, driven by an operator (bootcert-admin cloud revoke,
// recovery-budget, decommission) or the activation API's deactivate route
// (issue 10, items 4 and 6):
//
//   - Revoke: an operational certificate is revoked and, within the device's
//     recovery budget, the device is re-admitted on its bootstrap identity
//     (bootstrap certificate ACTIVE again, a rotation job queued for the
//     thing as the renewal function queues one). Past the budget the bootstrap certificate
//     stays as it is and the audit line says RECOVERY_BUDGET_EXHAUSTED.
//   - SetBudget: the operator raises (or lowers) a device's budget.
//   - Decommission: every certificate of the thing REVOKED (kept, so that AWS
//     refuses it and JITR never registers it again), policies and principals
//     detached, the thing deleted, and the device recorded on the deny list
//     (fleet.DenyListKey) that fleet.Trust.Lookup checks, so the
//     activator, vendor and activation API never admit it again.
//
// Records live in the bucket: recovery/{thing}.json and the deny list
// trust/decommissioned.json.
package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// ErrBudgetExhausted: the device used its automatic recoveries.
var ErrBudgetExhausted = errors.New(string(protocol.RecoveryBudgetExhausted))

// ErrNoRecovery: the device cannot be re-admitted on its bootstrap identity
// (no bootstrap certificate, or it is REVOKED or gone).
var ErrNoRecovery = errors.New("no bootstrap identity to recover on")

// ThingDeleter deletes things (cloud/aws.Registry has it).
type ThingDeleter interface {
	DeleteThing(ctx context.Context, name string) error
}

// RotationQueuer queues a rotation job for one thing now and returns its
// ID (renewal.Renewal has it).
type RotationQueuer interface {
	QueueRotation(ctx context.Context, thing, why string) (jobID string, err error)
}

// Manager runs the lifecycle operations.
type Manager struct {
	Registry ports.Registry
	Deleter  ThingDeleter
	// Rotations queues the rotation of a recovered device (required by
	// Revoke and Recover).
	Rotations RotationQueuer
	Store     ports.Store
	Settings  fleet.Settings
	Clock     clock.Clock
	Log       *slog.Logger
}

// Recovery is the record recovery/{thing}.json.
type Recovery struct {
	Thing string `json:"thing"`
	// Budget is the operator's budget for this device; nil: the
	// RECOVERY_BUDGET setting.
	Budget *int          `json:"budget,omitempty"`
	Used   int           `json:"used"`
	Events []RecoveryLog `json:"events,omitempty"`
}

// RecoveryLog is one recovery decision.
type RecoveryLog struct {
	At          string `json:"at"`
	Revoked     string `json:"revokedCertificateId,omitempty"`
	Outcome     string `json:"outcome"` // recovered | refused
	Reason      string `json:"reason"`
	BudgetAfter int    `json:"remaining"`
}

// RecoveryKey is the S3 key of a device's recovery record.
func RecoveryKey(thing string) string { return "recovery/" + thing + ".json" }

func (m *Manager) now() time.Time {
	if m.Clock == nil {
		return clock.Real{}.Now()
	}
	return m.Clock.Now()
}

func (m *Manager) readRecovery(ctx context.Context, thing string) (Recovery, error) {
	rec := Recovery{Thing: thing}
	obj, err := m.Store.Get(ctx, RecoveryKey(thing), "")
	if errors.Is(err, ports.ErrNotFound) {
		return rec, nil
	}
	if err != nil {
		return rec, fmt.Errorf("reading s3://%s/%s: %w", m.Settings.Bucket, RecoveryKey(thing), err)
	}
	if err := json.Unmarshal(obj.Body, &rec); err != nil {
		return rec, fmt.Errorf("s3://%s/%s is corrupt (fix or delete it): %w", m.Settings.Bucket, RecoveryKey(thing), err)
	}
	return rec, nil
}

func (m *Manager) writeRecovery(ctx context.Context, rec Recovery) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := m.Store.Put(ctx, RecoveryKey(rec.Thing), b, nil); err != nil {
		return fmt.Errorf("writing s3://%s/%s: %w", m.Settings.Bucket, RecoveryKey(rec.Thing), err)
	}
	return nil
}

// budget is the device's budget.
func (m *Manager) budget(rec Recovery) int {
	if rec.Budget != nil {
		return *rec.Budget
	}
	return m.Settings.RecoveryBudget
}

// BudgetStatus is a device's recovery budget.
type BudgetStatus struct {
	Thing     string `json:"thing"`
	Budget    int    `json:"budget"`
	Used      int    `json:"used"`
	Remaining int    `json:"remaining"`
}

func (m *Manager) status(rec Recovery) BudgetStatus {
	b := m.budget(rec)
	return BudgetStatus{Thing: rec.Thing, Budget: b, Used: rec.Used, Remaining: max(0, b-rec.Used)}
}

// SetBudget sets a device's total recovery budget (the recoveries already
// used count against it: raising 2 to 3 after two recoveries allows one
// more).
func (m *Manager) SetBudget(ctx context.Context, thing string, n int) (BudgetStatus, error) {
	if err := protocol.ValidThingName(thing); err != nil {
		return BudgetStatus{}, err
	}
	if n < 0 || n > fleet.MaxRecoveryBudget {
		return BudgetStatus{}, fmt.Errorf("recovery budget %d is not between 0 and %d", n, fleet.MaxRecoveryBudget)
	}
	rec, err := m.readRecovery(ctx, thing)
	if err != nil {
		return BudgetStatus{}, err
	}
	rec.Budget = &n
	if err := m.writeRecovery(ctx, rec); err != nil {
		return BudgetStatus{}, err
	}
	st := m.status(rec)
	m.Log.Info("AUDIT recovery budget set", "thing", thing, "budget", st.Budget, "used", st.Used, "remaining", st.Remaining)
	return st, nil
}

// Budget reports a device's recovery budget.
func (m *Manager) Budget(ctx context.Context, thing string) (BudgetStatus, error) {
	rec, err := m.readRecovery(ctx, thing)
	if err != nil {
		return BudgetStatus{}, err
	}
	return m.status(rec), nil
}

// RevokeResult says what Revoke did.
type RevokeResult struct {
	Thing     string `json:"thing"`
	Revoked   string `json:"revokedCertificateId"`
	Recovered bool   `json:"recovered"`
	JobID     string `json:"jobId,omitempty"` // the rotation queued
	Reason    string `json:"reason"`
	BudgetStatus
}

// Revoke revokes a device's operational certificate (certID, or the
// committed one when empty) and recovers the device within its budget: its
// bootstrap certificate ACTIVE again (BootstrapAfterRotation=INACTIVE left
// it INACTIVE, which AWS IoT refuses at connect) and a rotation job queued
// for it (Rotations: a snapshot job, as the renewal function queues). The
// device, refused on its operational certificate, falls back to its
// bootstrap identity and rotates. Past the budget the certificate is still
// revoked, nothing is re-admitted, and the result (and the audit line) say
// RECOVERY_BUDGET_EXHAUSTED; ErrBudgetExhausted is returned.
func (m *Manager) Revoke(ctx context.Context, thing, certID string) (RevokeResult, error) {
	res := RevokeResult{Thing: thing}
	if err := protocol.ValidThingName(thing); err != nil {
		return res, err
	}
	t, err := m.Registry.DescribeThing(ctx, thing)
	if err != nil {
		return res, fmt.Errorf("describing thing %s: %w", thing, err)
	}
	if certID == "" {
		certID = t.Attributes[fleet.AttrOperational]
	}
	if !protocol.ValidCertificateID(certID) {
		return res, fmt.Errorf("%s has no committed operational certificate to revoke (give its ID)", thing)
	}
	bootstrap := t.Attributes[fleet.AttrBootstrap]
	if certID == bootstrap {
		return res, fmt.Errorf("%s is the bootstrap certificate of %s: revoke it at the factory CA (CRL) or decommission the device", certID, thing)
	}
	if err := m.Registry.UpdateCertificate(ctx, certID, ports.StatusRevoked); err != nil {
		return res, fmt.Errorf("revoking certificate %s: %w", certID, err)
	}
	res.Revoked = certID
	m.Log.Warn("AUDIT operational certificate revoked", "thing", thing, "certificateId", certID)
	return m.recover(ctx, t, res)
}

// Recover re-admits a device on its bootstrap identity within its budget
// without revoking anything: for an operational key that is gone, or after
// the operator raised an exhausted budget.
func (m *Manager) Recover(ctx context.Context, thing string) (RevokeResult, error) {
	res := RevokeResult{Thing: thing}
	if err := protocol.ValidThingName(thing); err != nil {
		return res, err
	}
	t, err := m.Registry.DescribeThing(ctx, thing)
	if err != nil {
		return res, fmt.Errorf("describing thing %s: %w", thing, err)
	}
	return m.recover(ctx, t, res)
}

func (m *Manager) recover(ctx context.Context, t ports.Thing, res RevokeResult) (RevokeResult, error) {
	thing := t.Name
	if thing == "" {
		thing = res.Thing
	}
	rec, err := m.readRecovery(ctx, thing)
	if err != nil {
		return res, err
	}
	refuse := func(reason string, cause error) (RevokeResult, error) {
		res.Reason = reason
		res.BudgetStatus = m.status(rec)
		rec.Events = append(rec.Events, RecoveryLog{At: m.now().UTC().Format(time.RFC3339), Revoked: res.Revoked, Outcome: "refused", Reason: reason, BudgetAfter: res.Remaining})
		if err := m.writeRecovery(ctx, rec); err != nil {
			return res, err
		}
		m.Log.Error("AUDIT recovery refused", "thing", thing, "revoked", res.Revoked, "code", codeOf(cause), "reason", reason, "used", rec.Used, "budget", m.budget(rec))
		return res, fmt.Errorf("%w: %s", cause, reason)
	}
	if rec.Used >= m.budget(rec) {
		return refuse(fmt.Sprintf("%s used %d of %d automatic recoveries; raise it with bootcert-admin cloud recovery-budget %s N", thing, rec.Used, m.budget(rec), thing), ErrBudgetExhausted)
	}
	bootstrap := t.Attributes[fleet.AttrBootstrap]
	if bootstrap == "" {
		return refuse(thing+" has no bootstrap certificate on record", ErrNoRecovery)
	}
	bc, err := m.Registry.DescribeCertificate(ctx, bootstrap)
	if errors.Is(err, ports.ErrNotFound) {
		return refuse("the bootstrap certificate "+bootstrap+" no longer exists", ErrNoRecovery)
	}
	if err != nil {
		return res, err
	}
	switch bc.Status {
	case ports.StatusActive, ports.StatusInactive:
		// The vendor refuses every request of a device whose bootstrap
		// certificate is on its factory CA's CRL (REVOKED): re-admitting
		// it would spend a recovery on a rotation that cannot happen.
		if chain, perr := protocol.ParseChain([]byte(bc.PEM)); perr == nil {
			trust := &fleet.Trust{Store: m.Store, Settings: m.Settings, Clock: m.Clock}
			revoked, err := trust.Revoked(ctx, chain[0])
			if err != nil {
				return res, fmt.Errorf("checking the bootstrap certificate %s against the factory CRL: %w", bootstrap, err)
			}
			if revoked {
				return refuse("the bootstrap certificate "+bootstrap+" is on the factory CA's CRL: the device cannot rotate on it; re-provision or decommission it", ErrNoRecovery)
			}
		}
	}
	switch bc.Status {
	case ports.StatusActive:
	case ports.StatusInactive:
		if err := m.Registry.UpdateCertificate(ctx, bootstrap, ports.StatusActive); err != nil {
			return res, fmt.Errorf("re-activating the bootstrap certificate %s: %w", bootstrap, err)
		}
	default:
		return refuse("the bootstrap certificate "+bootstrap+" is "+bc.Status+" (BootstrapAfterRotation=REVOKED, or revoked on purpose): an operator must re-provision the device", ErrNoRecovery)
	}
	if m.Rotations == nil {
		return res, errors.New("lifecycle: no rotation queuer configured")
	}
	job, err := m.Rotations.QueueRotation(ctx, thing, "recovery")
	if err != nil {
		return res, fmt.Errorf("queueing the rotation of %s (its bootstrap certificate %s is ACTIVE again): %w", thing, bootstrap, err)
	}
	rec.Used++
	res.Recovered = true
	res.JobID = job
	res.BudgetStatus = m.status(rec)
	res.Reason = fmt.Sprintf("bootstrap certificate %s ACTIVE, rotation queued (job %s); recovery %d of %d", bootstrap, job, rec.Used, m.budget(rec))
	rec.Events = append(rec.Events, RecoveryLog{At: m.now().UTC().Format(time.RFC3339), Revoked: res.Revoked, Outcome: "recovered", Reason: res.Reason, BudgetAfter: res.Remaining})
	if err := m.writeRecovery(ctx, rec); err != nil {
		return res, err
	}
	m.Log.Warn("AUDIT recovery admitted", "thing", thing, "revoked", res.Revoked, "bootstrap", bootstrap, "used", rec.Used, "budget", m.budget(rec), "remaining", res.Remaining)
	return res, nil
}

func codeOf(err error) string {
	if errors.Is(err, ErrBudgetExhausted) {
		return string(protocol.RecoveryBudgetExhausted)
	}
	return "NO_RECOVERY"
}
