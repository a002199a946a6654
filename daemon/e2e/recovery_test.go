package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lifecycle"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/ctl"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// lockedBuffer is an io.Writer the test reads while the manager writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// manager is the lifecycle manager as bootcert-admin builds it
// (ctl/admin/lifecycle.go, conn.manager): the AWS SDK against the lab's
// endpoints, the stack's settings from an environment (here: only the
// bucket, so RECOVERY_BUDGET and the renewal settings take the template's
// defaults), audit lines to log.
func (c *cloudEnv) manager(log *lockedBuffer) *lifecycle.Manager {
	c.t.Helper()
	cfg := lab.ClientConfig(c.lab.ServerCAPEM(), "us-east-1")
	env := func(k string) string {
		if k == fleet.EnvBucket {
			return c.bucket
		}
		return ""
	}
	s, err := fleet.FromEnv(env)
	if err != nil {
		c.t.Fatal(err)
	}
	rc, err := renewal.ConfigFromEnv(env)
	if err != nil {
		c.t.Fatal(err)
	}
	reg := cloudaws.NewRegistry(cfg, c.lab.Endpoints().API)
	store := cloudaws.NewStore(cfg, c.bucket, c.lab.Endpoints().S3)
	lg := slog.New(slog.NewTextHandler(log, nil))
	rot := &renewal.Renewal{Registry: reg, Jobs: reg, Store: store, Settings: s, Config: rc, Clock: clock.Real{}, Log: lg}
	return &lifecycle.Manager{Registry: reg, Deleter: reg, Rotations: rot, Store: store, Settings: s, Log: lg}
}

