package certvendor

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Reason codes the vendor adds to attest's for a missing attestation.
const (
	// reasonNotAttested: the policy needs evidence and the request has none.
	reasonNotAttested = "NOT_ATTESTED"
	// reasonNotEnrolled: the policy needs an enrolment record and the
	// allow list has none for the device.
	reasonNotEnrolled = "NOT_ENROLLED"
)

// checkAttestation applies the fleet's AttestationPolicy to a get request
// with a CSR (docs/attestation.md), before anything is issued:
//   - off: nothing is checked;
//   - optional: a device without an enrolment record (allow-list
//     attestation columns) is issued to unattested; a device with one must
//     send evidence that verifies (it can, so leaving it out is a downgrade);
//   - required: every device must have a record and valid evidence.
//
// The evidence is verified against the stored record only (attest.Verify:
// the EK certificate pinned by its hash and chained to the EK roots, the AK
// from the record, the qualifying data of this request, the CSR's key, no
// reuse, TPM clock counts not going back). A verified key is recorded under
// fleet.AttestedKeyKey. A failure is an ATTESTATION_FAILED rejection whose
// message starts with the reason code. It reports whether evidence was
// verified (and recorded).
//
// A pre-provisioned request (csr nil: the factory's CSR from the allow list)
// carries no evidence: refused under required, allowed otherwise.
func (v *Vendor) checkAttestation(ctx context.Context, ev Event, entry manifest.Entry, csr *x509.CertificateRequest) (bool, error) {
	policy := v.Settings.AttestationPolicy
	if policy == "" || policy == fleet.AttestationOff {
		return false, nil
	}
	if csr == nil {
		if policy == fleet.AttestationRequired {
			return false, attestRej(reasonNotAttested, "the fleet requires key attestation and a pre-provisioned CSR carries none")
		}
		return false, nil
	}
	rec := attest.FromManifest(entry)
	switch {
	case rec == nil && policy == fleet.AttestationRequired:
		return false, attestRej(reasonNotEnrolled, "the fleet requires key attestation and the allow list has no TPM enrolment (ek_pub_sha256, ak_public, ak_name) for %s", ev.ThingName)
	case rec == nil:
		if ev.Attestation != nil {
			v.Log.Info("attestation ignored: device not enrolled", "thing", ev.ThingName, "jobId", ev.JobID)
		}
		return false, nil
	case ev.Attestation == nil:
		return false, attestRej(reasonNotAttested, "%s is enrolled for key attestation but the request carries none (a key outside its TPM?)", ev.ThingName)
	}
	roots, err := v.Trust.EKRoots(ctx)
	if err != nil {
		return false, err
	}
	latest, err := v.attestedKey(ctx, fleet.LatestAttestationKey(ev.ThingName))
	if err != nil {
		return false, err
	}
	exp := attest.Expected{
		QualifyingData: attest.RotationBinding(ev.ThingName, ev.JobID, ev.Principal, ev.ClientToken).QualifyingData(),
		CSR:            csr,
		KeySeen: func(name []byte) (bool, error) {
			r, err := v.attestedKey(ctx, fleet.AttestedKeyKey(ev.ThingName, hex.EncodeToString(name)))
			// the same request again (a retry) is not a reuse
			return r != nil && !(r.JobID == ev.JobID && r.Principal == ev.Principal && r.CSRSHA256 == fleet.CSRSHA256(csr.Raw)), err
		},
	}
	if latest != nil && !(latest.JobID == ev.JobID && latest.Principal == ev.Principal) {
		exp.LastClock = &attest.Clock{ResetCount: latest.ResetCount, RestartCount: latest.RestartCount}
	}
	a := ev.Attestation
	res, err := attest.Verify(rec, &attest.Evidence{Attest: a.Attest, Signature: a.Signature, Public: a.Public, EKCert: a.EKCert}, exp, attest.Trust{Roots: roots})
	var ae *attest.Error
	if errors.As(err, &ae) {
		msg := ae.Msg
		if ae.Err != nil {
			msg += ": " + ae.Err.Error()
		}
		return false, attestRej(string(ae.Reason), "%s", msg)
	}
	if err != nil {
		return false, err
	}
	ak := fleet.AttestedKey{
		Thing: ev.ThingName, KeyName: hex.EncodeToString(res.KeyName), KeyFingerprint: res.KeyFingerprint, Algorithm: res.Algorithm,
		AKName: hex.EncodeToString(res.AKName), EK: res.EK, EKIssuer: res.EKIssuer,
		JobID: ev.JobID, Principal: ev.Principal, ClientToken: ev.ClientToken, CSRSHA256: fleet.CSRSHA256(csr.Raw),
		ResetCount: res.Clock.ResetCount, RestartCount: res.Clock.RestartCount,
		VerifiedAt: v.Clock.Now().UTC().Format(time.RFC3339), Policy: policy,
	}
	body, err := json.Marshal(ak)
	if err != nil {
		return false, err
	}
	for _, key := range []string{fleet.AttestedKeyKey(ev.ThingName, ak.KeyName), fleet.LatestAttestationKey(ev.ThingName)} {
		if err := v.Store.Put(ctx, key, body, nil); err != nil {
			return false, fmt.Errorf("writing attestation record s3://%s/%s: %w", v.Settings.Bucket, key, err)
		}
	}
	v.Log.Info("key attestation verified", "thing", ev.ThingName, "jobId", ev.JobID, "keyName", ak.KeyName, "akName", ak.AKName, "ek", res.EK)
	return true, nil
}

// attestedKey reads an attestation record, nil when there is none.
func (v *Vendor) attestedKey(ctx context.Context, key string) (*fleet.AttestedKey, error) {
	obj, err := v.Store.Get(ctx, key, "")
	if errors.Is(err, ports.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading attestation record s3://%s/%s: %w", v.Settings.Bucket, key, err)
	}
	var r fleet.AttestedKey
	if err := json.Unmarshal(obj.Body, &r); err != nil {
		return nil, fmt.Errorf("attestation record s3://%s/%s is corrupt: %w", v.Settings.Bucket, key, err)
	}
	return &r, nil
}

func attestRej(reason, format string, a ...any) *rejection {
	return &rejection{code: protocol.AttestationFailed, msg: reason + ": " + fmt.Sprintf(format, a...)}
}
