// Package certvendor is the rotation function: it answers a device's
// certificates/{thing}/get request with a new certificate for the CSR made
// by the device's hardware key, and its certificates/{thing}/ack with the
// commit (DESIGN.md, "Rotation", steps 2 and 6).
//
// Every check uses the registry and the allow list, never what the device
// claims: the principal comes from the broker (principal()), the previous
// certificate from the thing's attributes. Issuance is idempotent per
// (thing, jobId, CSR) through a record in S3
// (issuance/{thing}/{jobId}/{sha256(CSR)}.json).
package certvendor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Event is what the requests rule delivers: the device's message plus the
// fields the rule's SELECT adds.
type Event struct {
	ThingName  string `json:"thingName"`
	Operation  string `json:"operation"`
	Principal  string `json:"principal"`
	ClientID   string `json:"clientId"`
	ReceivedAt int64  `json:"receivedAt"`

	JobID         string `json:"jobId"`
	ClientToken   string `json:"clientToken"`
	CSR           string `json:"csr"`
	CertificateID string `json:"certificateId"`
	// Attestation is the CSR's key attestation (attest.go).
	Attestation *protocol.Attestation `json:"attestation,omitempty"`
}

// Operations.
const (
	OpGet = "get"
	OpAck = "ack"
)

// ErrEvent is wrapped by errors about events that cannot be answered at all
// (no valid thing name to reply to).
var ErrEvent = errors.New("unusable vendor event")

// ParseEvent decodes an event. Operation defaults to "get" for the
// DESIGN.md rule that selects only certificates/+/get.
//
// The identity (thingName, clientId, principal) and the operation come only
// from the fields the rule computes: an event with a key equal to one of
// them ignoring case, or with one of them twice, is refused
// (fleet.CheckComputedKeys) before anything is decoded, so it is dropped and
// nothing is published on any topic.
func ParseEvent(b []byte) (Event, error) {
	var ev Event
	if err := fleet.CheckComputedKeys("certificate request event", b, fleet.VendorComputed...); err != nil {
		return ev, fmt.Errorf("%w: %w", ErrEvent, err)
	}
	if err := protocol.Decode("certificate request event", b, &ev); err != nil {
		return ev, fmt.Errorf("%w: %v", ErrEvent, err)
	}
	if ev.Operation == "" {
		ev.Operation = OpGet
	}
	if err := protocol.ValidThingName(ev.ThingName); err != nil {
		return ev, fmt.Errorf("%w: thingName: %v", ErrEvent, err)
	}
	if ev.Operation != OpGet && ev.Operation != OpAck {
		return ev, fmt.Errorf("%w: operation %q is not get or ack", ErrEvent, ev.Operation)
	}
	return ev, nil
}

// Reply is what the vendor published (also the function's result).
type Reply struct {
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
}

// Registry is what the vendor needs of the AWS IoT registry
// (ports.Registry has it all).
type Registry interface {
	DescribeThing(ctx context.Context, name string) (ports.Thing, error)
	UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error
	ListThingPrincipals(ctx context.Context, thing string) ([]string, error)
	ListThingGroupsForThing(ctx context.Context, thing string) ([]string, error)
	RemoveThingFromGroup(ctx context.Context, group, thing string) error
	JobExecutionStatus(ctx context.Context, jobID, thing string) (protocol.JobStatus, error)
	DescribeCertificate(ctx context.Context, id string) (ports.Certificate, error)
	CreateCertificateFromCSR(ctx context.Context, csrPEM string, active bool) (ports.Certificate, error)
	UpdateCertificate(ctx context.Context, id, status string) error
	DeleteCertificate(ctx context.Context, id string) error
	AttachPolicy(ctx context.Context, policy, targetARN string) error
	AttachThingPrincipal(ctx context.Context, thing, principalARN string) error
}

// Store is what the vendor needs of the bucket: issuance records and
// certificate packages (see ports.Store for the semantics).
type Store interface {
	Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error)
	Put(ctx context.Context, key string, body []byte, metadata map[string]string) error
	// PutIfAbsent fails with ports.ErrExists when the key exists: of
	// concurrent writers exactly one wins.
	PutIfAbsent(ctx context.Context, key string, body []byte, metadata map[string]string) error
	List(ctx context.Context, prefix string) ([]string, error)
	Delete(ctx context.Context, key string) error
	// Presign returns a GET URL whose query string is a credential.
	Presign(ctx context.Context, key string, ttl time.Duration) (string, error)
}

