package cloud_test

// Tests of the cloud functions through the real AWS SDK against the lab,
// with the real cloud/template.yaml: its policies are enforced by the lab's
// broker, its rules invoke the functions built by cloud.Build.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

const bucket = "bootcert-123456789012-us-east-1"

type labRig struct {
	t   *testing.T
	lab *lab.Lab
	iot *iot.Client
	s3  *s3.Client
	ca  *testpki.CA
}

func startLab(t *testing.T, env map[string]string, limits string) *labRig {
	t.Helper()
	cfg := lab.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		TemplatePath: "template.yaml", Env: env}
	if limits != "" {
		p := filepath.Join(t.TempDir(), "limits.json")
		os.WriteFile(p, []byte(limits), 0o600)
		cfg.LimitsPath = p
	}
	l, err := lab.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	ac := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	r := &labRig{t: t, lab: l,
		iot: iot.NewFromConfig(ac, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) }),
		s3: s3.NewFromConfig(ac, func(o *s3.Options) {
			o.BaseEndpoint = aws.String(l.Endpoints().S3)
			o.UsePathStyle = true
		}),
		ca: testpki.NewCA(t, "bootcert factory CA", time.Now()),
	}
	return r
}

// setup runs the same code as `bootcertctl cloud setup`.
func (r *labRig) setup(entries []manifest.Entry, revoked ...*testpki.Device) setup.Result {
	r.t.Helper()
	var certs []*x509.Certificate
	for _, d := range revoked {
		certs = append(certs, d.Cert)
	}
	res, err := setup.Run(context.Background(), r.iot, r.s3, setup.Options{Bucket: bucket, CACert: r.ca.Cert, CASigner: r.ca.Key,
		AllowList: testpki.AllowList(r.t, entries...), CRL: r.ca.CRL(r.t, time.Now(), certs...)})
	if err != nil {
		r.t.Fatalf("setup: %v", err)
	}
	return res
}

type conn struct {
	c    paho.Client
	mu   sync.Mutex
	msgs map[string][]byte
	lost chan error
}

// connect connects with a certificate; it returns an error when the broker
// refuses (JITR closes the first connection).
func (r *labRig) connect(certDER []byte, key *ecdsa.PrivateKey, clientID string) (*conn, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.lab.ServerCAPEM())
	cert := tls.Certificate{Certificate: [][]byte{certDER}, PrivateKey: key}
	cn := &conn{msgs: map[string][]byte{}, lost: make(chan error, 1)}
	o := paho.NewClientOptions().AddBroker("tls://" + r.lab.Endpoints().MQTT).SetClientID(clientID).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case cn.lost <- err:
			default:
			}
		})
	cn.c = paho.NewClient(o)
	tok := cn.c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	r.t.Cleanup(func() { cn.c.Disconnect(50) })
	return cn, nil
}

// subscribe returns the SUBACK code (0x80 = refused).
func (c *conn) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	tok := c.c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		c.mu.Lock()
		c.msgs[m.Topic()] = m.Payload()
		c.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func (c *conn) publish(t *testing.T, topic string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	tok := c.c.Publish(topic, 1, false, b)
	tok.WaitTimeout(10 * time.Second)
}

// wait polls until one of the topics got a message; it returns topic and payload.
func (c *conn) wait(t *testing.T, topics ...string) (string, []byte) {
	t.Helper()
	var topic string
	var payload []byte
	waitFor(t, "a message on "+strings.Join(topics, " or "), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, tp := range topics {
			if p, ok := c.msgs[tp]; ok {
				topic, payload = tp, p
				delete(c.msgs, tp)
				return true
			}
		}
		return false
	})
	return topic, payload
}

// waitFor polls state the lab changes (its broker, rules and functions run
// in goroutines of their own).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 45*time.Second, cond, "waiting for %s", what)
}

// leafDER is the DER of the first certificate of a reply's PEM.
func leafDER(t *testing.T, certPEM string) []byte {
	t.Helper()
	chain, err := protocol.ParseChain([]byte(certPEM))
	if err != nil {
		t.Fatalf("certificate in the reply: %v", err)
	}
	return chain[0].Raw
}

func (r *labRig) certStatus(id string) string {
	out, err := r.iot.DescribeCertificate(context.Background(), &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		return ""
	}
	return string(out.CertificateDescription.Status)
}

