package lab

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/bootcert/bootcert/cloud/lab/labtest"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/protocol"
)

// TestRotationWithCloudFunctions runs the whole flow of DESIGN.md through
// the lab with the real template and the real cloud functions (built with
// cloud.Build, invoked in-process by the rules): JITR -> activator (allow
// list in S3) -> ACTIVE, thing, group, job execution -> start-next -> CSR on
// certificates/{thing}/get -> vendor issues -> reconnect with the new
// certificate -> ack -> job SUCCEEDED -> bootstrap certificate INACTIVE.
// The device side is a paho client driven by the test.
func TestRotationWithCloudFunctions(t *testing.T) {
	t.Run("ok/any credentials", func(t *testing.T) { rotation(t, "") })
	t.Run("ok/--credentials", func(t *testing.T) {
		// The functions must sign with the lab's one key pair.
		p := filepath.Join(t.TempDir(), "credentials.json")
		if err := os.WriteFile(p, []byte(`{"accessKeyId":"AKIATESTTESTTEST0001","secretAccessKey":"only-this-secret"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		rotation(t, p)
	})
}

func rotation(t *testing.T, credentialsPath string) {
	tmplPath := filepath.Join("..", "template.yaml")
	cfg := Config{TemplatePath: tmplPath, CredentialsPath: credentialsPath}
	f := newFixture(t, cfg)
	ctx := context.Background()
	tmpl, err := template.Load(tmplPath, template.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var bucket string
	for _, b := range tmpl.Buckets {
		bucket = b
	}
	s3c := s3.NewFromConfig(f.awsConfig(cfg), func(o *s3.Options) { o.BaseEndpoint = aws.String(f.lab.Endpoints().S3); o.UsePathStyle = true })

	leaf := f.ca.NewLeaf(t, "gw-1")
	put := func(key string, body []byte) {
		t.Helper()
		if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(body)}); err != nil {
			t.Fatalf("PutObject %s/%s: %v", bucket, key, err)
		}
	}
	put("trust/factory-ca.pem", f.ca.PEM)
	put("trust/allow-list.csv", []byte("device_id,bootstrap_sha256,final_csr\ngw-1,"+leaf.CertID+",\n"))
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	if _, err := f.api.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bootcert-rotation"), Document: aws.String(string(doc)),
		Targets: []string{acct + "thinggroup/bootcert-rotation"}, TargetSelection: types.TargetSelectionContinuous}); err != nil {
		t.Fatalf("CreateJob: %v", err)
	}

	// JITR: refused, then the activator makes it ACTIVE.
	if out, err := labtest.Pub(t, f.client(leaf, "gw-1"), "certificates/gw-1/get", "{}"); err == nil {
		t.Fatalf("first connect succeeded: %s", out)
	}
	waitStatus(t, f, leaf.CertID, types.CertificateStatusActive)
	th, err := f.api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")})
	if err != nil || aws.ToString(th.ThingTypeName) != "bootcert-gateway" {
		t.Fatalf("thing after activation: %v %v", err, th)
	}

	// The device: subscribe before publishing, start the job.
	dev := newDevice(t, f, leaf.CertPEM, leaf.KeyPEM)
	dev.sub("$aws/things/gw-1/jobs/start-next/+", "certificates/gw-1/get/+")
	dev.pub("$aws/things/gw-1/jobs/start-next", `{"clientToken":"s1","statusDetails":{"progress":"started"}}`)
	m := dev.wait("$aws/things/gw-1/jobs/start-next/accepted")
	var sn struct {
		Execution struct {
			JobID  string `json:"jobId"`
			Status string `json:"status"`
		} `json:"execution"`
	}
	json.Unmarshal(m, &sn)
	if sn.Execution.JobID != "bootcert-rotation" || sn.Execution.Status != "IN_PROGRESS" {
		t.Fatalf("start-next/accepted %s", m)
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gw-1"}}, key)
	req, _ := json.Marshal(protocol.GetRequest{JobID: "bootcert-rotation", ClientToken: "g1", CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))})
	dev.pub("certificates/gw-1/get", string(req))
	m = dev.wait("certificates/gw-1/get/accepted")
	var acc protocol.GetAccepted
	if err := json.Unmarshal(m, &acc); err != nil || acc.CertificatePEM == "" || acc.ClientToken != "g1" {
		t.Fatalf("get/accepted %s (%v)", m, err)
	}
	blk, _ := pem.Decode([]byte(acc.CertificatePEM))
	newCert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !newCert.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatalf("issued certificate does not hold the staged key: %v", err)
	}

	// Swap: reconnect with the new certificate (same client ID), ack over it.
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	op := newDevice(t, f, []byte(acc.CertificatePEM), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	op.sub("certificates/gw-1/ack/+", "$aws/things/gw-1/jobs/bootcert-rotation/update/+")
	ack, _ := json.Marshal(protocol.AckRequest{JobID: "bootcert-rotation", ClientToken: "a1", CertificateID: acc.CertificateID})
	op.pub("certificates/gw-1/ack", string(ack))
	if m := op.wait("certificates/gw-1/ack/accepted"); !bytes.Contains(m, []byte(acc.CertificateID)) {
		t.Fatalf("ack/accepted %s", m)
	}
	op.pub("$aws/things/gw-1/jobs/bootcert-rotation/update", `{"clientToken":"u1","status":"SUCCEEDED","statusDetails":{"progress":"committed"}}`)
	op.wait("$aws/things/gw-1/jobs/bootcert-rotation/update/accepted")
	waitStatus(t, f, leaf.CertID, types.CertificateStatusInactive)
	if out, err := labtest.Pub(t, f.client(leaf, "gw-1"), "certificates/gw-1/get", "{}"); err == nil {
		t.Fatalf("bootstrap certificate still connects after the rotation: %s", out)
	}
}

func waitStatus(t *testing.T, f *fixture, id string, want types.CertificateStatus) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, err := f.api.DescribeCertificate(context.Background(), &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
		if err == nil && d.CertificateDescription.Status == want {
			return
		}
		if time.Now().After(deadline) {
			st := ""
			if err == nil {
				st = string(d.CertificateDescription.Status)
			}
			t.Fatalf("certificate %s is %s (%v), want %s; functions: %+v", id, st, err, want, f.lab.invoker.snapshot())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type testDevice struct {
	t   *testing.T
	c   paho.Client
	got chan paho.Message
}

func newDevice(t *testing.T, f *fixture, certPEM, keyPEM []byte) *testDevice {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.lab.ServerCAPEM())
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	d := &testDevice{t: t, got: make(chan paho.Message, 16)}
	o := paho.NewClientOptions().AddBroker("tls://" + f.lab.Endpoints().MQTT).SetClientID("gw-1").
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	d.c = paho.NewClient(o)
	if tok := d.c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(100) })
	return d
}

func (d *testDevice) sub(filters ...string) {
	d.t.Helper()
	for _, f := range filters {
		tok := d.c.Subscribe(f, 1, func(_ paho.Client, m paho.Message) { d.got <- m })
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil || tok.(*paho.SubscribeToken).Result()[f] > 1 {
			d.t.Fatalf("subscribe %s: %v %v", f, tok.Error(), tok.(*paho.SubscribeToken).Result())
		}
	}
}

func (d *testDevice) pub(topic, payload string) {
	d.t.Helper()
	if tok := d.c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		d.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (d *testDevice) wait(topic string) []byte {
	d.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-d.got:
			if m.Topic() == topic {
				return m.Payload()
			}
			d.t.Logf("(other message %s %s)", m.Topic(), m.Payload())
		case <-deadline:
			d.t.Fatalf("no message on %s in 30s", topic)
		}
	}
}
