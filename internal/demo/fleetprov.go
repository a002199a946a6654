package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
)

// The fleet-provisioning scenario: onboarding by claim (AWS IoT fleet
// provisioning, docs/protocol.md "Onboarding by claim"). No bootstrap
// certificate: the firmware image carries a claim key and certificate
// shared by the batch; bootcertd makes its operational key in the TPM,
// sends its CSR (CreateCertificateFromCsr) and registers itself with the
// template bootcert-fleet (RegisterThing), whose pre-provisioning hook
// admits only serial numbers on the allow list. The maker has no factory
// CA: bootcert-admin cloud setup runs without --ca-cert (claim only: no CA
// registered, no CA object in the bucket). The device starts before
// its serial is on the allow list: the hook refuses it, the operator
// uploads the allow list, the device's retry onboards; then the
// continuous job rotates generation 1 to 2 like any device.

// FleetProvisioning is the scenario's name.
const FleetProvisioning = "fleet-provisioning"

func (r *run) fleet() bool { return r.o.Scenario == FleetProvisioning }

// otherDevice is a serial already on the allow list when the demo device
// first tries (the allow list of a batch before this device was recorded).
const otherDevice = "gw-demo-0002"

func (r *run) claimKeyURI() string { return "file:" + r.path("device", "claim.key") }

// writeAllowList writes the line's allow list: serial numbers only
// (device_id,bootstrap_sha256,final_csr with both other columns empty,
// docs/factory.md "Lines that only flash firmware").
func (r *run) writeAllowList(serials ...string) (string, error) {
	p := r.path("factory", "allow-list.csv")
	var b strings.Builder
	b.WriteString("device_id,bootstrap_sha256,final_csr\n")
	for _, s := range serials {
		b.WriteString(s + ",,\n")
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("writing the allow list: %w", err)
	}
	return p, nil
}

// claimFactory makes the batch's claim key and CSR; the line records
// serial numbers only.
func (r *run) claimFactory(ctx context.Context) error {
	if _, err := r.ctl(ctx, "key", "generate", r.claimKeyURI()); err != nil {
		return err
	}
	if _, err := r.ctl(ctx, "key", "csr", "--cn", "bootcert demo claim batch 1", "--out", r.path("factory", "claim.csr"), r.claimKeyURI()); err != nil {
		return err
	}
	r.n.say("claim key of batch 1 made (a file the line copies into every firmware image: %s), its CSR in %s; no factory CA, no factory station, no bootstrap certificate",
		r.path("device", "claim.key"), r.path("factory", "claim.csr"))
	if _, err := r.writeAllowList(otherDevice); err != nil {
		return err
	}
	r.n.say("the line recorded serial %s only: %s not yet on the allow list", otherDevice, Thing)
	return nil
}

