package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/journal"
)

// operational: idle and connected with an operational generation.
func operational(s engine.Status) bool {
	return s.Phase == journal.Idle && s.Connection == "connected" && s.Active.Generation > 0 && s.ConnectedWith == s.Active.Generation
}

// rotate is the default scenario: the first rotation, bootstrap to
// operational.
func (r *run) rotate(ctx context.Context) error {
	if err := r.startDaemon(); err != nil {
		return err
	}
	if err := r.waitFor(ctx, "operational generation 1", func() (bool, error) {
		s, err := r.status(ctx)
		return err == nil && operational(s) && s.Active.Generation == 1, err
	}); err != nil {
		return err
	}
	return r.waitCloudSettled(ctx, "SUCCEEDED", "INACTIVE")
}

// waitCloudSettled waits for the job execution and the bootstrap
// certificate to reach the given statuses.
func (r *run) waitCloudSettled(ctx context.Context, job, boot string) error {
	if err := r.waitFor(ctx, "job execution "+job, func() (bool, error) {
		s, err := r.jobStatus(ctx)
		return s == job, err
	}); err != nil {
		return err
	}
	return r.waitFor(ctx, "bootstrap certificate "+boot, func() (bool, error) {
		s, err := r.certStatus(ctx, r.res.BootstrapID)
		return s == boot, err
	})
}

// rollback: the lab refuses every certificate it issues; the device rolls
// back to its bootstrap certificate and reports the job FAILED, and the
// reaper deletes the refused certificate.
func (r *run) rollback(ctx context.Context) error {
	if err := r.postFaults(ctx, `{"refuseIssuedCertificates":true}`); err != nil {
		return err
	}
	if err := r.startDaemon(); err != nil {
		return err
	}
	if err := r.waitFor(ctx, "rollback to the bootstrap certificate", func() (bool, error) {
		s, err := r.status(ctx)
		return err == nil && s.Phase == journal.Idle && s.LastResult == "ROLLED_BACK" && s.Connection == "connected" && s.ConnectedWith == 0, err
	}); err != nil {
		return err
	}
	if err := r.waitCloudSettled(ctx, "FAILED", "ACTIVE"); err != nil {
		return err
	}
	return r.waitFor(ctx, "the refused certificate deleted by the reaper", func() (bool, error) {
		ids := r.labW.refusedIDs()
		if len(ids) == 0 {
			return false, fmt.Errorf("no connection was refused by fault injection")
		}
		for _, id := range ids {
			if s, err := r.certStatus(ctx, id); s != "DELETED" {
				return false, err
			}
		}
		return true, nil
	})
}

func (r *run) postFaults(ctx context.Context, body string) error {
	req, err := http.NewRequestWithContext(ctx, "POST", r.endpoints.API+"/lab/faults", strings.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST /lab/faults: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("POST /lab/faults %s: %d %s", body, resp.StatusCode, bytes.TrimSpace(b))
	}
	r.n.say("POST /lab/faults %s: the lab will refuse the certificates CreateCertificateFromCsr issues", body)
	return nil
}

// crashTargets are the journal phases the crash scenario kills bootcertd
// at, one kill each.
var crashTargets = []journal.Phase{journal.KeyStaged, journal.CertStaged, journal.Switched}

// crash: SIGKILL bootcertd at each mid-rotation journal phase, restart it
// each time (asking for a new rotation when one finished), and show that
// it converges.
func (r *run) crash(ctx context.Context) error {
	for i, target := range crashTargets {
		if i > 0 {
			r.n.say("restarting bootcertd; next kill at %s", target)
		}
		if err := r.startDaemon(); err != nil {
			return err
		}
		seen := r.waitPhase(target, 10*time.Second)
		pid := r.daemon.pid()
		r.daemon.stop(syscall.SIGKILL, time.Second)
		e, _ := r.jw.read()
		r.res.Kills = append(r.res.Kills, Kill{Target: target, Seen: seen, Journal: e})
		if seen {
			r.n.say("SIGKILL bootcertd (pid %d) at journal phase %s; the journal says: %s", pid, target, describeEntry(e))
		} else {
			r.n.say("SIGKILL bootcertd (pid %d): phase %s not seen within 10s; the journal says: %s", pid, target, describeEntry(e))
		}
		if e.Phase == journal.Idle && e.Result != "" {
			if err := r.askRotation(ctx); err != nil {
				return err
			}
		}
	}
	r.n.say("restarting bootcertd a last time")
	if err := r.startDaemon(); err != nil {
		return err
	}
	if err := r.waitFor(ctx, "convergence (idle, connected with its operational credential)", func() (bool, error) {
		s, err := r.status(ctx)
		return err == nil && operational(s) && s.LastResult == "SUCCEEDED", err
	}); err != nil {
		return err
	}
	return r.waitCloudSettled(ctx, "SUCCEEDED", "INACTIVE")
}