// Publisher publishes the replies (QoS 1).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}

// Vendor handles get and ack.
type Vendor struct {
	Registry  Registry
	Store     Store
	Publisher Publisher
	Trust     *fleet.Trust
	Settings  fleet.Settings
	Clock     clock.Clock
	Log       *slog.Logger
}

// rejection is a device-facing failure.
type rejection struct {
	code      protocol.Code
	msg       string
	retryable bool
}

func (r *rejection) Error() string { return string(r.code) + ": " + r.msg }

func rej(code protocol.Code, format string, a ...any) *rejection {
	return &rejection{code: code, msg: fmt.Sprintf(format, a...)}
}

// HandleEvent decodes, handles and replies. Events without a valid thing
// name or operation are dropped and logged (there is nobody to answer, and
// an error would only make Lambda retry them).
func (v *Vendor) HandleEvent(ctx context.Context, b []byte) (Reply, error) {
	ev, err := ParseEvent(b)
	if err != nil {
		// The audit line: what was refused and why (key names, never
		// values); the sender is the rule's exact-case thingName (topic(2)).
		var raw map[string]json.RawMessage // exact-key matching, unlike a struct
		var sender string
		if json.Unmarshal(b, &raw) == nil {
			json.Unmarshal(raw["thingName"], &sender)
		}
		v.Log.Warn("request dropped", "err", err.Error(), "identityKeyCollision", errors.Is(err, fleet.ErrIdentityKey), "topicThing", sender)
		return Reply{}, nil
	}
	return v.Handle(ctx, ev)
}

// Handle answers one request and publishes the reply.
func (v *Vendor) Handle(ctx context.Context, ev Event) (Reply, error) {
	var payload any
	var err error
	if ev.Operation == OpAck {
		payload, err = v.ack(ctx, ev)
	} else {
		payload, err = v.get(ctx, ev)
	}
	suffix := protocol.SuffixAccepted
	if err != nil {
		var r *rejection
		switch {
		case errors.As(err, &r):
		case errors.Is(err, ports.ErrThrottled):
			r = &rejection{code: protocol.Throttled, msg: "the registry is busy, retry later", retryable: true}
		default:
			r = &rejection{code: protocol.Internal, msg: "internal error, retry later", retryable: true}
		}
		v.Log.Warn("request rejected", "thing", ev.ThingName, "operation", ev.Operation, "jobId", ev.JobID, "code", r.code, "why", err.Error())
		payload = protocol.Rejected{ClientToken: ev.ClientToken, Code: r.code, Message: r.msg, Retryable: r.retryable}
		suffix = protocol.SuffixRejected
	}
	body, merr := json.Marshal(payload)
	if merr != nil {
		return Reply{}, merr
	}
	topic := "certificates/" + ev.ThingName + "/" + ev.Operation + "/" + suffix
	if perr := v.Publisher.Publish(ctx, topic, body); perr != nil {
		return Reply{Topic: topic, Payload: body}, fmt.Errorf("replying on %s: %w", topic, perr)
	}
	return Reply{Topic: topic, Payload: body}, nil
}

// bootDescribed is what checkDevice learnt of the thing's bootstrap
// certificate when it is not the certificate used: Described when it
// called DescribeCertificate for it, Cert empty when it no longer exists.
// The ack reuses it instead of describing the same certificate again
// (DescribeCertificate is the quota the storm runs out of first:
// docs/cloud.md, "Quotas").
type bootDescribed struct {
	Described bool
	Cert      ports.Certificate
}

// checkDevice runs the checks common to get and ack: client ID, allow list,
// principal attached and ACTIVE, revocation, activation.
func (v *Vendor) checkDevice(ctx context.Context, ev Event) (manifest.Entry, ports.Thing, ports.Certificate, error) {
	entry, thing, cert, _, err := v.checkDeviceBoot(ctx, ev)
	return entry, thing, cert, err
}

