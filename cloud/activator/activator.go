// Package activator is the just-in-time registration function: it receives
// AWS IoT's $aws/events/certificates/registered/{caCertificateId} event for a
// bootstrap certificate the broker auto-registered as PENDING_ACTIVATION and
// either admits the device (thing, bootstrap policy, principal, rotation
// group, ACTIVE) or revokes the certificate and records why.
package activator

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Event is AWS IoT's certificate registration event.
type Event struct {
	CertificateID                    string `json:"certificateId"`
	CACertificateID                  string `json:"caCertificateId"`
	Timestamp                        int64  `json:"timestamp"`
	CertificateStatus                string `json:"certificateStatus"`
	AWSAccountID                     string `json:"awsAccountId"`
	CertificateRegistrationTimestamp any    `json:"certificateRegistrationTimestamp"`
}

// ParseEvent decodes and validates an event.
// The certificate comes from AWS's certificateId; an event with a key equal
// to it ignoring case (or twice) is refused.
func ParseEvent(b []byte) (Event, error) {
	var ev Event
	if err := fleet.CheckComputedKeys("certificate registration event", b, "certificateId", "caCertificateId"); err != nil {
		return ev, err
	}
	if err := protocol.Decode("certificate registration event", b, &ev); err != nil {
		return ev, err
	}
	if !protocol.ValidCertificateID(ev.CertificateID) {
		return ev, fmt.Errorf("certificate registration event: certificateId %q is not 64 lower-hex digits", ev.CertificateID)
	}
	return ev, nil
}

// Outcomes.
const (
	Activated = "activated" // admitted (and in the rotation group unless waiting for activation)
	Waiting   = "waiting"   // admitted, waiting for explicit activation
	Rejected  = "rejected"  // revoked, reason recorded
	Ignored   = "ignored"   // replay or not ours: nothing changed
)

// Result says what the activator did.
type Result struct {
	CertificateID string `json:"certificateId"`
	Thing         string `json:"thing,omitempty"`
	Outcome       string `json:"outcome"`
	Reason        string `json:"reason,omitempty"`
	// FinalCertificateID is the pre-provisioned operational certificate.
	FinalCertificateID string `json:"finalCertificateId,omitempty"`
}

// Rejection is the record stored under rejections/{certificateId}.json.
type Rejection struct {
	CertificateID string `json:"certificateId"`
	Thing         string `json:"thing,omitempty"`
	Reason        string `json:"reason"`
	At            string `json:"at"`
}

// Registry is what the activator needs of the AWS IoT registry
// (ports.Registry has it all).
type Registry interface {
	DescribeCertificate(ctx context.Context, id string) (ports.Certificate, error)
	UpdateCertificate(ctx context.Context, id, status string) error
	CreateCertificateFromCSR(ctx context.Context, csrPEM string, active bool) (ports.Certificate, error)
	// CreateThing returns an error wrapping ports.ErrExists when the thing
	// exists with other attributes.
	CreateThing(ctx context.Context, name, thingType string, attrs map[string]string) error
	DescribeThing(ctx context.Context, name string) (ports.Thing, error)
	UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error
	AttachPolicy(ctx context.Context, policy, targetARN string) error
	AttachThingPrincipal(ctx context.Context, thing, principalARN string) error
	AddThingToGroup(ctx context.Context, group, thing string) error
}

// Store is what the activator needs of the bucket: the pre-provisioned
// package and the rejection records.
type Store interface {
	Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error)
	Put(ctx context.Context, key string, body []byte, metadata map[string]string) error
}

// Activator handles registration events.
type Activator struct {
	Registry Registry
	Store    Store
	Trust    *fleet.Trust
	Settings fleet.Settings
	Clock    clock.Clock
	Log      *slog.Logger
}

// errReject marks a device-caused failure: the certificate is revoked.
type errReject struct{ err error }

func (e errReject) Error() string { return e.err.Error() }
func (e errReject) Unwrap() error { return e.err }

func reject(format string, a ...any) error { return errReject{fmt.Errorf(format, a...)} }

