package cloud_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"

	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lifecycle"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// manager is the lifecycle manager bootcert-admin builds, over the AWS SDK
// against the lab.
func (r *labRig) manager(log io.Writer) *lifecycle.Manager {
	ac := lab.ClientConfig(r.lab.ServerCAPEM(), "us-east-1")
	reg := cloudaws.NewRegistry(ac, r.lab.Endpoints().API)
	s, err := fleet.FromEnv(func(k string) string { return map[string]string{fleet.EnvBucket: bucket}[k] })
	if err != nil {
		r.t.Fatal(err)
	}
	store := cloudaws.NewStore(ac, bucket, r.lab.Endpoints().S3)
	lg := slog.New(slog.NewTextHandler(log, nil))
	rot := &renewal.Renewal{Registry: reg, Jobs: reg, Store: store, Settings: s, Config: renewal.DefaultConfig(), Clock: clock.Real{}, Log: lg}
	return &lifecycle.Manager{Registry: reg, Deleter: reg, Rotations: rot, Store: store, Settings: s, Log: lg}
}

// rotate runs the first rotation (the continuous job) over c (a connection
// on the device's current identity) and returns the new certificate's DER
// and key.
func (d *device) rotate(t *testing.T, c *conn) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	return d.rotateJob(t, c, "bootcert-rotation")
}

// rotateJob runs the rotation of job over c.
func (d *device) rotateJob(t *testing.T, c *conn, job string) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	d.startJobOf(t, c, job)
	key := newKey(t)
	acc, j := getFor(t, c, d.ID, job, string(testpki.CSR(t, d.ID, key)))
	if acc.CertificateID == "" {
		t.Fatalf("get rejected: %+v", j)
	}
	c.c.Disconnect(50)
	der := leafDER(t, acc.CertificatePEM)
	nc := d.conn(der, key)
	if a, j := ackFor(t, nc, d.ID, job, acc.CertificateID); a.CertificateID == "" {
		t.Fatalf("ack: %+v", j)
	}
	nc.publish(t, protocol.JobUpdateTopic(d.ID, job), protocol.UpdateRequest{Status: protocol.JobSucceeded})
	waitFor(t, "job SUCCEEDED", func() bool { return d.r.jobStatusOf(job, d.ID) == protocol.JobSucceeded })
	nc.c.Disconnect(50)
	return der, key
}

// TestLabRecoveryBudget: revoking an operational certificate re-admits the
// device on its bootstrap identity (INACTIVE after the rotation, refused by
// the broker, ACTIVE again) and queues a rotation, twice (the default
// budget); the third revocation leaves the device out with an audit line
// saying RECOVERY_BUDGET_EXHAUSTED; raising the budget lets the operator
// recover it.
func TestLabRecoveryBudget(t *testing.T) {
	r := startLab(t, nil, "")
	d0 := r.ca.Issue(t, "gw-recover", time.Now())
	r.setup([]manifest.Entry{{DeviceID: d0.ID}})
	d := r.admit(d0)
	logs := &logBuffer{}
	m := r.manager(logs)
	ctx := context.Background()

	der, key := d.rotate(t, d.conn(d.DER, d.Key))
	for i := 1; i <= 2; i++ {
		if _, err := r.connect(d.DER, d.Key, d.ID); err == nil {
			t.Fatalf("round %d: the bootstrap identity connects before the recovery (want INACTIVE, refused)", i)
		}
		res, err := m.Revoke(ctx, d.ID, "")
		if err != nil || !res.Recovered || res.Remaining != 2-i {
			t.Fatalf("round %d: revoke: %+v %v", i, res, err)
		}
		if _, err := r.connect(der, key, d.ID); err == nil {
			t.Fatalf("round %d: the revoked operational certificate still connects", i)
		}
		if !strings.HasPrefix(res.JobID, "bootcert-r-") {
			t.Fatalf("round %d: recovery queued job %q, want a snapshot job bootcert-r-*", i, res.JobID)
		}
		waitFor(t, "a queued rotation", func() bool { return r.jobStatusOf(res.JobID, d.ID) == protocol.JobQueued })
		// The device falls back to its bootstrap identity and rotates.
		der, key = d.rotateJob(t, d.conn(d.DER, d.Key), res.JobID)
	}
	res, err := m.Revoke(ctx, d.ID, "")
	if !errors.Is(err, lifecycle.ErrBudgetExhausted) || res.Recovered {
		t.Fatalf("third revoke: %+v %v", res, err)
	}
	if !strings.Contains(logs.String(), "AUDIT recovery refused") || !strings.Contains(logs.String(), "code=RECOVERY_BUDGET_EXHAUSTED") {
		t.Errorf("no audit line:\n%s", logs.String())
	}
	if st := r.certStatus(d.CertID); st != "INACTIVE" {
		t.Errorf("bootstrap %s after the refused recovery, want INACTIVE", st)
	}
	if _, err := r.connect(d.DER, d.Key, d.ID); err == nil {
		t.Fatal("the bootstrap identity connects past the budget")
	}
	if st, err := m.SetBudget(ctx, d.ID, 3); err != nil || st.Remaining != 1 {
		t.Fatalf("raising the budget: %+v %v", st, err)
	}
	res, err = m.Recover(ctx, d.ID)
	if err != nil || !res.Recovered {
		t.Fatalf("recover after raising the budget: %+v %v", res, err)
	}
	waitFor(t, "a queued rotation", func() bool { return r.jobStatusOf(res.JobID, d.ID) == protocol.JobQueued })
	d.rotateJob(t, d.conn(d.DER, d.Key), res.JobID)
}