// jitr connects once (refused: registration) and waits until the activator
// decided; it returns the bootstrap certificate's status.
func (r *labRig) jitr(d *testpki.Device) string {
	r.t.Helper()
	if c, err := r.connect(d.DER, d.Key, d.ID); err == nil {
		c.c.Disconnect(0)
		r.t.Fatalf("%s: first connect with an unregistered certificate was accepted", d.ID)
	}
	var st string
	waitFor(r.t, "the activator's decision on "+d.ID, func() bool {
		st = r.certStatus(d.CertID)
		return st == "ACTIVE" || st == "REVOKED"
	})
	return st
}

func (r *labRig) jobStatus(thing string) protocol.JobStatus {
	return r.jobStatusOf("bootcert-rotation", thing)
}

func (r *labRig) jobStatusOf(job, thing string) protocol.JobStatus {
	out, err := r.iot.DescribeJobExecution(context.Background(), &iot.DescribeJobExecutionInput{JobId: aws.String(job), ThingName: aws.String(thing)})
	if err != nil || out.Execution == nil {
		return ""
	}
	return protocol.JobStatus(out.Execution.Status)
}

func TestLabJITR(t *testing.T) {
	r := startLab(t, nil, "")
	now := time.Now()
	ok := r.ca.Issue(t, "gw-ok", now)
	bound := r.ca.Issue(t, "gw-bound", now)
	notListed := r.ca.Issue(t, "gw-not-listed", now)
	revoked := r.ca.Issue(t, "gw-revoked", now)
	mismatch := r.ca.Issue(t, "gw-mismatch", now)
	res := r.setup([]manifest.Entry{{DeviceID: ok.ID}, {DeviceID: bound.ID, BootstrapSHA256: bound.CertID}, {DeviceID: revoked.ID},
		{DeviceID: mismatch.ID, BootstrapSHA256: strings.Repeat("ab", 32)}}, revoked)
	if !res.CARegistered || !res.JobCreated {
		t.Fatalf("setup: %+v", res)
	}
	if again := r.setup([]manifest.Entry{{DeviceID: ok.ID}}); again.CARegistered || again.JobCreated || again.CACertificateID != res.CACertificateID {
		t.Errorf("setup is not idempotent: %+v", again)
	}
	r.setup([]manifest.Entry{{DeviceID: ok.ID}, {DeviceID: bound.ID, BootstrapSHA256: bound.CertID}, {DeviceID: revoked.ID},
		{DeviceID: mismatch.ID, BootstrapSHA256: strings.Repeat("ab", 32)}}, revoked)
	for _, tc := range []struct {
		name string
		d    *testpki.Device
		want string
	}{
		{"ok/allowed", ok, "ACTIVE"},
		{"ok/fingerprint-bound", bound, "ACTIVE"},
		{"fail/not-allow-listed", notListed, "REVOKED"},
		{"fail/crl-revoked", revoked, "REVOKED"},
		{"fail/fingerprint-mismatch", mismatch, "REVOKED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st := r.jitr(tc.d); st != tc.want {
				t.Fatalf("status %s, want %s", st, tc.want)
			}
			c, err := r.connect(tc.d.DER, tc.d.Key, tc.d.ID)
			if (err == nil) != (tc.want == "ACTIVE") {
				t.Fatalf("second connect: %v (want connected=%v)", err, tc.want == "ACTIVE")
			}
			if c != nil {
				c.c.Disconnect(0)
			}
		})
	}
	t.Run("ok/replay-is-harmless", func(t *testing.T) {
		for _, d := range []*testpki.Device{ok, notListed} {
			before := r.certStatus(d.CertID)
			ev, _ := json.Marshal(map[string]any{"certificateId": d.CertID, "caCertificateId": res.CACertificateID, "certificateStatus": "PENDING_ACTIVATION"})
			out, err := r.lab.Invoke(context.Background(), "ActivatorFunction", ev)
			if err != nil || !strings.Contains(string(out), `"ignored"`) {
				t.Errorf("replay for %s: %s %v", d.ID, out, err)
			}
			if after := r.certStatus(d.CertID); after != before {
				t.Errorf("replay changed %s from %s to %s", d.ID, before, after)
			}
		}
	})
}