// Handle processes one event. Infrastructure errors (S3 or IoT unreachable,
// throttled) are returned so that the invocation is retried; nothing is
// revoked for them. Replays of an event are harmless: only a
// PENDING_ACTIVATION certificate is ever acted on.
func (a *Activator) Handle(ctx context.Context, ev Event) (Result, error) {
	res := Result{CertificateID: ev.CertificateID}
	cert, err := a.Registry.DescribeCertificate(ctx, ev.CertificateID)
	if err != nil {
		if errors.Is(err, ports.ErrNotFound) {
			res.Outcome, res.Reason = Ignored, "certificate no longer exists"
			return res, nil
		}
		return res, fmt.Errorf("describing certificate %s: %w", ev.CertificateID, err)
	}
	if cert.Status != ports.StatusPendingActivation {
		res.Outcome, res.Reason = Ignored, "certificate is "+cert.Status+", not PENDING_ACTIVATION (replayed event)"
		a.Log.Info("jitr event ignored", "certificateId", ev.CertificateID, "status", cert.Status)
		return res, nil
	}
	chain, err := protocol.ParseChain([]byte(cert.PEM))
	if err != nil {
		return a.revoke(ctx, res, cert, "", reject("certificate %s: %v", cert.ID, err))
	}
	x := chain[0]
	thing := x.Subject.CommonName
	entry, err := a.check(ctx, cert, x, thing)
	if err != nil {
		var rj errReject
		if errors.As(err, &rj) {
			return a.revoke(ctx, res, cert, thing, err)
		}
		return res, err
	}
	res.Thing = thing
	activated, err := a.admit(ctx, cert, thing)
	if err != nil {
		var rj errReject
		if errors.As(err, &rj) {
			return a.revoke(ctx, res, cert, thing, err)
		}
		return res, err
	}
	if len(entry.FinalCSR) > 0 {
		id, err := a.preProvision(ctx, thing, entry.FinalCSR)
		if err != nil {
			var rj errReject
			if errors.As(err, &rj) {
				return a.revoke(ctx, res, cert, thing, err)
			}
			return res, err
		}
		res.FinalCertificateID = id
	}
	if activated {
		if err := a.Registry.AddThingToGroup(ctx, a.Settings.RotationGroup, thing); err != nil {
			return res, fmt.Errorf("adding thing %s to group %s: %w", thing, a.Settings.RotationGroup, err)
		}
	}
	// ACTIVE last: an ACTIVE bootstrap certificate means every step above
	// is done, so a replay never repeats them.
	if err := a.Registry.UpdateCertificate(ctx, cert.ID, ports.StatusActive); err != nil {
		return res, fmt.Errorf("activating certificate %s: %w", cert.ID, err)
	}
	res.Outcome = Activated
	if !activated {
		res.Outcome = Waiting
	}
	a.Log.Info("jitr admitted", "thing", thing, "certificateId", cert.ID, "outcome", res.Outcome)
	return res, nil
}

func (a *Activator) check(ctx context.Context, cert ports.Certificate, x *x509.Certificate, thing string) (manifest.Entry, error) {
	if err := protocol.ValidThingName(thing); err != nil {
		return manifest.Entry{}, reject("certificate %s subject CN: %v", cert.ID, err)
	}
	if err := a.Trust.VerifyBootstrap(ctx, x, a.Clock.Now()); err != nil {
		if errors.Is(err, fleet.ErrUntrusted) {
			return manifest.Entry{}, reject("certificate %s: %v", cert.ID, err)
		}
		return manifest.Entry{}, err
	}
	entry, err := a.Trust.Lookup(ctx, thing)
	if err != nil {
		if errors.Is(err, fleet.ErrNotAllowed) {
			return entry, reject("%v", err)
		}
		return entry, err
	}
	if entry.BootstrapSHA256 != "" && entry.BootstrapSHA256 != cert.ID {
		return entry, reject("%w: %s is bound to bootstrap certificate %s in the allow list, not %s", fleet.ErrNotAllowed, thing, entry.BootstrapSHA256, cert.ID)
	}
	revoked, err := a.Trust.Revoked(ctx, x)
	if err != nil {
		return entry, err
	}
	if revoked {
		return entry, reject("%w: serial %s of %s", fleet.ErrRevoked, x.SerialNumber.Text(16), thing)
	}
	return entry, nil
}