// waitPhase polls the journal file until it shows phase p.
func (r *run) waitPhase(p journal.Phase, max time.Duration) bool {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if e, ok := r.jw.read(); ok && e.Phase == p {
			return true
		}
		if r.daemon.exited() {
			return false
		}
		time.Sleep(200 * time.Microsecond)
	}
	return false
}

// askRotation asks for another rotation once the last execution is
// terminal, as an operator does (bootcert-admin cloud rotate: the thing
// attribute rotationRequested) and runs the renewal scan at once (what its
// schedule does), which queues a new snapshot job for the thing.
func (r *run) askRotation(ctx context.Context) error {
	if err := r.waitFor(ctx, "the job execution to end", func() (bool, error) {
		s, err := r.jobStatus(ctx)
		return s == "SUCCEEDED" || s == "FAILED", err
	}); err != nil {
		return err
	}
	// One second later than the current certificate's notBefore at least,
	// so that the request postdates it.
	at := time.Now().Add(time.Second).Unix()
	if _, err := r.api.UpdateThing(ctx, &iot.UpdateThingInput{ThingName: aws.String(Thing), AttributePayload: &types.AttributePayload{
		Attributes: map[string]string{"rotationRequested": fmt.Sprint(at)}, Merge: true}}); err != nil {
		return fmt.Errorf("UpdateThing %s rotationRequested: %w", Thing, err)
	}
	req, err := http.NewRequestWithContext(ctx, "POST", r.endpoints.API+"/lab/functions/RenewalFunction/invoke", strings.NewReader(`{"source":"aws.events","detail-type":"Scheduled Event"}`))
	if err != nil {
		return err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("POST /lab/functions/RenewalFunction/invoke: %w", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"added":["`+Thing+`"]`) {
		return fmt.Errorf("renewal scan did not queue %s: %d %s", Thing, resp.StatusCode, bytes.TrimSpace(b))
	}
	r.res.RotationsAsked++
	r.n.say("that rotation had finished: rotationRequested set (bootcert-admin cloud rotate) and the renewal scan run: a new snapshot job for %s", Thing)
	return nil
}

// finish prints bootcertctl status, collects the final state, stops
// bootcertd, shows the operational key's TPM attributes and checks the
// scenario's outcome.
func (r *run) finish(ctx context.Context) error {
	text, err := r.ctl(ctx, "status", "--socket", r.path("control.sock"))
	if err != nil {
		return err
	}
	r.res.StatusText = text
	js, err := r.ctl(ctx, "status", "--json", "--socket", r.path("control.sock"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(js), &r.res.Status); err != nil {
		return fmt.Errorf("bootcertctl status --json: %w", err)
	}
	st := r.res.Status
	if r.fleet() {
		if err := r.fleetFinish(ctx); err != nil {
			return err
		}
	} else if r.res.BootstrapStatus, err = r.certStatus(ctx, r.res.BootstrapID); err != nil {
		return err
	}
	if st.Active.Generation > 0 {
		if r.res.ActiveCertStatus, err = r.certStatus(ctx, st.Active.CertificateID); err != nil {
			return err
		}
	}
	if r.res.JobStatus, err = r.jobStatus(ctx); err != nil {
		return err
	}
	keys, _ := filepath.Glob(r.path("device", "keys", "op-*.tpmkey"))
	for _, k := range keys {
		r.res.OperationalKeys = append(r.res.OperationalKeys, filepath.Base(k))
	}
	sort.Strings(r.res.OperationalKeys)
	r.res.Refusals = r.labW.refusals()
	r.res.RefusedCerts = r.labW.refusedIDs()
	r.res.RefusedCertsGone = len(r.res.RefusedCerts) > 0
	for _, id := range r.res.RefusedCerts {
		if s, _ := r.certStatus(ctx, id); s != "DELETED" {
			r.res.RefusedCertsGone = false
		}
	}
	r.jw.mu.Lock()
	r.res.JournalPhasesSeen = append([]journal.Phase{}, r.jw.phases...)
	r.jw.mu.Unlock()

	r.n.block("\n$ bootcertctl status\n" + text)
	code := r.daemon.stop(syscall.SIGTERM, 10*time.Second)
	r.n.say("bootcertd stopped with SIGTERM (exit code %d)", code)
	if st.Active.Generation > 0 {
		// swtpm serves one client at a time: bootcertd had it until now
		info, err := r.ctl(ctx, "key", "info", r.keyURI(fmt.Sprintf("op-%d.tpmkey", st.Active.Generation)))
		if err != nil {
			return err
		}
		r.res.KeyInfo = info
		r.n.block(fmt.Sprintf("\n$ bootcertctl key info 'tpm:device=%s;blob=.../op-%d.tpmkey'\n%s", r.tpm, st.Active.Generation, info))
	}
	r.n.block(r.summary())
	return r.check()
}

func (r *run) summary() string {
	res, st := r.res, r.res.Status
	var b strings.Builder
	fmt.Fprintf(&b, "\nsummary (%s):\n", r.o.Scenario)
	if r.fleet() {
		r.fleetSummary(&b)
	} else {
		fmt.Fprintf(&b, "  bootstrap certificate %s: %s (DescribeCertificate)\n", short(res.BootstrapID), res.BootstrapStatus)
	}
	if st.Active.Generation > 0 {
		fmt.Fprintf(&b, "  operational certificate %s (generation %d): %s, issued by %s\n", st.Active.CertificateID, st.Active.Generation, res.ActiveCertStatus, st.Active.Issuer)
		fmt.Fprintf(&b, "  operational key: %s in the TPM (operational key files left: %s)\n", keyFile(st.Active.KeyURI), strings.Join(res.OperationalKeys, " "))
	} else {
		fmt.Fprintf(&b, "  active credential: the bootstrap certificate, connected: %s\n", st.Connection)
	}
	fmt.Fprintf(&b, "  job execution bootcert-rotation: %s; device's last rotation: %s\n", res.JobStatus, strings.TrimSpace(string(st.LastResult)+" "+st.LastReason))
	if r.o.Scenario == "rollback" {
		fmt.Fprintf(&b, "  refused by fault injection: %d CONNECTs with %s; deleted by the reaper: %v\n", res.Refusals, shorts(res.RefusedCerts), res.RefusedCertsGone)
	}
	if r.o.Scenario == "crash" {
		var ks []string
		for _, k := range res.Kills {
			ks = append(ks, fmt.Sprintf("%s (seen %v, journal %s gen %d)", k.Target, k.Seen, k.Journal.Phase, k.Journal.Generation))
		}
		fmt.Fprintf(&b, "  %d SIGKILLs: %s; rotations asked again: %d\n", len(res.Kills), strings.Join(ks, ", "), res.RotationsAsked)
	}
	if t := st.LastTimings; len(t) > 0 {
		var parts []string
		for _, k := range []string{"key", "csr+publish", "wait-get", "verify+store+swap", "reconnect", "wait-ack", "commit"} {
			if v, ok := t[k]; ok {
				parts = append(parts, fmt.Sprintf("%s %.1f", k, v))
			}
		}
		fmt.Fprintf(&b, "  last rotation, ms (bootcertd lastTimings): %s\n", strings.Join(parts, ", "))
	}
	return b.String()
}

func shorts(ids []string) string {
	var s []string
	for _, id := range ids {
		s = append(s, short(id))
	}
	return strings.Join(s, " ")
}

// check: the final state the scenario promises.
func (r *run) check() error {
	res, st := r.res, r.res.Status
	var bad []string
	want := func(ok bool, format string, args ...any) {
		if !ok {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	switch r.o.Scenario {
	case "rollback":
		want(st.Active.Generation == 0 && st.ConnectedWith == 0, "active generation %d, connected with %d; want the bootstrap credential", st.Active.Generation, st.ConnectedWith)
		want(st.LastResult == "ROLLED_BACK", "last rotation %s, want ROLLED_BACK", st.LastResult)
		want(res.JobStatus == "FAILED", "job execution %s, want FAILED", res.JobStatus)
		want(res.BootstrapStatus == "ACTIVE", "bootstrap certificate %s, want ACTIVE", res.BootstrapStatus)
		want(res.Refusals >= 3, "%d refusals by fault injection, want at least 3", res.Refusals)
		want(res.RefusedCertsGone, "refused certificates %s not deleted", shorts(res.RefusedCerts))
		want(len(res.OperationalKeys) == 0, "operational keys left after the rollback: %v", res.OperationalKeys)
	case FleetProvisioning:
		r.fleetCheck(want)
	default:
		want(st.Active.Generation > 0 && st.ConnectedWith == st.Active.Generation, "active generation %d, connected with %d", st.Active.Generation, st.ConnectedWith)
		want(st.LastResult == "SUCCEEDED", "last rotation %s, want SUCCEEDED", st.LastResult)
		want(res.JobStatus == "SUCCEEDED", "job execution %s, want SUCCEEDED", res.JobStatus)
		want(res.BootstrapStatus == "INACTIVE", "bootstrap certificate %s, want INACTIVE", res.BootstrapStatus)
		want(res.ActiveCertStatus == "ACTIVE", "operational certificate %s, want ACTIVE", res.ActiveCertStatus)
		wantKey := fmt.Sprintf("op-%d.tpmkey", st.Active.Generation)
		want(len(res.OperationalKeys) == 1 && res.OperationalKeys[0] == wantKey, "operational keys %v, want exactly %s", res.OperationalKeys, wantKey)
		want(strings.Contains(res.KeyInfo, "fixedTPM"), "bootcertctl key info does not show a TPM key:\n%s", res.KeyInfo)
	}
	if _, err := os.Stat(r.path("device", "keys", "bootstrap.tpmkey")); err != nil && !r.fleet() {
		bad = append(bad, "bootstrap key file gone: "+err.Error())
	}
	if len(bad) > 0 {
		return fmt.Errorf("final state of scenario %s: %s", r.o.Scenario, strings.Join(bad, "; "))
	}
	r.n.block(fmt.Sprintf("OK: scenario %s ended as it should\n", r.o.Scenario))
	return nil
}