// device is a gateway with its bootstrap identity, admitted by JITR.
type device struct {
	*testpki.Device
	r *labRig
}

func (r *labRig) admit(d *testpki.Device) *device {
	r.t.Helper()
	if st := r.jitr(d); st != "ACTIVE" {
		r.t.Fatalf("%s not admitted: %s", d.ID, st)
	}
	waitFor(r.t, "a job execution for "+d.ID, func() bool { return r.jobStatus(d.ID) == protocol.JobQueued })
	return &device{d, r}
}

// get publishes a get request over c and waits for the reply.
func get(t *testing.T, c *conn, thing, csr string) (protocol.GetAccepted, protocol.Rejected) {
	t.Helper()
	return getFor(t, c, thing, "bootcert-rotation", csr)
}

func getFor(t *testing.T, c *conn, thing, job, csr string) (protocol.GetAccepted, protocol.Rejected) {
	t.Helper()
	c.publish(t, "certificates/"+thing+"/get", protocol.GetRequest{JobID: job, ClientToken: "tok", CSR: csr})
	topic, payload := c.wait(t, "certificates/"+thing+"/get/accepted", "certificates/"+thing+"/get/rejected")
	var a protocol.GetAccepted
	var j protocol.Rejected
	if strings.HasSuffix(topic, "accepted") {
		json.Unmarshal(payload, &a)
	} else {
		json.Unmarshal(payload, &j)
	}
	return a, j
}

func ack(t *testing.T, c *conn, thing, certID string) (protocol.AckAccepted, protocol.Rejected) {
	t.Helper()
	return ackFor(t, c, thing, "bootcert-rotation", certID)
}

func ackFor(t *testing.T, c *conn, thing, job, certID string) (protocol.AckAccepted, protocol.Rejected) {
	t.Helper()
	c.publish(t, "certificates/"+thing+"/ack", protocol.AckRequest{JobID: job, ClientToken: "tok", CertificateID: certID})
	topic, payload := c.wait(t, "certificates/"+thing+"/ack/accepted", "certificates/"+thing+"/ack/rejected")
	var a protocol.AckAccepted
	var j protocol.Rejected
	if strings.HasSuffix(topic, "accepted") {
		json.Unmarshal(payload, &a)
	} else {
		json.Unmarshal(payload, &j)
	}
	return a, j
}