// certPublicKey is the DER of the public key of a registered certificate,
// as the cloud holds it.
func (c *cloudEnv) certPublicKey(id string) string {
	c.t.Helper()
	d, err := c.api.DescribeCertificate(context.Background(), &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		c.t.Fatalf("DescribeCertificate %s: %v", id, err)
	}
	b, _ := pem.Decode([]byte(aws.ToString(d.CertificateDescription.CertificatePem)))
	if b == nil {
		c.t.Fatalf("certificate %s: no PEM", id)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		c.t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(cert.PublicKey)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(pub)
}

// TestRevokeRecovery (issue 10, done-when: "Revoking an operational
// certificate leads, with no operator action, to a new operational
// certificate within the budget; a device past its budget stays out and
// the audit line says why"). The real bootcertd, its keys in swtpm, the lab
// with the real template (BootstrapAfterRotation=INACTIVE, RECOVERY_BUDGET
// 2): the device rotates once; the operator revokes its operational
// certificate (bootcert-admin cloud revoke's code); the lab ends the
// session, bootcertd is refused on the revoked certificate, falls back to
// its bootstrap identity (ACTIVE again), takes the snapshot job the
// recovery queued and ends on a new operational certificate with a new key.
// Twice. The third revocation is past the budget: the bootstrap certificate
// stays INACTIVE, the device stays out (both its identities refused, which
// its status shows), and the audit line says RECOVERY_BUDGET_EXHAUSTED.
// Raising the budget and recovering (the operator's way back) brings it in
// again.
func TestRevokeRecovery(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-recover", deviceOpts{kind: onTPM})
	d.start()
	st := d.waitFor("operational generation 1", operational(1))
	ctx := context.Background()
	audit := &lockedBuffer{}
	m := c.manager(audit)

	if got := c.certStatus(d.bootID); got != types.CertificateStatusInactive {
		t.Fatalf("bootstrap certificate %s after the first rotation, want INACTIVE (BootstrapAfterRotation)", got)
	}
	keys := map[string]string{c.certPublicKey(d.bootID): "bootstrap"}
	addKey := func(gen int, id string) {
		t.Helper()
		k := c.certPublicKey(id)
		if was, ok := keys[k]; ok {
			t.Errorf("generation %d (certificate %s) has the key of %s: want a new key", gen, id, was)
		}
		keys[k] = id
	}
	addKey(1, st.Active.CertificateID)

	fallbacks := 0
	for round := 1; round <= fleet.DefaultRecoveryBudget; round++ {
		prev := st.Active
		began := time.Now()
		res, err := m.Revoke(ctx, d.name, "")
		if err != nil || !res.Recovered || res.Revoked != prev.CertificateID || res.Remaining != fleet.DefaultRecoveryBudget-round {
			t.Fatalf("round %d: revoke: %+v %v\naudit:\n%s", round, res, err, audit.String())
		}
		if !strings.HasPrefix(res.JobID, "bootcert-r-") {
			t.Fatalf("round %d: the recovery queued job %q, want a snapshot job bootcert-r-*", round, res.JobID)
		}
		// no operator action from here: the device is refused on the
		// revoked certificate, falls back and rotates on the queued job
		st = d.waitFor("a new operational certificate after the revocation", func(s engineStatus) bool {
			return s.Phase == journal.Idle && s.Connection == "connected" && s.Active.Generation > prev.Generation &&
				s.ConnectedWith == s.Active.Generation && s.LastResult == protocol.JobSucceeded
		})
		fallbacks++
		if st.Active.CertificateID == prev.CertificateID {
			t.Fatalf("round %d: still on %s", round, prev.CertificateID)
		}
		addKey(st.Active.Generation, st.Active.CertificateID)
		// REVOKED, then deleted by the reaper after the recovery's
		// rotation SUCCEEDED (PreviousCertificate=DELETE, the default):
		// never ACTIVE again
		if got := c.certStatus(prev.CertificateID); got != types.CertificateStatusRevoked && got != "" {
			t.Errorf("round %d: the revoked certificate is %s", round, got)
		}
		if got := c.certStatus(st.Active.CertificateID); got != types.CertificateStatusActive {
			t.Errorf("round %d: the new certificate is %s", round, got)
		}
		if got := c.certStatus(d.bootID); got != types.CertificateStatusInactive {
			t.Errorf("round %d: bootstrap certificate %s after the recovery's rotation, want INACTIVE again", round, got)
		}
		d.cloud.mu.Lock()
		if d.cloud.jobs == nil {
			d.cloud.jobs = map[string]string{}
		}
		d.cloud.jobs[d.name] = res.JobID
		d.cloud.mu.Unlock()
		if js, _ := c.jobStatus(d.name); js != types.JobExecutionStatusSucceeded {
			t.Errorf("round %d: job %s execution %s, want SUCCEEDED", round, res.JobID, js)
		}
		if st.Counters.Fallbacks < fallbacks || !strings.Contains(st.LastFallback, "refused") {
			t.Errorf("round %d: status does not show the fallback: fallbacks %d, %q", round, st.Counters.Fallbacks, st.LastFallback)
		}
		if !strings.Contains(st.LastRefusal, "refused") {
			t.Errorf("round %d: status does not show the refusal: %q", round, st.LastRefusal)
		}
		if st.LastError != "" {
			t.Errorf("round %d: a stale error on the recovered device: %q", round, st.LastError)
		}
		t.Logf("round %d: %s revoked, generation %d on %s (job %s) %s after the revoke, %d recoveries left",
			round, prev.CertificateID[:12], st.Active.Generation, st.Active.CertificateID[:12], res.JobID, time.Since(began).Round(10*time.Millisecond), res.Remaining)
	}
	if !strings.Contains(audit.String(), "AUDIT recovery admitted") {
		t.Errorf("no audit line for the recoveries:\n%s", audit.String())
	}

	// past the budget
	out := st.Active
	res, err := m.Revoke(ctx, d.name, "")
	if !errors.Is(err, lifecycle.ErrBudgetExhausted) || res.Recovered || res.Revoked != out.CertificateID || res.JobID != "" {
		t.Fatalf("third revoke: %+v %v", res, err)
	}
	var line string
	for _, l := range strings.Split(audit.String(), "\n") {
		if strings.Contains(l, "AUDIT recovery refused") {
			line = l
		}
	}
	if !strings.Contains(line, "code="+string(protocol.RecoveryBudgetExhausted)) || !strings.Contains(line, "thing="+d.name) ||
		!strings.Contains(line, "used 2 of 2") || !strings.Contains(line, "recovery-budget") {
		t.Errorf("audit line %q, want RECOVERY_BUDGET_EXHAUSTED, the thing, the count and the way out", line)
	}
	t.Logf("audit: %s", line)
	if got := c.certStatus(d.bootID); got != types.CertificateStatusInactive {
		t.Errorf("bootstrap certificate %s past the budget, want INACTIVE", got)
	}
	// the device stays out: refused on both identities, which status says
	before := st.Counters.Refusals
	st = d.waitFor("both identities refused", func(s engineStatus) bool {
		return s.Connection != "connected" && s.Counters.Refusals >= before+2 &&
			strings.Contains(s.LastError, "bootstrap certificate refused")
	})
	if st.Active.Generation != out.Generation || st.Active.CertificateID != out.CertificateID {
		t.Errorf("the device changed its credential while out: %+v, was %+v", st.Active, out)
	}
	if !strings.Contains(st.Advice, "recovery budget") || !strings.Contains(st.Advice, "revoked") {
		t.Errorf("advice %q does not say what happened (revoked operational certificate, bootstrap not re-admitted: the recovery budget)", st.Advice)
	}
	t.Logf("status past the budget: lastError %q advice %q", st.LastError, st.Advice)
	// what the operator at the gateway sees: bootcertctl status
	root := ctl.NewRoot()
	var shown bytes.Buffer
	root.SetOut(&shown)
	root.SetArgs([]string{"status", "--socket", d.sock})
	if err := root.Execute(); err != nil {
		t.Fatalf("bootcertctl status: %v", err)
	}
	for _, want := range []string{"bootstrap certificate refused", "RECOVERY_BUDGET_EXHAUSTED", "bootcert-admin cloud recover", "last refusal", "generation " + strconv.Itoa(out.Generation)} {
		if !strings.Contains(shown.String(), want) {
			t.Errorf("bootcertctl status does not show %q:\n%s", want, shown.String())
		}
	}
	if js, _ := c.jobStatus(d.name); js != types.JobExecutionStatusSucceeded {
		t.Errorf("a job ran past the budget: %s", js)
	}

	// the operator's way back: a larger budget, then recover
	if bs, err := m.SetBudget(ctx, d.name, 3); err != nil || bs.Remaining != 1 {
		t.Fatalf("recovery-budget 3: %+v %v", bs, err)
	}
	res, err = m.Recover(ctx, d.name)
	if err != nil || !res.Recovered {
		t.Fatalf("recover: %+v %v", res, err)
	}
	st = d.waitFor("a new operational certificate after the operator's recovery", func(s engineStatus) bool {
		return s.Phase == journal.Idle && s.Connection == "connected" && s.Active.Generation > out.Generation &&
			s.ConnectedWith == s.Active.Generation && s.LastResult == protocol.JobSucceeded
	})
	addKey(st.Active.Generation, st.Active.CertificateID)
	if st.LastError != "" {
		t.Errorf("a stale error on the recovered device: %q", st.LastError)
	}
	d.stop()
}
