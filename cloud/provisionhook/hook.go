// Package provisionhook is the pre-provisioning hook of bootcert's fleet
// provisioning template: AWS IoT calls it at every RegisterThing, before it
// creates anything, and provisions the device only when it answers
// {"allowProvisioning": true}
// (https://docs.aws.amazon.com/iot/latest/developerguide/pre-provisioning-hook.html).
//
// A claim certificate is a secret shared by every device of a batch: anyone
// who extracts it from one device can call RegisterThing. The hook is what
// turns "holds the claim" into "is one of our devices, once":
//
//   - the serial number (template parameter SerialNumber, the thing name)
//     must be on the allow list, the same records the JITR activator reads,
//     and not on the deny list (trust/deny-list.txt);
//   - one key, one name: a key already bound to another serial number is
//     refused (a device registers its own name only). The certificate AWS
//     IoT issues from the CSR has the subject "CN=AWS IoT Certificate", not
//     the CSR's, so the hook cannot read the name the device put in its CSR;
//     what ties a key to a name is this binding (and, where the allow list
//     records a TPM enrolment, the EKPubSHA256 parameter);
//   - the claim certificate must not be revoked by the factory CRL (when the
//     factory CA issued it);
//   - where the allow list records a TPM enrolment, the EKPubSHA256
//     parameter must match it;
//   - a serial number is bound, at its first admission, to the public key
//     of that certificate (S3 provisioned/{serial}.json, a conditional
//     write: of two concurrent claims exactly one wins). A later
//     registration of the same serial with another key is a replay and is
//     refused; the same key is the same device retrying (its key stays in
//     its TPM or token) and is allowed. A thing of that name that was
//     admitted by the bootstrap-certificate flow is refused too.
//
// The hook returns parameterOverrides {KeySHA256}: the template records the
// key's hash on the thing.
package provisionhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// Environment and S3 layout of the hook.
const (
	// EnvDenyListKey is the S3 key of the deny list: one device ID per
	// line, '#' starts a comment.
	EnvDenyListKey     = "DENY_LIST_KEY"
	DefaultDenyListKey = "trust/deny-list.txt"
	// RecordPrefix + serial + ".json" binds a serial number to a key.
	RecordPrefix = "provisioned/"
	// KeyRecordPrefix + keySHA256 + ".json" binds a key to a serial.
	KeyRecordPrefix = "provisioned/keys/"
	// ParamEKPubSHA256 is the optional parameter matched against the allow
	// list's TPM enrolment.
	ParamEKPubSHA256 = "EKPubSHA256"
	// AttrProvisioned marks a thing admitted by fleet provisioning (the
	// template sets it; its value is the key hash).
	AttrKeySHA256 = "keySha256"
)

// Event is the hook's input.
type Event struct {
	ClaimCertificateID string            `json:"claimCertificateId"`
	CertificateID      string            `json:"certificateId"`
	CertificatePEM     string            `json:"certificatePem"`
	TemplateARN        string            `json:"templateArn"`
	ClientID           string            `json:"clientId"`
	Parameters         map[string]string `json:"parameters"`
}

// Result is the hook's output. Reason is bootcert's own field (AWS ignores
// it; the lab and the logs show it).
type Result struct {
	AllowProvisioning  bool              `json:"allowProvisioning"`
	ParameterOverrides map[string]string `json:"parameterOverrides,omitempty"`
	Reason             string            `json:"reason,omitempty"`
}

// Record is provisioned/{serial}.json.
type Record struct {
	Serial             string `json:"serial"`
	KeySHA256          string `json:"keySha256"`
	CertificateID      string `json:"certificateId"`
	ClaimCertificateID string `json:"claimCertificateId"`
	At                 string `json:"at"`
}

// Registry is what the hook reads of the registry.
type Registry interface {
	DescribeCertificate(ctx context.Context, id string) (ports.Certificate, error)
	DescribeThing(ctx context.Context, name string) (ports.Thing, error)
}

// Store is what the hook needs of the bucket.
type Store interface {
	Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error)
	PutIfAbsent(ctx context.Context, key string, body []byte, metadata map[string]string) error
}