func (d *device) conn(certDER []byte, key *ecdsa.PrivateKey) *conn {
	d.r.t.Helper()
	c, err := d.r.connect(certDER, key, d.ID)
	if err != nil {
		d.r.t.Fatalf("%s: connect: %v", d.ID, err)
	}
	for _, f := range []string{"certificates/" + d.ID + "/get/+", "certificates/" + d.ID + "/ack/+"} {
		if code := c.subscribe(d.r.t, f); code != 1 {
			d.r.t.Fatalf("%s: SUBACK %#x for %s", d.ID, code, f)
		}
	}
	return c
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLabRotation(t *testing.T) {
	r := startLab(t, nil, "")
	d0 := r.ca.Issue(t, "gw-rot", time.Now())
	r.setup([]manifest.Entry{{DeviceID: d0.ID}})
	d := r.admit(d0)
	c := d.conn(d.DER, d.Key)

	c.publish(t, protocol.JobsTopic(d.ID, protocol.JobsStartNext), protocol.StartNextRequest{StatusDetails: map[string]string{"progress": "started"}})
	waitFor(t, "job IN_PROGRESS", func() bool { return r.jobStatus(d.ID) == protocol.JobInProgress })
	key := newKey(t)
	csr := string(testpki.CSR(t, d.ID, key))
	acc, rej := get(t, c, d.ID, csr)
	if acc.CertificateID == "" {
		t.Fatalf("get rejected: %+v", rej)
	}
	// The presigned location serves the same certificate (the seed's
	// delivery path), over HTTPS.
	if !strings.HasPrefix(acc.Location, "https://") {
		t.Fatalf("location is not HTTPS")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.lab.ServerCAPEM())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 20 * time.Second}
	resp, err := hc.Get(acc.Location)
	if err != nil {
		t.Fatalf("fetching the presigned location: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != acc.CertificatePEM {
		t.Fatalf("presigned location: HTTP %d, body matches: %v", resp.StatusCode, string(body) == acc.CertificatePEM)
	}
	again, _ := get(t, c, d.ID, csr)
	if again.CertificateID != acc.CertificateID {
		t.Errorf("retried get: %q, first %q", again.CertificateID, acc.CertificateID)
	}
	// Ack over the old certificate: refused, nothing changes.
	if _, j := ack(t, c, d.ID, acc.CertificateID); j.Code != protocol.NotAllowed {
		t.Fatalf("ack over the bootstrap certificate: %+v", j)
	}
	if st := r.certStatus(acc.CertificateID); st != "ACTIVE" {
		t.Fatalf("new certificate %s after a refused ack", st)
	}
	// Swap: connect with the new certificate and ack.
	c.c.Disconnect(50)
	nc := d.conn(leafDER(t, acc.CertificatePEM), key)
	a, j := ack(t, nc, d.ID, acc.CertificateID)
	if a.CertificateID != acc.CertificateID {
		t.Fatalf("ack: %+v", j)
	}
	if st := r.certStatus(d.CertID); st != "INACTIVE" {
		t.Errorf("bootstrap %s after the ack, want INACTIVE", st)
	}
	// The device reports SUCCEEDED; the reaper keeps the new certificate and
	// never deletes the bootstrap one.
	nc.publish(t, protocol.JobUpdateTopic(d.ID, "bootcert-rotation"), protocol.UpdateRequest{Status: protocol.JobSucceeded})
	waitFor(t, "job SUCCEEDED", func() bool { return r.jobStatus(d.ID) == protocol.JobSucceeded })
	// The rule ran the reaper; run it once more (a replay) to know it is done.
	if out, err := r.lab.Invoke(context.Background(), "ReaperFunction", json.RawMessage(`{"jobId":"bootcert-rotation","thingArn":"arn:aws:iot:us-east-1:123456789012:thing/`+d.ID+`","status":"SUCCEEDED"}`)); err != nil {
		t.Fatalf("reaper: %s %v", out, err)
	}
	if st := r.certStatus(acc.CertificateID); st != "ACTIVE" {
		t.Errorf("new certificate %s after SUCCEEDED", st)
	}
	if st := r.certStatus(d.CertID); st != "INACTIVE" {
		t.Errorf("bootstrap %s after SUCCEEDED", st)
	}
}

func (d *device) startJob(t *testing.T, c *conn) {
	t.Helper()
	d.startJobOf(t, c, "bootcert-rotation")
}

func (d *device) startJobOf(t *testing.T, c *conn, job string) {
	t.Helper()
	c.publish(t, protocol.JobsTopic(d.ID, protocol.JobsStartNext), protocol.StartNextRequest{})
	waitFor(t, "job IN_PROGRESS", func() bool { return d.r.jobStatusOf(job, d.ID) == protocol.JobInProgress })
}

func TestLabVendorRejections(t *testing.T) {
	r := startLab(t, nil, "")
	now := time.Now()
	a0, b0, rv0 := r.ca.Issue(t, "gw-a", now), r.ca.Issue(t, "gw-b", now), r.ca.Issue(t, "gw-rv", now)
	entries := []manifest.Entry{{DeviceID: a0.ID}, {DeviceID: b0.ID}, {DeviceID: rv0.ID}}
	r.setup(entries)
	a, b, rv := r.admit(a0), r.admit(b0), r.admit(rv0)
	ca := a.conn(a.DER, a.Key)

	t.Run("fail/no-rotation-pending/queued-elsewhere", func(t *testing.T) {
		ca.publish(t, "certificates/"+a.ID+"/get", protocol.GetRequest{JobID: "another-job", ClientToken: "x", CSR: string(testpki.CSR(t, a.ID, nil))})
		_, p := ca.wait(t, "certificates/"+a.ID+"/get/rejected")
		var j protocol.Rejected
		json.Unmarshal(p, &j)
		if j.Code != protocol.NoRotationPending {
			t.Fatalf("%+v", j)
		}
	})
	a.startJob(t, ca)
	for _, tc := range []struct {
		name string
		csr  string
		code protocol.Code
	}{
		{"fail/bad-csr/other-device-cn", string(testpki.CSR(t, b.ID, nil)), protocol.BadCSR},
		{"fail/bad-csr/rsa-1024", string(testpki.CSR(t, a.ID, testpki.RSAKey(t, 1024))), protocol.BadCSR},
		{"fail/bad-csr/signature", string(testpki.CorruptSignature(t, testpki.CSR(t, a.ID, nil))), protocol.BadCSR},
		{"fail/bad-csr/missing", "", protocol.BadCSR},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acc, j := get(t, ca, a.ID, tc.csr)
			if j.Code != tc.code || acc.CertificateID != "" {
				t.Fatalf("got %+v %+v, want %s", acc, j, tc.code)
			}
		})
	}
	t.Run("fail/revoked/crl-after-admission", func(t *testing.T) {
		c := rv.conn(rv.DER, rv.Key)
		rv.startJob(t, c)
		r.setup(entries, rv.Device)
		if _, j := get(t, c, rv.ID, string(testpki.CSR(t, rv.ID, nil))); j.Code != protocol.Revoked {
			t.Fatalf("%+v", j)
		}
	})
	t.Run("fail/not-allowed/removed-from-allow-list", func(t *testing.T) {
		cb := b.conn(b.DER, b.Key)
		b.startJob(t, cb)
		r.setup([]manifest.Entry{{DeviceID: a.ID}, {DeviceID: rv.ID}})
		if _, j := get(t, cb, b.ID, string(testpki.CSR(t, b.ID, nil))); j.Code != protocol.NotAllowed {
			t.Fatalf("%+v", j)
		}
		r.setup(entries)
	})
	t.Run("fail/not-allowed/principal-of-another-thing", func(t *testing.T) {
		// Through the function directly: the policies stop a device from
		// even publishing this (see TestLabPolicies).
		ev, _ := json.Marshal(map[string]any{"thingName": a.ID, "operation": "get", "principal": b.CertID, "clientId": a.ID, "jobId": "bootcert-rotation", "clientToken": "x", "csr": string(testpki.CSR(t, a.ID, nil))})
		out, err := r.lab.Invoke(context.Background(), "VendorFunction", ev)
		if err != nil || !strings.Contains(string(out), "NOT_ALLOWED") {
			t.Fatalf("%s %v", out, err)
		}
		ca.wait(t, "certificates/"+a.ID+"/get/rejected") // the reply went to the thing's topic
	})
	t.Run("ok/after-rejections-a-good-csr-is-issued", func(t *testing.T) {
		acc, j := get(t, ca, a.ID, string(testpki.CSR(t, a.ID, nil)))
		if acc.CertificateID == "" {
			t.Fatalf("%+v", j)
		}
	})
}

