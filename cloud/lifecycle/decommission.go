package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/protocol"
)

// Decommissioned is a device's record on the deny list (fleet.DenyListKey).
type Decommissioned struct {
	Thing        string   `json:"thing"`
	At           string   `json:"at"`
	Reason       string   `json:"reason,omitempty"`
	Certificates []string `json:"revokedCertificateIds,omitempty"`
	// BootstrapCertificateID is the factory certificate to put on the
	// factory CA's CRL as well (bootcertctl ca revoke).
	BootstrapCertificateID string `json:"bootstrapCertificateId,omitempty"`
}

// deny adds rec to the deny list (read-modify-write of one object: run
// decommissions one at a time, as bootcert-admin does). A device already on
// it keeps its first record's date and gains the certificates found now.
func (m *Manager) deny(ctx context.Context, rec *Decommissioned) error {
	var d fleet.DenyList
	obj, err := m.Store.Get(ctx, fleet.DenyListKey, "")
	switch {
	case err == nil:
		if err := json.Unmarshal(obj.Body, &d); err != nil {
			return fmt.Errorf("the deny list s3://%s/%s is corrupt (fix it by hand): %w", m.Settings.Bucket, fleet.DenyListKey, err)
		}
	case !errors.Is(err, ports.ErrNotFound):
		return fmt.Errorf("reading the deny list s3://%s/%s: %w", m.Settings.Bucket, fleet.DenyListKey, err)
	}
	if d.Devices == nil {
		d.Devices = map[string]json.RawMessage{}
	}
	var prev Decommissioned
	if old, ok := d.Devices[rec.Thing]; ok && json.Unmarshal(old, &prev) == nil {
		rec.At = prev.At
		if rec.BootstrapCertificateID == "" {
			rec.BootstrapCertificateID = prev.BootstrapCertificateID
		}
		for _, id := range prev.Certificates {
			if !slices.Contains(rec.Certificates, id) {
				rec.Certificates = append(rec.Certificates, id)
			}
		}
	}
	b, _ := json.Marshal(rec)
	d.Devices[rec.Thing] = b
	body, _ := json.Marshal(d)
	if err := m.Store.Put(ctx, fleet.DenyListKey, body, nil); err != nil {
		return fmt.Errorf("writing the deny list s3://%s/%s: %w", m.Settings.Bucket, fleet.DenyListKey, err)
	}
	return nil
}

// Decommission retires a device for good; it is idempotent (run it again
// after a failure). Order: the deny record first (from then on nothing
// admits the device), then every certificate attached to the thing REVOKED
// and detached from its policies and the thing, the thing out of the
// rotation group and deleted. The certificates are kept REVOKED, not
// deleted: AWS IoT refuses a REVOKED certificate at connect, and a deleted
// one would be registered again by JITR on the next connection
// (https://docs.aws.amazon.com/iot/latest/developerguide/auto-register-device-cert.html).
func (m *Manager) Decommission(ctx context.Context, thing, reason string) (Decommissioned, error) {
	rec := Decommissioned{Thing: thing, At: m.now().UTC().Format(time.RFC3339), Reason: reason}
	if err := protocol.ValidThingName(thing); err != nil {
		return rec, err
	}
	t, err := m.Registry.DescribeThing(ctx, thing)
	exists := err == nil
	if err != nil && !errors.Is(err, ports.ErrNotFound) {
		return rec, fmt.Errorf("describing thing %s: %w", thing, err)
	}
	var principals []string
	if exists {
		rec.BootstrapCertificateID = t.Attributes[fleet.AttrBootstrap]
		if principals, err = m.Registry.ListThingPrincipals(ctx, thing); err != nil {
			return rec, err
		}
		for _, arn := range principals {
			if id := fleet.CertARNID(arn); id != "" {
				rec.Certificates = append(rec.Certificates, id)
			}
		}
	}
	if err := m.deny(ctx, &rec); err != nil {
		return rec, err
	}
	m.Log.Warn("AUDIT device decommissioned: on the deny list", "thing", thing, "reason", reason)
	for _, arn := range principals {
		id := fleet.CertARNID(arn)
		if id == "" {
			continue
		}
		if err := m.Registry.UpdateCertificate(ctx, id, ports.StatusRevoked); err != nil && !errors.Is(err, ports.ErrNotFound) {
			return rec, fmt.Errorf("revoking certificate %s of %s: %w", id, thing, err)
		}
		for _, p := range []string{m.Settings.BootstrapPolicy, m.Settings.OperationalPolicy} {
			if err := m.Registry.DetachPolicy(ctx, p, arn); err != nil && !errors.Is(err, ports.ErrNotFound) {
				return rec, fmt.Errorf("detaching policy %s from %s: %w", p, id, err)
			}
		}
		if err := m.Registry.DetachThingPrincipal(ctx, thing, arn); err != nil && !errors.Is(err, ports.ErrNotFound) {
			return rec, fmt.Errorf("detaching certificate %s from %s: %w", id, thing, err)
		}
		m.Log.Warn("AUDIT certificate revoked and detached", "thing", thing, "certificateId", id)
	}
	if exists {
		if err := m.Registry.RemoveThingFromGroup(ctx, m.Settings.RotationGroup, thing); err != nil && !errors.Is(err, ports.ErrNotFound) {
			return rec, err
		}
		if err := m.Deleter.DeleteThing(ctx, thing); err != nil && !errors.Is(err, ports.ErrNotFound) {
			return rec, fmt.Errorf("deleting thing %s: %w", thing, err)
		}
		m.Log.Warn("AUDIT thing deleted", "thing", thing)
	}
	return rec, nil
}