// Hook decides RegisterThing requests.
type Hook struct {
	Registry    Registry
	Store       Store
	Trust       *fleet.Trust
	DenyListKey string
	Clock       clock.Clock
	Log         *slog.Logger
}

// refusal is a device-caused refusal (answered allowProvisioning false);
// other errors are infrastructure failures returned to the caller (AWS then
// refuses with ACCESS_DENIED too, and the device may retry).
type refusal struct{ msg string }

func (r refusal) Error() string { return r.msg }

func refuse(format string, a ...any) error { return refusal{fmt.Sprintf(format, a...)} }

// Handle decides one request.
func (h *Hook) Handle(ctx context.Context, ev Event) (Result, error) {
	res, err := h.decide(ctx, ev)
	var rf refusal
	if errors.As(err, &rf) {
		h.Log.Info("fleet provisioning refused", "serial", ev.Parameters[protocol.ParamSerialNumber], "certificateId", ev.CertificateID, "claimCertificateId", ev.ClaimCertificateID, "reason", rf.msg)
		return Result{AllowProvisioning: false, Reason: rf.msg}, nil
	}
	if err != nil {
		return Result{}, err
	}
	h.Log.Info("fleet provisioning allowed", "serial", ev.Parameters[protocol.ParamSerialNumber], "certificateId", ev.CertificateID, "claimCertificateId", ev.ClaimCertificateID)
	return res, nil
}

func (h *Hook) decide(ctx context.Context, ev Event) (Result, error) {
	serial := ev.Parameters[protocol.ParamSerialNumber]
	if serial == "" {
		return Result{}, refuse("parameter %s is missing", protocol.ParamSerialNumber)
	}
	if err := protocol.ValidThingName(serial); err != nil {
		return Result{}, refuse("serial number %q cannot be a thing name: %v", serial, err)
	}
	chain, err := protocol.ParseChain([]byte(ev.CertificatePEM))
	if err != nil {
		return Result{}, refuse("certificatePem: %v", err)
	}
	leaf := chain[0]
	if protocol.CertificateID(leaf.Raw) != ev.CertificateID {
		return Result{}, refuse("certificatePem is not certificate %s", ev.CertificateID)
	}
	entry, err := h.Trust.Lookup(ctx, serial)
	if errors.Is(err, fleet.ErrNotAllowed) {
		return Result{}, refuse("%v", err)
	}
	if err != nil {
		return Result{}, err
	}
	denied, err := h.denied(ctx, serial)
	if err != nil {
		return Result{}, err
	}
	if denied {
		return Result{}, refuse("device %s is on the deny list s3://%s/%s", serial, h.Trust.Settings.Bucket, h.DenyListKey)
	}
	if err := h.checkClaim(ctx, ev.ClaimCertificateID); err != nil {
		return Result{}, err
	}
	if a := entry.Attestation; a != nil && a.EKPubSHA256 != "" && ev.Parameters[ParamEKPubSHA256] != a.EKPubSHA256 {
		return Result{}, refuse("device %s: parameter %s does not match the TPM enrolled at the factory", serial, ParamEKPubSHA256)
	}
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	keySHA := hex.EncodeToString(sum[:])
	t, err := h.Registry.DescribeThing(ctx, serial)
	switch {
	case errors.Is(err, ports.ErrNotFound):
	case err != nil:
		return Result{}, fmt.Errorf("describing thing %s: %w", serial, err)
	case t.Attributes[fleet.AttrBootstrap] != "":
		return Result{}, refuse("thing %s was admitted with bootstrap certificate %s: it does not onboard by claim", serial, t.Attributes[fleet.AttrBootstrap])
	case t.Attributes[AttrKeySHA256] != "" && t.Attributes[AttrKeySHA256] != keySHA:
		return Result{}, refuse("serial number %s was already provisioned with another key (replayed serial number)", serial)
	}
	if err := h.bindKey(ctx, serial, keySHA, ev); err != nil {
		return Result{}, err
	}
	if err := h.bind(ctx, serial, keySHA, ev); err != nil {
		return Result{}, err
	}
	return Result{AllowProvisioning: true, ParameterOverrides: map[string]string{protocol.ParamKeySHA256: keySHA}}, nil
}