func TestLabPolicies(t *testing.T) {
	r := startLab(t, nil, "")
	now := time.Now()
	a0, b0 := r.ca.Issue(t, "gw-pa", now), r.ca.Issue(t, "gw-pb", now)
	r.setup([]manifest.Entry{{DeviceID: a0.ID}, {DeviceID: b0.ID}})
	a, b := r.admit(a0), r.admit(b0)
	ca := a.conn(a.DER, a.Key)
	for _, f := range []string{"certificates/" + b.ID + "/get/+", "certificates/" + b.ID + "/ack/+", "certificates/+/get/+", "certificates/#", "telemetry/" + a.ID + "/#", protocol.JobsTopic(b.ID, protocol.JobsNotifyNext)} {
		t.Run("fail/subscribe/"+f, func(t *testing.T) {
			if code := ca.subscribe(t, f); code != 0x80 {
				t.Errorf("SUBACK %#x for %s, want 0x80", code, f)
			}
		})
	}
	for _, tc := range []struct{ name, topic string }{
		{"fail/publish/another-device-get", "certificates/" + b.ID + "/get"},
		{"fail/publish/another-device-ack", "certificates/" + b.ID + "/ack"},
		{"fail/publish/reply-topic", "certificates/" + a.ID + "/get/accepted"},
		{"fail/publish/bootstrap-to-telemetry", "telemetry/" + a.ID + "/temp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := a.conn(a.DER, a.Key)
			c.publish(t, tc.topic, map[string]string{"x": "y"})
			select {
			case <-c.lost:
			case <-time.After(30 * time.Second):
				t.Fatalf("publish to %s did not disconnect the client", tc.topic)
			}
		})
	}
	t.Run("fail/connect-as-another-client-id", func(t *testing.T) {
		if c, err := r.connect(a.DER, a.Key, b.ID); err == nil {
			c.c.Disconnect(0)
			t.Fatal("connected with another device's client ID")
		}
	})
	t.Run("ok/operational-reaches-telemetry", func(t *testing.T) {
		ca := a.conn(a.DER, a.Key) // the tests above took the client ID over
		a.startJob(t, ca)
		key := newKey(t)
		acc, j := get(t, ca, a.ID, string(testpki.CSR(t, a.ID, key)))
		if acc.CertificateID == "" {
			t.Fatalf("%+v", j)
		}
		nc := a.conn(leafDER(t, acc.CertificatePEM), key)
		nc.publish(t, "telemetry/"+a.ID+"/temp", map[string]int{"c": 21})
		if _, j := ack(t, nc, a.ID, acc.CertificateID); j.Code != "" {
			t.Fatalf("connection unusable after a telemetry publish: %+v", j)
		}
	})
}