func (v *Vendor) checkDeviceBoot(ctx context.Context, ev Event) (manifest.Entry, ports.Thing, ports.Certificate, bootDescribed, error) {
	var boot bootDescribed
	entry, thing, cert, err := v.checkDeviceInto(ctx, ev, &boot)
	return entry, thing, cert, boot, err
}

func (v *Vendor) checkDeviceInto(ctx context.Context, ev Event, boot *bootDescribed) (manifest.Entry, ports.Thing, ports.Certificate, error) {
	var entry manifest.Entry
	var thing ports.Thing
	var cert ports.Certificate
	if ev.ClientID != ev.ThingName {
		return entry, thing, cert, rej(protocol.NotAllowed, "client ID %q is not the thing name %q", ev.ClientID, ev.ThingName)
	}
	entry, err := v.Trust.Lookup(ctx, ev.ThingName)
	if errors.Is(err, fleet.ErrNotAllowed) {
		return entry, thing, cert, rej(protocol.NotAllowed, "device %s is not on the allow list", ev.ThingName)
	}
	if err != nil {
		return entry, thing, cert, err
	}
	if !protocol.ValidCertificateID(ev.Principal) {
		return entry, thing, cert, rej(protocol.NotAllowed, "the request did not come over a certificate")
	}
	thing, err = v.Registry.DescribeThing(ctx, ev.ThingName)
	if errors.Is(err, ports.ErrNotFound) {
		return entry, thing, cert, rej(protocol.NotAllowed, "thing %s is not registered", ev.ThingName)
	}
	if err != nil {
		return entry, thing, cert, err
	}
	principals, err := v.Registry.ListThingPrincipals(ctx, ev.ThingName)
	if err != nil {
		return entry, thing, cert, err
	}
	if !slices.ContainsFunc(principals, func(arn string) bool { return fleet.CertARNID(arn) == ev.Principal }) {
		return entry, thing, cert, rej(protocol.NotAllowed, "certificate %s is not attached to %s", ev.Principal, ev.ThingName)
	}
	cert, err = v.Registry.DescribeCertificate(ctx, ev.Principal)
	if errors.Is(err, ports.ErrNotFound) {
		return entry, thing, cert, rej(protocol.NotAllowed, "certificate %s does not exist", ev.Principal)
	}
	if err != nil {
		return entry, thing, cert, err
	}
	if cert.Status != ports.StatusActive {
		// A session on a certificate that left ACTIVE lives on for up to
		// a few minutes: "Within a few minutes of updating a certificate
		// from the ACTIVE state to any other state, AWS IoT disconnects all
		// devices that used that certificate to connect"
		// (https://docs.aws.amazon.com/iot/latest/apireference/API_UpdateCertificate.html).
		// An operator's revoke (cloud/lifecycle) queues the recovery's
		// rotation at once, so the device may start it on that session:
		// retryable, so that it keeps its staged key and job and asks
		// again on its next connection (the bootstrap certificate, which
		// the recovery re-activated) instead of failing the rotation.
		r := rej(protocol.NotAllowed, "certificate %s used for this request is %s; AWS IoT ends its sessions within minutes: retry on the next connection", ev.Principal, cert.Status)
		r.retryable = true
		return entry, thing, cert, r
	}
	// Revocation: the certificate used and the thing's bootstrap certificate.
	ids := []string{cert.ID}
	if b := thing.Attributes[fleet.AttrBootstrap]; b != "" && b != cert.ID {
		ids = append(ids, b)
	}
	for _, id := range ids {
		c := cert
		if id != cert.ID {
			c, err = v.Registry.DescribeCertificate(ctx, id)
			if errors.Is(err, ports.ErrNotFound) {
				*boot = bootDescribed{Described: true}
				continue
			}
			if err != nil {
				return entry, thing, cert, err
			}
			*boot = bootDescribed{Described: true, Cert: c}
			// Before the first commit a REVOKED bootstrap certificate means
			// the device was refused; afterwards REVOKED may be the
			// bootstrap-after-rotation setting, and only the CRL counts.
			if c.Status == ports.StatusRevoked && thing.Attributes[fleet.AttrOperational] == "" {
				return entry, thing, cert, rej(protocol.Revoked, "the bootstrap certificate of %s is revoked", ev.ThingName)
			}
		}
		chain, perr := protocol.ParseChain([]byte(c.PEM))
		if perr != nil {
			// The registry's PEM: AWS-issued, never the device's word.
			v.Log.Warn("registry certificate PEM does not parse: CRL not checked", "thing", ev.ThingName, "certificateId", id, "err", perr)
			continue
		}
		revoked, err := v.Trust.Revoked(ctx, chain[0])
		if err != nil {
			return entry, thing, cert, err
		}
		if revoked {
			return entry, thing, cert, rej(protocol.Revoked, "certificate %s of %s is on the factory CRL", id, ev.ThingName)
		}
	}
	if v.Settings.ExplicitActivation && thing.Attributes[fleet.AttrActivated] != "true" {
		return entry, thing, cert, rej(protocol.NotActivated, "device %s has not been activated (POST /devices/%s/activation)", ev.ThingName, ev.ThingName)
	}
	return entry, thing, cert, nil
}