// claimSetup runs bootcert-admin cloud setup with --claim-csr and no
// --ca-cert (a maker without a factory CA): AWS IoT issues the claim
// certificate (ACTIVE, policy bootcert-claim); no CA is registered.
func (r *run) claimSetup(ctx context.Context) error {
	out, err := r.admin(ctx, "cloud", "setup", "--json", "--lab", r.path("lab"), "--bucket", Bucket,
		"--allow-list", r.path("factory", "allow-list.csv"),
		"--claim-csr", r.path("factory", "claim.csr"), "--claim-out", r.path("device", "claim-cert.pem"))
	if err != nil {
		return err
	}
	var s struct {
		JobID           string `json:"jobId"`
		CACertificateID string `json:"caCertificateId"`
		Claim           *struct {
			CertificateID string `json:"certificateId"`
			Policy        string `json:"policy"`
		} `json:"claim"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.Claim == nil || s.Claim.CertificateID == "" {
		return fmt.Errorf("bootcert-admin cloud setup --claim-csr: no claim certificate in its output (%v): %s", err, out)
	}
	if s.CACertificateID != "" {
		return fmt.Errorf("bootcert-admin cloud setup without --ca-cert registered CA %s", s.CACertificateID)
	}
	r.res.ClaimID = s.Claim.CertificateID
	r.labW.setClaim(s.Claim.CertificateID)
	r.n.say("bootcert-admin cloud setup --claim-csr (no --ca-cert: claim only, no factory CA registered or trusted): claim certificate %s issued ACTIVE with policy %s (only the fleet provisioning topics of bootcert-fleet), written into the image; allow list uploaded, continuous job %s created",
		short(s.Claim.CertificateID), s.Claim.Policy, s.JobID)
	return nil
}

// identityConfig is bootcertd.toml's [identity] (and [provisioning]) of
// the scenario.
func (r *run) identityConfig() string {
	if !r.fleet() {
		return fmt.Sprintf("[identity]\nbootstrap_key = %q\nbootstrap_cert = %q\noperational_key = %q\n",
			r.keyURI("bootstrap.tpmkey"), r.path("device", "bootstrap.pem"), r.keyURI("op-{generation}.tpmkey"))
	}
	return fmt.Sprintf("[identity]\nmode = %q\noperational_key = %q\n\n[provisioning]\nclaim_key = %q\nclaim_cert = %q\ntemplate = %q\nserial_number = %q\n",
		FleetProvisioning, r.keyURI("op-{generation}.tpmkey"), r.claimKeyURI(), r.path("device", "claim-cert.pem"), "bootcert-fleet", Thing)
}

// fleetProvision: bootcertd starts with a serial the hook refuses, the
// operator adds it to the allow list, bootcertd's retry onboards, and the
// continuous job rotates the provisioned generation 1 to 2.
func (r *run) fleetProvision(ctx context.Context) error {
	if err := r.startDaemon(); err != nil {
		return err
	}
	if err := r.waitFor(ctx, "the pre-provisioning hook refusing "+Thing, func() (bool, error) {
		return r.labW.hookRefusals() > 0, nil
	}); err != nil {
		return err
	}
	r.n.sync()
	p, err := r.writeAllowList(otherDevice, Thing)
	if err != nil {
		return err
	}
	// Claim only: the run names the claim certificate --claim-out wrote;
	// registering it again changes nothing (--claim-csr would issue
	// another one).
	if _, err := r.admin(ctx, "cloud", "setup", "--json", "--lab", r.path("lab"), "--bucket", Bucket,
		"--claim-cert", r.path("device", "claim-cert.pem"), "--allow-list", p); err != nil {
		return err
	}
	r.n.say("operator: %s added to the allow list, bootcert-admin cloud setup --claim-cert (the same claim certificate, already registered) --allow-list uploaded it (the device keeps retrying meanwhile)", Thing)
	if err := r.waitFor(ctx, "onboarding by claim (connected with generation 1)", func() (bool, error) {
		s, err := r.status(ctx)
		return err == nil && s.Active.Generation >= 1 && s.ConnectedWith >= 1, err
	}); err != nil {
		return err
	}
	if err := r.waitFor(ctx, "operational generation 2 (the continuous job's rotation)", func() (bool, error) {
		s, err := r.status(ctx)
		return err == nil && operational(s) && s.Active.Generation == 2, err
	}); err != nil {
		return err
	}
	return r.waitFor(ctx, "job execution SUCCEEDED", func() (bool, error) {
		s, err := r.jobStatus(ctx)
		return s == "SUCCEEDED", err
	})
}

// fleetFinish adds the scenario's cloud state to the result.
func (r *run) fleetFinish(ctx context.Context) error {
	var err error
	if r.res.ClaimStatus, err = r.certStatus(ctx, r.res.ClaimID); err != nil {
		return err
	}
	r.res.ProvisionedID = r.labW.provisionedID()
	if r.res.ProvisionedID != "" {
		if r.res.ProvisionedStatus, err = r.certStatus(ctx, r.res.ProvisionedID); err != nil {
			return err
		}
	}
	r.res.HookRefusals = r.labW.hookRefusals()
	cas, err := r.api.ListCACertificates(ctx, &iot.ListCACertificatesInput{})
	if err != nil {
		return fmt.Errorf("ListCACertificates: %w", err)
	}
	r.res.CACertificates = len(cas.Certificates)
	th, err := r.api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(Thing)})
	if err != nil {
		return fmt.Errorf("DescribeThing %s: %w", Thing, err)
	}
	r.res.ThingAttributes = th.Attributes
	return nil
}

func (r *run) fleetSummary(b *strings.Builder) {
	res := r.res
	fmt.Fprintf(b, "  factory CAs registered: %d (claim only)\n", res.CACertificates)
	fmt.Fprintf(b, "  claim certificate %s: %s (stays ACTIVE for the next device of the batch)\n", short(res.ClaimID), res.ClaimStatus)
	fmt.Fprintf(b, "  pre-provisioning hook refusals before the allow list had %s: %d\n", Thing, res.HookRefusals)
	fmt.Fprintf(b, "  provisioned certificate %s (generation 1): %s after the rotation (retired by the reaper)\n", short(res.ProvisionedID), res.ProvisionedStatus)
	fmt.Fprintf(b, "  thing %s: operationalCert %s, keySha256 %s\n", Thing, short(res.ThingAttributes["operationalCert"]), short(res.ThingAttributes["keySha256"]))
}

// fleetCheck: the final state the scenario promises.
func (r *run) fleetCheck(want func(bool, string, ...any)) {
	res, st := r.res, r.res.Status
	want(st.Active.Generation == 2 && st.ConnectedWith == 2, "active generation %d, connected with %d; want 2 (provisioned 1, rotated to 2)", st.Active.Generation, st.ConnectedWith)
	want(st.LastResult == "SUCCEEDED", "last rotation %s, want SUCCEEDED", st.LastResult)
	want(res.JobStatus == "SUCCEEDED", "job execution %s, want SUCCEEDED", res.JobStatus)
	want(res.ClaimStatus == "ACTIVE", "claim certificate %s, want ACTIVE", res.ClaimStatus)
	want(res.HookRefusals >= 1, "the pre-provisioning hook refused nothing")
	want(res.CACertificates == 0, "%d CA certificates registered, want none (a maker without a factory CA)", res.CACertificates)
	want(res.ProvisionedID != "" && res.ProvisionedID != st.Active.CertificateID, "provisioned certificate %q, active %q", res.ProvisionedID, st.Active.CertificateID)
	want(res.ProvisionedStatus == "INACTIVE" || res.ProvisionedStatus == "DELETED", "provisioned certificate %s after the rotation, want INACTIVE or DELETED (retired)", res.ProvisionedStatus)
	want(res.ActiveCertStatus == "ACTIVE", "operational certificate %s, want ACTIVE", res.ActiveCertStatus)
	want(len(res.OperationalKeys) == 1 && res.OperationalKeys[0] == "op-2.tpmkey", "operational keys %v, want exactly op-2.tpmkey", res.OperationalKeys)
	want(strings.Contains(res.KeyInfo, "fixedTPM"), "bootcertctl key info does not show a TPM key:\n%s", res.KeyInfo)
	if _, err := os.Stat(r.path("device", "claim.key")); err != nil {
		want(false, "claim key gone: %v", err)
	}
}