func TestLabThrottled(t *testing.T) {
	// One CreateCertificateFromCsr a second (token bucket of one): of three
	// devices asking at once at least two are throttled, and all are still
	// served inside the function's deadline.
	r := startLab(t, nil, `{"api":{"CreateCertificateFromCsr":1}}`)
	now := time.Now()
	var devs []*device
	var entries []manifest.Entry
	var raw []*testpki.Device
	for _, id := range []string{"gw-t1", "gw-t2", "gw-t3"} {
		d := r.ca.Issue(t, id, now)
		raw = append(raw, d)
		entries = append(entries, manifest.Entry{DeviceID: id})
	}
	r.setup(entries)
	for _, d := range raw {
		devs = append(devs, r.admit(d))
	}
	var conns []*conn
	for _, d := range devs {
		c := d.conn(d.DER, d.Key)
		d.startJob(t, c)
		conns = append(conns, c)
	}
	for i, d := range devs {
		conns[i].publish(t, "certificates/"+d.ID+"/get", protocol.GetRequest{JobID: "bootcert-rotation", ClientToken: "t", CSR: string(testpki.CSR(t, d.ID, nil))})
	}
	for i, d := range devs {
		topic, p := conns[i].wait(t, "certificates/"+d.ID+"/get/accepted", "certificates/"+d.ID+"/get/rejected")
		if !strings.HasSuffix(topic, "accepted") {
			t.Errorf("%s: %s", d.ID, p)
		}
	}
}

func TestLabPreProvisioned(t *testing.T) {
	r := startLab(t, nil, "")
	d0 := r.ca.Issue(t, "gw-pre", time.Now())
	key := newKey(t)
	csr := testpki.DER(testpki.CSR(t, d0.ID, key))
	r.setup([]manifest.Entry{{DeviceID: d0.ID, FinalCSR: csr}})
	d := r.admit(d0)
	c := d.conn(d.DER, d.Key)
	d.startJob(t, c)
	acc, j := get(t, c, d.ID, "")
	if acc.CertificateID == "" {
		t.Fatalf("%+v", j)
	}
	chain, err := protocol.ParseChain([]byte(acc.CertificatePEM))
	if err != nil || !key.PublicKey.Equal(chain[0].PublicKey) {
		t.Fatalf("certificate is not for the factory key: %v", err)
	}
	c.c.Disconnect(50)
	nc := d.conn(chain[0].Raw, key)
	if a, j := ack(t, nc, d.ID, acc.CertificateID); a.CertificateID != acc.CertificateID {
		t.Fatalf("ack %+v", j)
	}
}