func (v *Vendor) rotationPending(ctx context.Context, ev Event) error {
	if ev.JobID == "" {
		return rej(protocol.NoRotationPending, "jobId is missing")
	}
	groups, err := v.Registry.ListThingGroupsForThing(ctx, ev.ThingName)
	if err != nil {
		return err
	}
	if !slices.Contains(groups, v.Settings.RotationGroup) {
		return rej(protocol.NoRotationPending, "%s is not in the rotation group %s", ev.ThingName, v.Settings.RotationGroup)
	}
	st, err := v.Registry.JobExecutionStatus(ctx, ev.JobID, ev.ThingName)
	if errors.Is(err, ports.ErrNotFound) {
		return rej(protocol.NoRotationPending, "no execution of job %s for %s", ev.JobID, ev.ThingName)
	}
	if err != nil {
		return err
	}
	if !st.Pending() {
		return rej(protocol.NoRotationPending, "execution of job %s for %s is %s", ev.JobID, ev.ThingName, st)
	}
	return nil
}

func (v *Vendor) get(ctx context.Context, ev Event) (any, error) {
	if acc, ok := v.repeatGet(ctx, ev); ok {
		return acc, nil
	}
	entry, _, _, err := v.checkDevice(ctx, ev)
	if err != nil {
		return nil, err
	}
	if err := v.rotationPending(ctx, ev); err != nil {
		return nil, err
	}
	var csrDER []byte
	var attested bool
	preProvisioned := ev.CSR == ""
	if preProvisioned {
		if len(entry.FinalCSR) == 0 {
			return nil, rej(protocol.BadCSR, "no csr in the request and no pre-provisioned CSR in the allow list for %s", ev.ThingName)
		}
		if _, err := v.checkAttestation(ctx, ev, entry, nil); err != nil {
			return nil, err
		}
		csrDER = entry.FinalCSR
	} else {
		req, err := fleet.CheckCSR([]byte(ev.CSR), ev.ThingName)
		if err != nil {
			return nil, rej(protocol.BadCSR, "%v", err)
		}
		csrDER = req.Raw
		if attested, err = v.checkAttestation(ctx, ev, entry, req); err != nil {
			return nil, err
		}
	}
	recKey := fleet.IssuanceKey(ev.ThingName, ev.JobID, csrDER)
	cert, found, err := v.previousIssuance(ctx, recKey)
	if err != nil {
		return nil, err
	}
	var pkgKey string
	switch {
	case found && preProvisioned:
		pkgKey = fleet.PackageKey(ev.ThingName, fleet.PreProvisionedName)
	case found:
	case preProvisioned:
		cert, pkgKey, err = v.activatePreProvisioned(ctx, ev.ThingName)
		if err != nil {
			return nil, err
		}
		// Concurrent requests activate the same certificate: whoever writes
		// the record, it names this one.
		if err := v.record(ctx, recKey, ev, csrDER, cert.ID, false); err != nil && !errors.Is(err, ports.ErrExists) {
			return nil, err
		}
	default:
		cert, found, err = v.issue(ctx, recKey, ev, csrDER, attested)
		if err != nil {
			return nil, err
		}
	}
	if !preProvisioned {
		// Repeated on retries (idempotent) so that a crash between the
		// record and the package converges.
		if pkgKey, err = v.deliver(ctx, ev.ThingName, cert); err != nil {
			return nil, err
		}
	}
	loc, err := v.Store.Presign(ctx, pkgKey, v.Settings.PresignTTL)
	if err != nil {
		return nil, err
	}
	v.Log.Info("certificate issued", "thing", ev.ThingName, "jobId", ev.JobID, "certificateId", cert.ID, "retry", found, "preProvisioned", preProvisioned)
	return protocol.GetAccepted{ClientToken: ev.ClientToken, CertificateID: cert.ID, CertificatePEM: cert.PEM, Location: loc, Attested: attested}, nil
}