// admit creates or adopts the thing and wires the bootstrap certificate. It
// reports whether the device is activated.
func (a *Activator) admit(ctx context.Context, cert ports.Certificate, thing string) (bool, error) {
	attrs := map[string]string{fleet.AttrBootstrap: cert.ID}
	if !a.Settings.ExplicitActivation {
		attrs[fleet.AttrActivated] = "true"
	}
	activated := !a.Settings.ExplicitActivation
	err := a.Registry.CreateThing(ctx, thing, a.Settings.ThingType, attrs)
	switch {
	case err == nil:
	case errors.Is(err, ports.ErrExists):
		t, err := a.Registry.DescribeThing(ctx, thing)
		if err != nil {
			return false, fmt.Errorf("describing thing %s: %w", thing, err)
		}
		if b := t.Attributes[fleet.AttrBootstrap]; b != "" && b != cert.ID {
			return false, reject("%w: thing %s is already bound to bootstrap certificate %s", fleet.ErrNotAllowed, thing, b)
		}
		if t.Attributes[fleet.AttrActivated] == "true" {
			activated = true
			delete(attrs, fleet.AttrActivated)
		}
		if err := a.Registry.UpdateThingAttributes(ctx, thing, attrs); err != nil {
			return false, fmt.Errorf("updating thing %s: %w", thing, err)
		}
	default:
		return false, fmt.Errorf("creating thing %s: %w", thing, err)
	}
	if err := a.Registry.AttachPolicy(ctx, a.Settings.BootstrapPolicy, cert.ARN); err != nil {
		return false, fmt.Errorf("attaching policy %s to %s: %w", a.Settings.BootstrapPolicy, cert.ARN, err)
	}
	if err := a.Registry.AttachThingPrincipal(ctx, thing, cert.ARN); err != nil {
		return false, fmt.Errorf("attaching %s to thing %s: %w", cert.ARN, thing, err)
	}
	return activated, nil
}

// preProvision creates the final certificate from the manifest's CSR as
// INACTIVE and stores its package, once.
func (a *Activator) preProvision(ctx context.Context, thing string, csrDER []byte) (string, error) {
	key := fleet.PackageKey(thing, fleet.PreProvisionedName)
	if obj, err := a.Store.Get(ctx, key, ""); err == nil && obj.Metadata[fleet.MetaCertificateID] != "" {
		return obj.Metadata[fleet.MetaCertificateID], nil
	} else if err != nil && !errors.Is(err, ports.ErrNotFound) {
		return "", fmt.Errorf("reading s3 object %s: %w", key, err)
	}
	if _, err := fleet.CheckCSR(csrDER, thing); err != nil {
		return "", reject("manifest final_csr of %s: %v", thing, err)
	}
	c, err := a.Registry.CreateCertificateFromCSR(ctx, fleet.CSRPEM(csrDER), false)
	if err != nil {
		return "", fmt.Errorf("creating the pre-provisioned certificate of %s: %w", thing, err)
	}
	if err := a.Registry.AttachPolicy(ctx, a.Settings.OperationalPolicy, c.ARN); err != nil {
		return "", fmt.Errorf("attaching policy %s to %s: %w", a.Settings.OperationalPolicy, c.ARN, err)
	}
	if err := a.Registry.AttachThingPrincipal(ctx, thing, c.ARN); err != nil {
		return "", fmt.Errorf("attaching %s to thing %s: %w", c.ARN, thing, err)
	}
	if err := a.Store.Put(ctx, key, []byte(c.PEM), map[string]string{fleet.MetaCertificateID: c.ID}); err != nil {
		return "", fmt.Errorf("writing s3 object %s: %w", key, err)
	}
	return c.ID, nil
}

func (a *Activator) revoke(ctx context.Context, res Result, cert ports.Certificate, thing string, why error) (Result, error) {
	res.Outcome, res.Reason, res.Thing = Rejected, why.Error(), thing
	if err := a.Registry.UpdateCertificate(ctx, cert.ID, ports.StatusRevoked); err != nil {
		return res, fmt.Errorf("revoking certificate %s (%s): %w", cert.ID, why, err)
	}
	rec, _ := json.Marshal(Rejection{CertificateID: cert.ID, Thing: thing, Reason: why.Error(), At: a.Clock.Now().UTC().Format(time.RFC3339)})
	if err := a.Store.Put(ctx, fleet.RejectionPrefix+cert.ID+".json", rec, nil); err != nil {
		a.Log.Warn("recording rejection", "certificateId", cert.ID, "err", err)
	}
	a.Log.Warn("jitr rejected", "thing", thing, "certificateId", cert.ID, "reason", why.Error())
	return res, nil
}