// bind records serial -> key at the first admission and refuses another key
// later.
func (h *Hook) bind(ctx context.Context, serial, keySHA string, ev Event) error {
	prev, err := h.record(ctx, RecordPrefix+serial+".json", serial, keySHA, ev)
	if err != nil || prev == nil {
		return err
	}
	if prev.KeySHA256 != keySHA {
		return refuse("serial number %s was already provisioned with another key at %s (replayed serial number)", serial, prev.At)
	}
	return nil // the same device (same hardware key) retrying
}

// bindKey records key -> serial at the key's first admission and refuses the
// same key under another name later.
func (h *Hook) bindKey(ctx context.Context, serial, keySHA string, ev Event) error {
	prev, err := h.record(ctx, KeyRecordPrefix+keySHA+".json", serial, keySHA, ev)
	if err != nil || prev == nil {
		return err
	}
	if prev.Serial != serial {
		return refuse("this key is already registered as %s: a device registers its own name only, not %s", prev.Serial, serial)
	}
	return nil
}

// record writes the admission record at key unless one exists (S3
// conditional write); it returns the existing record (nil when this call
// wrote it).
func (h *Hook) record(ctx context.Context, key, serial, keySHA string, ev Event) (*Record, error) {
	rec := Record{Serial: serial, KeySHA256: keySHA, CertificateID: ev.CertificateID, ClaimCertificateID: ev.ClaimCertificateID, At: h.Clock.Now().UTC().Format(time.RFC3339)}
	body, _ := json.Marshal(rec)
	err := h.Store.PutIfAbsent(ctx, key, body, nil)
	if err == nil {
		return nil, nil
	}
	if !errors.Is(err, ports.ErrExists) {
		return nil, fmt.Errorf("writing s3 object %s: %w", key, err)
	}
	obj, err := h.Store.Get(ctx, key, "")
	if err != nil {
		return nil, fmt.Errorf("reading s3 object %s: %w", key, err)
	}
	var prev Record
	if err := json.Unmarshal(obj.Body, &prev); err != nil {
		return nil, fmt.Errorf("s3 object %s: %w", key, err)
	}
	return &prev, nil
}

// denied reads the deny list; a missing object denies nobody.
func (h *Hook) denied(ctx context.Context, serial string) (bool, error) {
	obj, err := h.Store.Get(ctx, h.DenyListKey, "")
	if errors.Is(err, ports.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading s3 object %s: %w", h.DenyListKey, err)
	}
	for _, line := range bytes.Split(obj.Body, []byte("\n")) {
		l, _, _ := strings.Cut(string(line), "#")
		if strings.TrimSpace(l) == serial {
			return true, nil
		}
	}
	return false, nil
}

// checkClaim refuses a claim certificate the factory CRL revokes.
func (h *Hook) checkClaim(ctx context.Context, id string) error {
	c, err := h.Registry.DescribeCertificate(ctx, id)
	if errors.Is(err, ports.ErrNotFound) {
		return refuse("claim certificate %s does not exist", id)
	}
	if err != nil {
		return fmt.Errorf("describing claim certificate %s: %w", id, err)
	}
	chain, err := protocol.ParseChain([]byte(c.PEM))
	if err != nil {
		return fmt.Errorf("claim certificate %s: %w", id, err)
	}
	revoked, err := h.Trust.Revoked(ctx, chain[0])
	if errors.Is(err, ports.ErrNotFound) {
		return nil // no factory CA uploaded: nothing to check against
	}
	if err != nil {
		return err
	}
	if revoked {
		return refuse("claim certificate %s is revoked by the factory CRL", id)
	}
	return nil
}

// ParseEvent decodes a hook event.
func ParseEvent(b []byte) (Event, error) {
	var ev Event
	if err := protocol.Decode("pre-provisioning hook event", b, &ev); err != nil {
		return ev, err
	}
	if !protocol.ValidCertificateID(ev.CertificateID) {
		return ev, fmt.Errorf("pre-provisioning hook event: certificateId %q is not 64 lower-hex digits", ev.CertificateID)
	}
	return ev, nil
}