// errStale says an issuance record names a certificate that no longer
// exists: the request may issue again.
var errStale = errors.New("stale issuance record")

// previousIssuance returns the certificate issued earlier for the same
// (thing, job, CSR) when it is still ACTIVE. A record whose certificate was
// deleted is removed (and found is false), so that a new one can be written.
func (v *Vendor) previousIssuance(ctx context.Context, recKey string) (ports.Certificate, bool, error) {
	c, err := v.recorded(ctx, recKey)
	switch {
	case errors.Is(err, ports.ErrNotFound):
		return c, false, nil
	case errors.Is(err, errStale):
		if err := v.Store.Delete(ctx, recKey); err != nil {
			return c, false, fmt.Errorf("deleting stale issuance record %s: %w", recKey, err)
		}
		return c, false, nil
	case err != nil:
		return c, false, err
	}
	return c, true, nil
}

// recorded reads the issuance record and its certificate: ErrNotFound
// without a record, errStale when its certificate is gone, a rejection when
// it is no longer ACTIVE.
func (v *Vendor) recorded(ctx context.Context, recKey string) (ports.Certificate, error) {
	obj, err := v.Store.Get(ctx, recKey, "")
	if errors.Is(err, ports.ErrNotFound) {
		return ports.Certificate{}, err
	}
	if err != nil {
		return ports.Certificate{}, fmt.Errorf("reading issuance record %s: %w", recKey, err)
	}
	var rec fleet.Issuance
	if err := json.Unmarshal(obj.Body, &rec); err != nil || !protocol.ValidCertificateID(rec.CertificateID) {
		return ports.Certificate{}, fmt.Errorf("issuance record %s is corrupt (delete it to issue again): %v", recKey, err)
	}
	c, err := v.Registry.DescribeCertificate(ctx, rec.CertificateID)
	if errors.Is(err, ports.ErrNotFound) {
		return ports.Certificate{}, fmt.Errorf("%w %s: certificate %s: %w", errStale, recKey, rec.CertificateID, err)
	}
	if err != nil {
		return ports.Certificate{}, err
	}
	if c.Status != ports.StatusActive {
		return ports.Certificate{}, rej(protocol.NoRotationPending, "the certificate issued for this request (%s) is %s", c.ID, c.Status)
	}
	return c, nil
}

// record writes the issuance record if there is none (conditional write:
// of concurrent writers exactly one succeeds, the others get ErrExists).
func (v *Vendor) record(ctx context.Context, recKey string, ev Event, csrDER []byte, certID string, attested bool) error {
	rec, err := json.Marshal(fleet.Issuance{Thing: ev.ThingName, JobID: ev.JobID, CSRSHA256: fleet.CSRSHA256(csrDER), CertificateID: certID, IssuedAt: v.Clock.Now().UTC().Format(time.RFC3339)})
	if err != nil {
		return fmt.Errorf("encoding issuance record %s: %w", recKey, err)
	}
	meta := map[string]string{fleet.MetaCertificateID: certID, metaPrincipal: ev.Principal}
	if attested {
		meta[metaAttested] = "true"
	}
	if err := v.Store.PutIfAbsent(ctx, recKey, rec, meta); err != nil {
		return fmt.Errorf("writing issuance record s3://%s/%s: %w", v.Settings.Bucket, recKey, err)
	}
	return nil
}