func TestLabExplicitActivationAndFailedRotation(t *testing.T) {
	r := startLab(t, map[string]string{"EXPLICIT_ACTIVATION": "true"}, "")
	d0 := r.ca.Issue(t, "gw-x", time.Now())
	r.setup([]manifest.Entry{{DeviceID: d0.ID}})
	if st := r.jitr(d0); st != "ACTIVE" {
		t.Fatalf("jitr: %s", st)
	}
	d := &device{d0, r}
	c := d.conn(d.DER, d.Key)
	// Not activated: not in the group, no job, and the vendor says so.
	ev, _ := json.Marshal(map[string]any{"thingName": d.ID, "operation": "get", "principal": d.CertID, "clientId": d.ID, "jobId": "bootcert-rotation", "clientToken": "x", "csr": string(testpki.CSR(t, d.ID, nil))})
	if out, err := r.lab.Invoke(context.Background(), "VendorFunction", ev); err != nil || !strings.Contains(string(out), "NOT_ACTIVATED") {
		t.Fatalf("before activation: %s %v", out, err)
	}
	c.wait(t, "certificates/"+d.ID+"/get/rejected")
	// The activation API (API Gateway event, payload 2.0).
	api := func(method, path string) map[string]any {
		req, _ := json.Marshal(map[string]any{"version": "2.0", "routeKey": method + " " + path, "rawPath": path,
			"requestContext": map[string]any{"http": map[string]string{"method": method, "path": path}}})
		out, err := r.lab.Invoke(context.Background(), "ActivationFunction", req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		var resp map[string]any
		json.Unmarshal(out, &resp)
		return resp
	}
	if resp := api("GET", "/devices/gw-unknown"); resp["statusCode"] != float64(404) {
		t.Errorf("GET unknown: %v", resp)
	}
	if resp := api("POST", "/devices/"+d.ID+"/activation"); resp["statusCode"] != float64(200) || !strings.Contains(resp["body"].(string), `"activated":true`) {
		t.Fatalf("POST activation: %v", resp)
	}
	if resp := api("GET", "/devices/"+d.ID); !strings.Contains(resp["body"].(string), `"inRotationGroup":true`) {
		t.Errorf("GET: %v", resp)
	}
	waitFor(t, "a job execution", func() bool { return r.jobStatus(d.ID) == protocol.JobQueued })
	d.startJob(t, c)
	acc, j := get(t, c, d.ID, string(testpki.CSR(t, d.ID, nil)))
	if acc.CertificateID == "" {
		t.Fatalf("%+v", j)
	}
	// The device fails to use the new certificate and reports FAILED: the
	// reaper deletes the certificate that was never committed.
	c.publish(t, protocol.JobUpdateTopic(d.ID, "bootcert-rotation"), protocol.UpdateRequest{Status: protocol.JobFailed, StatusDetails: map[string]string{"reason": "rolled back"}})
	waitFor(t, "the new certificate deleted", func() bool { return r.certStatus(acc.CertificateID) == "" })
	if st := r.certStatus(d.CertID); st != "ACTIVE" {
		t.Errorf("bootstrap %s after a failed rotation", st)
	}
	// A failed rotation does not drop the device: the renewal scan adds it
	// to the rotation group again and queues a new snapshot job for it (the
	// continuous job does not run twice for a thing: AWS documents no
	// second execution).
	waitFor(t, "the thing out of the rotation group", func() bool {
		g, err := r.iot.ListThingGroupsForThing(context.Background(), &iot.ListThingGroupsForThingInput{ThingName: aws.String(d.ID)})
		return err == nil && len(g.ThingGroups) == 0
	})
	out, err := r.lab.Invoke(context.Background(), "RenewalFunction", json.RawMessage(`{"source":"aws.events","detail-type":"Scheduled Event"}`))
	if err != nil || !strings.Contains(string(out), `"added":["`+d.ID+`"]`) {
		t.Fatalf("renewal: %s %v", out, err)
	}
	th, err := r.iot.DescribeThing(context.Background(), &iot.DescribeThingInput{ThingName: aws.String(d.ID)})
	if err != nil {
		t.Fatal(err)
	}
	job := th.Attributes["rotationJob"]
	waitFor(t, "a new job execution", func() bool {
		out, err := r.iot.DescribeJobExecution(context.Background(), &iot.DescribeJobExecutionInput{JobId: aws.String(job), ThingName: aws.String(d.ID)})
		return err == nil && out.Execution != nil && out.Execution.Status == "QUEUED"
	})
	if st := r.jobStatus(d.ID); st != protocol.JobFailed {
		t.Errorf("continuous job execution %s after the renewal, want FAILED (no second execution)", st)
	}
	dj, err := r.iot.DescribeJob(context.Background(), &iot.DescribeJobInput{JobId: aws.String(job)})
	if err != nil || dj.Job.TargetSelection != "SNAPSHOT" || dj.Job.TimeoutConfig == nil || aws.ToInt64(dj.Job.TimeoutConfig.InProgressTimeoutInMinutes) != 60 {
		t.Errorf("renewal job %s: %+v %v", job, dj, err)
	}
}