// TestLabDecommission: the deactivation route (and bootcert-admin cloud
// decommission, the same code) revokes every certificate of the thing,
// deletes the thing and puts the device on the deny list: its certificates
// no longer connect, JITR does not re-admit it even though it is still on
// the allow list, and the activation route answers 410.
func TestLabDecommission(t *testing.T) {
	r := startLab(t, nil, "")
	d0 := r.ca.Issue(t, "gw-decom", time.Now())
	r.setup([]manifest.Entry{{DeviceID: d0.ID}})
	d := r.admit(d0)
	der, key := d.rotate(t, d.conn(d.DER, d.Key))
	opID := protocol.CertificateID(der)

	out := r.invokeAPI(t, "POST", "/devices/"+d.ID+"/deactivation")
	if out.StatusCode != 200 {
		t.Fatalf("deactivation: %d %s", out.StatusCode, out.Body)
	}
	var rec lifecycle.Decommissioned
	json.Unmarshal([]byte(out.Body), &rec)
	if rec.BootstrapCertificateID != d.CertID || len(rec.Certificates) != 2 {
		t.Errorf("record %+v, want the bootstrap and the operational certificate", rec)
	}
	for _, id := range []string{d.CertID, opID} {
		if st := r.certStatus(id); st != "REVOKED" {
			t.Errorf("certificate %s is %s, want REVOKED", id[:8], st)
		}
	}
	if _, err := r.iot.DescribeThing(context.Background(), &iot.DescribeThingInput{ThingName: aws.String(d.ID)}); err == nil {
		t.Error("the thing still exists")
	}
	for _, c := range [][]byte{d.DER, der} {
		k := d.Key
		if string(c) == string(der) {
			k = key
		}
		if cn, err := r.connect(c, k, d.ID); err == nil {
			cn.c.Disconnect(0)
			t.Error("a certificate of the decommissioned device connects")
		}
	}
	// Again: idempotent.
	if out := r.invokeAPI(t, "POST", "/devices/"+d.ID+"/deactivation"); out.StatusCode != 200 {
		t.Fatalf("second deactivation: %d %s", out.StatusCode, out.Body)
	}
	if out := r.invokeAPI(t, "POST", "/devices/"+d.ID+"/activation"); out.StatusCode != 410 {
		t.Errorf("activation of a decommissioned device: %d %s", out.StatusCode, out.Body)
	}
	// A new bootstrap certificate with the same name (a cloned or
	// re-flashed device) is refused at JITR: the deny list wins over the
	// allow list.
	clone := r.ca.Issue(t, d.ID, time.Now())
	if st := r.jitr(clone); st != "REVOKED" {
		t.Errorf("JITR of a new certificate for the decommissioned device: %s", st)
	}
}

func (r *labRig) invokeAPI(t *testing.T, method, path string) events.APIGatewayV2HTTPResponse {
	t.Helper()
	var req events.APIGatewayV2HTTPRequest
	req.RawPath = path
	req.RequestContext.HTTP.Method = method
	req.RequestContext.HTTP.Path = path
	b, _ := json.Marshal(req)
	out, err := r.lab.Invoke(context.Background(), "ActivationFunction", b)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	var resp events.APIGatewayV2HTTPResponse
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("%s %s: %s", method, path, out)
	}
	return resp
}