// issue creates a certificate for the CSR and claims the request with the
// issuance record. Two instances may handle identical requests at once
// (Lambda runs them in parallel): both create a certificate, only one
// record write succeeds. The loser deletes its certificate (not yet
// attached to anything, so no device can use it) and answers with the
// winner's (found is then true).
func (v *Vendor) issue(ctx context.Context, recKey string, ev Event, csrDER []byte, attested bool) (c ports.Certificate, found bool, err error) {
	c, err = v.Registry.CreateCertificateFromCSR(ctx, fleet.CSRPEM(csrDER), true)
	if err != nil {
		return c, false, err
	}
	werr := v.record(ctx, recKey, ev, csrDER, c.ID, attested)
	if werr == nil {
		return c, false, nil
	}
	if derr := v.discard(ctx, c.ID); derr != nil {
		v.Log.Error("deleting a certificate issued twice", "thing", ev.ThingName, "certificateId", c.ID, "err", derr.Error())
	}
	if !errors.Is(werr, ports.ErrExists) {
		return ports.Certificate{}, false, werr
	}
	winner, err := v.recorded(ctx, recKey)
	if err != nil {
		return winner, false, fmt.Errorf("reading the concurrent issuance %s: %w", recKey, err)
	}
	v.Log.Info("concurrent identical request: answering with its certificate", "thing", ev.ThingName, "jobId", ev.JobID, "certificateId", winner.ID, "discarded", c.ID)
	return winner, true, nil
}

// discard deletes a certificate nothing refers to (AWS deletes only
// INACTIVE or REVOKED certificates).
func (v *Vendor) discard(ctx context.Context, id string) error {
	if err := v.Registry.UpdateCertificate(ctx, id, ports.StatusInactive); err != nil {
		return err
	}
	return v.Registry.DeleteCertificate(ctx, id)
}

// deliver attaches the operational policy and the thing to an issued
// certificate and writes its package; every step is idempotent.
func (v *Vendor) deliver(ctx context.Context, thing string, c ports.Certificate) (string, error) {
	if err := v.Registry.AttachPolicy(ctx, v.Settings.OperationalPolicy, c.ARN); err != nil {
		return "", err
	}
	if err := v.Registry.AttachThingPrincipal(ctx, thing, c.ARN); err != nil {
		return "", err
	}
	key := fleet.PackageKey(thing, c.ID)
	if err := v.Store.Put(ctx, key, []byte(c.PEM), map[string]string{fleet.MetaCertificateID: c.ID}); err != nil {
		return "", fmt.Errorf("writing package s3://%s/%s: %w", v.Settings.Bucket, key, err)
	}
	return key, nil
}

// activatePreProvisioned activates the final certificate the activator made
// from the manifest's CSR.
func (v *Vendor) activatePreProvisioned(ctx context.Context, thing string) (ports.Certificate, string, error) {
	key := fleet.PackageKey(thing, fleet.PreProvisionedName)
	obj, err := v.Store.Get(ctx, key, "")
	if errors.Is(err, ports.ErrNotFound) {
		return ports.Certificate{}, "", rej(protocol.Internal, "the pre-provisioned certificate of %s is missing", thing)
	}
	if err != nil {
		return ports.Certificate{}, "", err
	}
	id := obj.Metadata[fleet.MetaCertificateID]
	if !protocol.ValidCertificateID(id) {
		return ports.Certificate{}, "", fmt.Errorf("package s3://%s/%s has no valid %s metadata", v.Settings.Bucket, key, fleet.MetaCertificateID)
	}
	principals, err := v.Registry.ListThingPrincipals(ctx, thing)
	if err != nil {
		return ports.Certificate{}, "", err
	}
	if !slices.ContainsFunc(principals, func(arn string) bool { return fleet.CertARNID(arn) == id }) {
		return ports.Certificate{}, "", fmt.Errorf("pre-provisioned certificate %s is not attached to %s", id, thing)
	}
	c, err := v.Registry.DescribeCertificate(ctx, id)
	if err != nil {
		return c, "", err
	}
	switch c.Status {
	case ports.StatusActive:
	case ports.StatusInactive:
		if err := v.Registry.UpdateCertificate(ctx, id, ports.StatusActive); err != nil {
			return c, "", err
		}
		c.Status = ports.StatusActive
	default:
		return c, "", rej(protocol.Revoked, "the pre-provisioned certificate of %s is %s", thing, c.Status)
	}
	return c, key, nil
}

