package cloud_test

// Tests of the cloud functions through the real AWS SDK against the lab,
// with the real cloud/template.yaml: its policies are enforced by the lab's
// broker, its rules invoke the functions built by cloud.Build.

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
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
		AllowList: testpki.AllowList(r.t, entries...), CRL: r.ca.CRL(r.t, time.Now(), certs...), SkipEventConfig: true})
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

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
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

func (r *labRig) jobStatus(thing string) string {
	out, err := r.iot.DescribeJobExecution(context.Background(), &iot.DescribeJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String(thing)})
	if err != nil || out.Execution == nil {
		return ""
	}
	return string(out.Execution.Status)
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
	waitFor(r.t, "a job execution for "+d.ID, func() bool { return r.jobStatus(d.ID) == "QUEUED" })
	return &device{d, r}
}

// get publishes a get request over c and waits for the reply.
func get(t *testing.T, c *conn, thing, csr string) (protocol.GetAccepted, protocol.Rejected) {
	t.Helper()
	c.publish(t, "certificates/"+thing+"/get", protocol.GetRequest{JobID: "bootcert-rotation", ClientToken: "tok", CSR: csr})
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
	c.publish(t, "certificates/"+thing+"/ack", protocol.AckRequest{JobID: "bootcert-rotation", ClientToken: "tok", CertificateID: certID})
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
	k, err := ecdsaKey()
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

	c.publish(t, "$aws/things/"+d.ID+"/jobs/start-next", map[string]any{"statusDetails": map[string]string{"progress": "started"}})
	waitFor(t, "job IN_PROGRESS", func() bool { return r.jobStatus(d.ID) == "IN_PROGRESS" })
	key := newKey(t)
	csr := string(testpki.CSR(t, d.ID, key))
	acc, rej := get(t, c, d.ID, csr)
	if acc.CertificateID == "" {
		t.Fatalf("get rejected: %+v", rej)
	}
	if !strings.HasPrefix(acc.Location, "https://") {
		t.Errorf("location %q", acc.Location)
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
	blk, _ := pem.Decode([]byte(acc.CertificatePEM))
	c.c.Disconnect(50)
	nc := d.conn(blk.Bytes, key)
	a, j := ack(t, nc, d.ID, acc.CertificateID)
	if a.CertificateID != acc.CertificateID {
		t.Fatalf("ack: %+v", j)
	}
	if st := r.certStatus(d.CertID); st != "INACTIVE" {
		t.Errorf("bootstrap %s after the ack, want INACTIVE", st)
	}
	// The device reports SUCCEEDED; the reaper keeps the new certificate and
	// never deletes the bootstrap one.
	nc.publish(t, "$aws/things/"+d.ID+"/jobs/bootcert-rotation/update", map[string]any{"status": "SUCCEEDED"})
	waitFor(t, "job SUCCEEDED", func() bool { return r.jobStatus(d.ID) == "SUCCEEDED" })
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