func (v *Vendor) ack(ctx context.Context, ev Event) (any, error) {
	if !protocol.ValidCertificateID(ev.CertificateID) {
		return nil, rej(protocol.NotAllowed, "certificateId is missing or malformed")
	}
	if ev.Principal != ev.CertificateID {
		return nil, rej(protocol.NotAllowed, "the ack must come over the new certificate %s", ev.CertificateID)
	}
	if v.repeatAck(ctx, ev) {
		v.Log.Info("rotation already committed: repeated ack", "thing", ev.ThingName, "jobId", ev.JobID, "certificateId", ev.CertificateID)
		return protocol.AckAccepted{ClientToken: ev.ClientToken, CertificateID: ev.CertificateID}, nil
	}
	_, thing, cert, boot, err := v.checkDeviceBoot(ctx, ev)
	if err != nil {
		return nil, err
	}
	// The certificate must be one the vendor issued to this thing for this job.
	if ev.JobID == "" {
		return nil, rej(protocol.NoRotationPending, "jobId is missing")
	}
	// Already committed (a retried ack): the registry says so.
	issued := thing.Attributes[fleet.AttrOperational] == cert.ID
	keys, err := v.Store.List(ctx, fleet.IssuanceJobPrefix(ev.ThingName, ev.JobID))
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if issued {
			break
		}
		obj, err := v.Store.Get(ctx, k, "")
		if err != nil {
			return nil, err
		}
		var rec fleet.Issuance
		if json.Unmarshal(obj.Body, &rec) == nil && rec.CertificateID == cert.ID {
			issued = true
			break
		}
	}
	if !issued {
		return nil, rej(protocol.NotAllowed, "certificate %s was not issued to %s for job %s", cert.ID, ev.ThingName, ev.JobID)
	}
	if thing.Attributes[fleet.AttrOperational] != cert.ID {
		attrs := map[string]string{fleet.AttrOperational: cert.ID, fleet.AttrPrevious: thing.Attributes[fleet.AttrOperational]}
		if attrs[fleet.AttrPrevious] == "" {
			attrs[fleet.AttrPrevious] = "none"
		}
		if chain, err := protocol.ParseChain([]byte(cert.PEM)); err == nil {
			attrs[fleet.AttrNotBefore] = strconv.FormatInt(chain[0].NotBefore.Unix(), 10)
			attrs[fleet.AttrNotAfter] = strconv.FormatInt(chain[0].NotAfter.Unix(), 10)
		}
		if err := v.Registry.UpdateThingAttributes(ctx, ev.ThingName, attrs); err != nil {
			return nil, err
		}
	}
	// Idempotent follow-ups, repeated on every ack so that a crash after
	// the commit record converges. Leaving the rotation group comes last:
	// repeatAck takes a thing out of the group as the sign that all of
	// them are done.
	if b := thing.Attributes[fleet.AttrBootstrap]; b != "" && b != cert.ID && v.Settings.BootstrapAfterRotation != "KEEP" {
		// checkDevice described it moments ago (it is not the
		// certificate used); describe it only if it did not.
		bc, err := boot.Cert, error(nil)
		switch {
		case !boot.Described:
			bc, err = v.Registry.DescribeCertificate(ctx, b)
		case bc.ID == "":
			err = fmt.Errorf("bootstrap certificate %s: %w", b, ports.ErrNotFound)
		}
		switch {
		case errors.Is(err, ports.ErrNotFound):
		case err != nil:
			return nil, err
		case bc.Status == ports.StatusActive || (bc.Status == ports.StatusInactive && v.Settings.BootstrapAfterRotation == "REVOKED"):
			if err := v.Registry.UpdateCertificate(ctx, b, v.Settings.BootstrapAfterRotation); err != nil {
				return nil, err
			}
		}
	}
	if err := v.Registry.RemoveThingFromGroup(ctx, v.Settings.RotationGroup, ev.ThingName); err != nil && !errors.Is(err, ports.ErrNotFound) {
		return nil, err
	}
	v.Log.Info("rotation committed", "thing", ev.ThingName, "jobId", ev.JobID, "certificateId", cert.ID)
	return protocol.AckAccepted{ClientToken: ev.ClientToken, CertificateID: cert.ID}, nil
}

// Metadata of an issuance record (besides fleet.MetaCertificateID): the
// certificate the request came over, and whether its key was attested.
const (
	metaPrincipal = "principal"
	metaAttested  = "attested"
)

// repeatGet answers a get that was answered already: same thing, job, CSR
// and principal, within PresignTTL of the issuance, its certificate
// delivered (the package is written after the policy and the thing are
// attached). A device asks again when the answer is late (its reply
// timeout, 30 s by default): in a storm the requests wait in the
// function's queue longer than that, and every repeat that went through
// the checks again cost two DescribeCertificate calls, the quota the storm
// runs out of first (docs/cloud.md, "Quotas"). The repeat gets the same
// answer from S3 alone; every check ran when the record was written, for
// this principal, and the ack runs them all again before the commit.
// Anything else (no record, another principal, older, no package) takes
// the full path.
func (v *Vendor) repeatGet(ctx context.Context, ev Event) (protocol.GetAccepted, bool) {
	if ev.CSR == "" || ev.JobID == "" || ev.ClientID != ev.ThingName || !protocol.ValidCertificateID(ev.Principal) {
		return protocol.GetAccepted{}, false
	}
	entry, err := v.Trust.Lookup(ctx, ev.ThingName)
	if err != nil {
		return protocol.GetAccepted{}, false
	}
	req, err := fleet.CheckCSR([]byte(ev.CSR), ev.ThingName)
	if err != nil {
		return protocol.GetAccepted{}, false
	}
	// The attestation is checked again (S3 records only): a key seen in
	// another rotation is refused on the full path.
	if _, err := v.checkAttestation(ctx, ev, entry, req); err != nil {
		return protocol.GetAccepted{}, false
	}
	obj, err := v.Store.Get(ctx, fleet.IssuanceKey(ev.ThingName, ev.JobID, req.Raw), "")
	if err != nil || obj.Metadata[metaPrincipal] != ev.Principal {
		return protocol.GetAccepted{}, false
	}
	var rec fleet.Issuance
	if json.Unmarshal(obj.Body, &rec) != nil || !protocol.ValidCertificateID(rec.CertificateID) || rec.CertificateID != obj.Metadata[fleet.MetaCertificateID] {
		return protocol.GetAccepted{}, false
	}
	at, err := time.Parse(time.RFC3339, rec.IssuedAt)
	if err != nil || v.Clock.Now().Sub(at) > v.Settings.PresignTTL {
		return protocol.GetAccepted{}, false
	}
	pkgKey := fleet.PackageKey(ev.ThingName, rec.CertificateID)
	pkg, err := v.Store.Get(ctx, pkgKey, "")
	if err != nil || pkg.Metadata[fleet.MetaCertificateID] != rec.CertificateID {
		return protocol.GetAccepted{}, false
	}
	loc, err := v.Store.Presign(ctx, pkgKey, v.Settings.PresignTTL)
	if err != nil {
		return protocol.GetAccepted{}, false
	}
	v.Log.Info("certificate issued", "thing", ev.ThingName, "jobId", ev.JobID, "certificateId", rec.CertificateID, "retry", true, "repeat", true)
	return protocol.GetAccepted{ClientToken: ev.ClientToken, CertificateID: rec.CertificateID, CertificatePEM: string(pkg.Body),
		Location: loc, Attested: obj.Metadata[metaAttested] == "true"}, true
}

// repeatAck says whether an ack (over its own new certificate, checked by
// the caller) is for a rotation already committed with all its follow-ups:
// the thing's operational certificate is this one and the thing has left
// the rotation group (the last follow-up). It costs DescribeThing and
// ListThingGroupsForThing (350 and 100/s by default) instead of the checks'
// DescribeCertificate and ListThingPrincipals (10/s each). The answer
// changes nothing.
func (v *Vendor) repeatAck(ctx context.Context, ev Event) bool {
	if ev.ClientID != ev.ThingName || ev.JobID == "" {
		return false
	}
	if _, err := v.Trust.Lookup(ctx, ev.ThingName); err != nil {
		return false
	}
	thing, err := v.Registry.DescribeThing(ctx, ev.ThingName)
	if err != nil || thing.Attributes[fleet.AttrOperational] != ev.CertificateID {
		return false
	}
	groups, err := v.Registry.ListThingGroupsForThing(ctx, ev.ThingName)
	return err == nil && !slices.Contains(groups, v.Settings.RotationGroup)
}
