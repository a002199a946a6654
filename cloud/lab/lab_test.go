package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	paho "github.com/eclipse/paho.mqtt.golang"

	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/lab/api"
	"github.com/bootcert/bootcert/cloud/lab/labtest"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/protocol"
)

// fixture is a lab started in-process on free ports, with a registered
// factory CA and an "admin" certificate that may do anything.
type fixture struct {
	t      *testing.T
	lab    *Lab
	api    *iot.Client
	ca     *testca.CA
	caID   string
	dir    string // for client files
	caFile string
	admin  labtest.Client
}

const acct = "arn:aws:iot:us-east-1:123456789012:"

func start(t *testing.T, cfg Config) *Lab {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	cfg.MQTTAddr, cfg.APIAddr, cfg.S3Addr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	l, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	labtest.RequireMosquitto(t)
	f := &fixture{t: t, dir: t.TempDir()}
	f.lab = start(t, cfg)
	f.caFile = f.lab.Endpoints().ServerCA
	f.api = iot.NewFromConfig(f.awsConfig(cfg), func(o *iot.Options) { o.BaseEndpoint = aws.String(f.lab.Endpoints().API) })
	f.ca = testca.New(t, "factory CA")
	f.caID = registerCA(t, f.api, f.ca)
	adminLeaf := f.ca.NewLeaf(t, "admin")
	f.registerActive(adminLeaf, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}`, "admin-policy")
	cf, kf := adminLeaf.Files(t, f.dir, "admin")
	f.admin = labtest.Client{Addr: f.lab.Endpoints().MQTT, CAFile: f.caFile, CertFile: cf, KeyFile: kf, ClientID: "admin"}
	return f
}

// awsConfig is the SDK configuration for the lab, with the key pair of
// --credentials when the lab has one.
func (f *fixture) awsConfig(cfg Config) aws.Config {
	c := ClientConfig(f.lab.ServerCAPEM(), "us-east-1")
	if cfg.CredentialsPath != "" {
		creds, err := api.LoadCredentials(cfg.CredentialsPath)
		if err != nil {
			f.t.Fatal(err)
		}
		c.Credentials = credentials.NewStaticCredentialsProvider(creds.AccessKeyID, creds.SecretAccessKey, "")
	}
	return c
}

func registerCA(t *testing.T, api *iot.Client, ca *testca.CA) string {
	t.Helper()
	ctx := context.Background()
	code, err := api.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil {
		t.Fatalf("GetRegistrationCode: %v", err)
	}
	ver := ca.NewLeaf(t, aws.ToString(code.RegistrationCode))
	out, err := api.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{
		CaCertificate: aws.String(string(ca.PEM)), VerificationCertificate: aws.String(string(ver.CertPEM)),
		SetAsActive: true, AllowAutoRegistration: true,
	})
	if err != nil {
		t.Fatalf("RegisterCACertificate: %v", err)
	}
	return aws.ToString(out.CertificateId)
}

// registerActive registers leaf ACTIVE and attaches a new policy to it.
func (f *fixture) registerActive(leaf *testca.Leaf, doc, policyName string) string {
	f.t.Helper()
	ctx := context.Background()
	out, err := f.api.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(leaf.CertPEM)), CaCertificatePem: aws.String(string(f.ca.PEM)), Status: types.CertificateStatusActive})
	if err != nil {
		f.t.Fatalf("RegisterCertificate: %v", err)
	}
	if doc != "" {
		if _, err := f.api.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String(policyName), PolicyDocument: aws.String(doc)}); err != nil {
			f.t.Fatalf("CreatePolicy: %v", err)
		}
	}
	if policyName != "" {
		if _, err := f.api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(policyName), Target: out.CertificateArn}); err != nil {
			f.t.Fatalf("AttachPolicy: %v", err)
		}
	}
	return aws.ToString(out.CertificateArn)
}

func (f *fixture) client(leaf *testca.Leaf, clientID string) labtest.Client {
	cf, kf := leaf.Files(f.t, f.dir, leaf.CertID[:12])
	return labtest.Client{Addr: f.lab.Endpoints().MQTT, CAFile: f.caFile, CertFile: cf, KeyFile: kf, ClientID: clientID}
}

// devicePolicy: connect as the certificate's CN, own topics and jobs.
const devicePolicy = `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Certificate.Subject.CommonName}"},
 {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/devices/${iot:ClientId}/*","arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:ClientId}/jobs/*"]},
 {"Effect":"Allow","Action":"iot:Subscribe","Resource":["arn:aws:iot:us-east-1:123456789012:topicfilter/devices/${iot:ClientId}/*","arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/things/${iot:ClientId}/jobs/*"]},
 {"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/devices/${iot:ClientId}/forbidden"}]}`

func TestStartWritesEndpoints(t *testing.T) {
	dir := t.TempDir()
	l := start(t, Config{DataDir: dir})
	b, err := os.ReadFile(filepath.Join(dir, "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ep Endpoints
	if err := json.Unmarshal(b, &ep); err != nil {
		t.Fatal(err)
	}
	if ep != l.Endpoints() || !strings.HasPrefix(ep.API, "https://127.0.0.1:") || !strings.HasPrefix(ep.S3, "https://127.0.0.1:") || !strings.HasPrefix(ep.MQTT, "127.0.0.1:") {
		t.Fatalf("endpoints.json = %+v, lab says %+v", ep, l.Endpoints())
	}
	ca, err := os.ReadFile(filepath.Join(dir, "server-ca.pem"))
	if err != nil || string(ca) != string(l.ServerCAPEM()) {
		t.Fatalf("server-ca.pem: %v", err)
	}
	// A second lab on the same fixed port fails with a clear error.
	_, err = Start(context.Background(), Config{DataDir: t.TempDir(), MQTTAddr: ep.MQTT, APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "MQTT listener") {
		t.Fatalf("second lab on a busy port: %v", err)
	}
}

func TestJITRAndPolicies(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	events := labtest.StartSub(t, f.admin, "$aws/events/certificates/registered/#")
	all := labtest.StartSub(t, withID(f.admin, "admin-2"), "devices/#")

	leaf := f.ca.NewLeaf(t, "dev-1")
	dev := f.client(leaf, "dev-1")
	if out, err := labtest.Pub(t, dev, "devices/dev-1/hello", "x"); err == nil {
		t.Fatalf("unknown certificate connected: %s", out)
	}
	d, err := f.api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(leaf.CertID)})
	if err != nil {
		t.Fatalf("DescribeCertificate after JITR: %v", err)
	}
	if d.CertificateDescription.Status != types.CertificateStatusPendingActivation {
		t.Fatalf("status %s, want PENDING_ACTIVATION", d.CertificateDescription.Status)
	}
	events.WaitFor(t, "registered event", labtest.Contains("$aws/events/certificates/registered/"+f.caID, leaf.CertID))

	// The chain a device sends may include the CA: JITR registers the leaf.
	chained := f.ca.NewLeaf(t, "dev-chain")
	cc := f.client(chained, "dev-chain")
	if err := os.WriteFile(cc.CertFile, append(append([]byte{}, chained.CertPEM...), f.ca.PEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := labtest.Pub(t, cc, "devices/dev-chain/hello", "x"); err == nil {
		t.Fatalf("unknown certificate (with its CA in the chain) connected: %s", out)
	}
	events.WaitFor(t, "registered event for a chain with the CA", labtest.Contains("$aws/events/certificates/registered/"+f.caID, chained.CertID))

	if _, err := f.api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(leaf.CertID), NewStatus: types.CertificateStatusActive}); err != nil {
		t.Fatal(err)
	}
	if out, err := labtest.Pub(t, dev, "devices/dev-1/hello", "x"); err == nil {
		t.Fatalf("ACTIVE certificate without a policy connected: %s", out)
	}
	if _, err := f.api.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("device"), PolicyDocument: aws.String(devicePolicy)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("device"), Target: d.CertificateDescription.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, clientID, topic string
		ok                    bool
	}{
		{"ok/own topic", "dev-1", "devices/dev-1/telemetry", true},
		{"fail/other device's topic", "dev-1", "devices/dev-2/telemetry", false},
		{"fail/explicit deny", "dev-1", "devices/dev-1/forbidden", false},
		{"fail/another client id", "dev-2", "devices/dev-2/telemetry", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := labtest.Pub(t, withID(dev, tc.clientID), tc.topic, tc.name)
			if tc.ok != (err == nil) {
				t.Fatalf("publish to %s as %s: err=%v (want ok=%v): %s", tc.topic, tc.clientID, err, tc.ok, out)
			}
			// A marker after it proves ordering: the refused one is never delivered.
			if out, err := labtest.Pub(t, dev, "devices/dev-1/marker", tc.name); err != nil {
				t.Fatalf("marker: %v %s", err, out)
			}
			all.WaitFor(t, "marker", labtest.Contains("devices/dev-1/marker", tc.name))
			delivered := false
			for _, m := range all.Messages() {
				if m.Topic == tc.topic && m.Payload == tc.name {
					delivered = true
				}
			}
			if delivered != tc.ok {
				t.Fatalf("delivered=%v, want %v:\n%s", delivered, tc.ok, labtest.Describe(all.Messages()))
			}
		})
	}
	t.Run("fail/subscribe other device gets 0x80", func(t *testing.T) {
		s := labtest.StartSub(t, dev, "devices/dev-2/#", "devices/dev-1/#")
		if g := s.Granted(); len(g) != 2 || g[0] != 128 || g[1] != 1 {
			t.Fatalf("SUBACK %v, want [128 1]:\n%s", g, s.Output())
		}
	})
}

func withID(c labtest.Client, id string) labtest.Client {
	c.ClientID = id
	return c
}

func TestJobsOverMQTT(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	leaf := f.ca.NewLeaf(t, "gw-1")
	arn := f.registerActive(leaf, devicePolicy, "device")
	if _, err := f.api.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	grp, err := f.api.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("bootcert-rotation")})
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	if _, err := f.api.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bootcert-rotation"), Targets: []string{aws.ToString(grp.ThingGroupArn)},
		Document: aws.String(string(doc)), TargetSelection: types.TargetSelectionContinuous}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.api.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"JOB_EXECUTION": {Enabled: true}}}); err != nil {
		t.Fatal(err)
	}
	base := "$aws/things/gw-1/jobs/"
	jobs := labtest.StartSub(t, f.admin, base+"#", "$aws/events/jobExecution/#")
	if _, err := f.api.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("bootcert-rotation"), ThingName: aws.String("gw-1")}); err != nil {
		t.Fatal(err)
	}
	jobs.WaitFor(t, "notify-next on joining the group", labtest.Contains(base+"notify-next", `"jobId":"bootcert-rotation"`))

	dev := f.client(leaf, "gw-1")
	pub := func(topic, msg string) {
		t.Helper()
		if out, err := labtest.Pub(t, dev, base+topic, msg); err != nil {
			t.Fatalf("publish %s: %v %s", topic, err, out)
		}
	}
	pub("get", `{"clientToken":"c1"}`)
	m := jobs.WaitFor(t, "get/accepted", labtest.Contains(base+"get/accepted", `"c1"`))
	if !strings.Contains(m.Payload, `"queuedJobs":[{"jobId":"bootcert-rotation"`) {
		t.Fatalf("get/accepted %s", m.Payload)
	}
	pub("start-next", `{"clientToken":"c2","statusDetails":{"progress":"started"}}`)
	m = jobs.WaitFor(t, "start-next/accepted", labtest.Contains(base+"start-next/accepted", `"c2"`))
	var sn struct {
		Execution struct {
			JobID         string          `json:"jobId"`
			Status        string          `json:"status"`
			VersionNumber int64           `json:"versionNumber"`
			JobDocument   json.RawMessage `json:"jobDocument"`
		} `json:"execution"`
	}
	if err := json.Unmarshal([]byte(m.Payload), &sn); err != nil {
		t.Fatal(err)
	}
	if sn.Execution.Status != "IN_PROGRESS" {
		t.Fatalf("start-next %s", m.Payload)
	}
	if _, err := protocol.ParseJobDocument(sn.Execution.JobDocument); err != nil {
		t.Fatalf("job document in start-next/accepted: %v (%s)", err, m.Payload)
	}
	jobs.WaitFor(t, "in_progress event", labtest.Topic("$aws/events/jobExecution/bootcert-rotation/in_progress"))
	pub("$next/get", `{"clientToken":"n1","includeJobDocument":false}`)
	m = jobs.WaitFor(t, "$next/get/accepted", labtest.Contains(base+"$next/get/accepted", `"n1"`))
	if !strings.Contains(m.Payload, `"status":"IN_PROGRESS"`) || strings.Contains(m.Payload, "jobDocument") {
		t.Fatalf("$next/get/accepted %s", m.Payload)
	}

	pub("bootcert-rotation/update", `{"clientToken":"c3","status":"SUCCEEDED","expectedVersion":99}`)
	m = jobs.WaitFor(t, "VersionMismatch", labtest.Contains(base+"bootcert-rotation/update/rejected", `"c3"`))
	if !strings.Contains(m.Payload, `"code":"VersionMismatch"`) {
		t.Fatalf("update/rejected %s", m.Payload)
	}
	pub("bootcert-rotation/update", `{"clientToken":"c4","status":"BOGUS"}`)
	m = jobs.WaitFor(t, "bad status", labtest.Contains(base+"bootcert-rotation/update/rejected", `"c4"`))
	if !strings.Contains(m.Payload, `"code":"InvalidRequest"`) {
		t.Fatalf("update/rejected %s", m.Payload)
	}
	pub("bootcert-rotation/update", `{"clientToken":"c5","status":"SUCCEEDED","expectedVersion":`+itoa(sn.Execution.VersionNumber)+`,"statusDetails":{"progress":"committed"},"includeJobExecutionState":true}`)
	m = jobs.WaitFor(t, "update/accepted", labtest.Contains(base+"bootcert-rotation/update/accepted", `"c5"`))
	if !strings.Contains(m.Payload, `"status":"SUCCEEDED"`) {
		t.Fatalf("update/accepted %s", m.Payload)
	}
	ev := jobs.WaitFor(t, "succeeded event", labtest.Topic("$aws/events/jobExecution/bootcert-rotation/succeeded"))
	var e map[string]any
	json.Unmarshal([]byte(ev.Payload), &e)
	if e["eventType"] != "JOB_EXECUTION" || e["thingArn"] != acct+"thing/gw-1" || e["status"] != "SUCCEEDED" || e["jobId"] != "bootcert-rotation" {
		t.Fatalf("event %s", ev.Payload)
	}
	pub("bootcert-rotation/update", `{"clientToken":"c6","status":"FAILED"}`)
	jobs.WaitFor(t, "terminal", labtest.Contains(base+"bootcert-rotation/update/rejected", `"c6"`))
	// Another thing's jobs topics are not this device's to use.
	if out, err := labtest.Pub(t, dev, "$aws/things/gw-2/jobs/get", `{}`); err == nil {
		t.Fatalf("publish to another thing's jobs topic: %s", out)
	}
}

func itoa(n int64) string { return big.NewInt(n).String() }

func pahoClient(t *testing.T, f *fixture, leaf *testca.Leaf, id string, lost chan error) paho.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.lab.ServerCAPEM())
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	o := paho.NewClientOptions().AddBroker("tls://" + f.lab.Endpoints().MQTT).SetClientID(id).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, NextProtos: []string{"x-amzn-mqtt-ca"}}).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	o.SetConnectionLostHandler(func(_ paho.Client, err error) {
		if lost != nil {
			lost <- err
		}
	})
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("paho connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func TestPahoAndInactive(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	leaf := f.ca.NewLeaf(t, "dev-9")
	f.registerActive(leaf, devicePolicy, "device")
	lost := make(chan error, 1)
	c := pahoClient(t, f, leaf, "dev-9", lost)
	got := make(chan string, 4)
	st := c.Subscribe("devices/dev-9/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })
	if !st.WaitTimeout(10*time.Second) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	if r := st.(*paho.SubscribeToken).Result()["devices/dev-9/#"]; r != 1 {
		t.Fatalf("granted %d", r)
	}
	st = c.Subscribe("devices/other/#", 1, nil)
	st.WaitTimeout(10 * time.Second)
	if r := st.(*paho.SubscribeToken).Result()["devices/other/#"]; r != 0x80 {
		t.Fatalf("denied subscribe granted %d, want 0x80", r)
	}
	pt := c.Publish("devices/dev-9/t", 1, false, "hello")
	if !pt.WaitTimeout(10*time.Second) || pt.Error() != nil {
		t.Fatalf("publish: %v", pt.Error())
	}
	select {
	case p := <-got:
		if p != "hello" {
			t.Fatalf("got %q", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("own message not received")
	}
	// A data-plane Publish through the REST API (SigV4, as the cloud
	// functions send it) reaches the device too.
	pub := &cloudaws.Publisher{Config: ClientConfig(f.lab.ServerCAPEM(), "us-east-1"), Endpoint: f.lab.Endpoints().API}
	if err := pub.Publish(ctx, "devices/dev-9/cmd", []byte("from-admin")); err != nil {
		t.Fatalf("data-plane Publish: %v", err)
	}
	select {
	case p := <-got:
		if p != "from-admin" {
			t.Fatalf("got %q", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("admin message not received")
	}
	// The same through the data endpoint found with DescribeEndpoint
	// iot:Data-ATS: the MQTT port also serves the HTTPS data plane.
	reg := cloudaws.NewRegistry(ClientConfig(f.lab.ServerCAPEM(), "us-east-1"), f.lab.Endpoints().API)
	dpub := &cloudaws.Publisher{Config: ClientConfig(f.lab.ServerCAPEM(), "us-east-1"), Resolve: reg.DataEndpoint}
	if err := dpub.Publish(ctx, "devices/dev-9/cmd", []byte("via-data-endpoint")); err != nil {
		t.Fatalf("data-plane Publish through DescribeEndpoint: %v", err)
	}
	select {
	case p := <-got:
		if p != "via-data-endpoint" {
			t.Fatalf("got %q", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("message published through the data endpoint not received")
	}

	if _, err := f.api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(leaf.CertID), NewStatus: types.CertificateStatusInactive}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("session of a certificate made INACTIVE was not ended")
	}
	if out, err := labtest.Pub(t, f.client(leaf, "dev-9"), "devices/dev-9/t", "x"); err == nil {
		t.Fatalf("INACTIVE certificate connected: %s", out)
	}
}

func TestRestartKeepsState(t *testing.T) {
	labtest.RequireMosquitto(t)
	dir := t.TempDir()
	f := newFixture(t, Config{DataDir: dir})
	leaf := f.ca.NewLeaf(t, "dev-r")
	f.registerActive(leaf, devicePolicy, "device")
	if out, err := labtest.Pub(t, f.client(leaf, "dev-r"), "devices/dev-r/a", "1"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	f.lab.Close()

	l2 := start(t, Config{DataDir: dir})
	f.lab = l2
	f.admin.Addr = l2.Endpoints().MQTT
	f.caFile = l2.Endpoints().ServerCA
	sub := labtest.StartSub(t, f.admin, "devices/#")
	if out, err := labtest.Pub(t, f.client(leaf, "dev-r"), "devices/dev-r/a", "after-restart"); err != nil {
		t.Fatalf("after restart: %v %s", err, out)
	}
	sub.WaitFor(t, "message after restart", labtest.Contains("devices/dev-r/a", "after-restart"))
	// JITR still works with the CA registered before the restart.
	other := f.ca.NewLeaf(t, "dev-new")
	if _, err := labtest.Pub(t, f.client(other, "dev-new"), "devices/dev-new/a", "x"); err == nil {
		t.Fatal("unknown certificate connected")
	}
	if st, err := l2.Registry().CertificateStatus(other.CertID); err != nil || st != "PENDING_ACTIVATION" {
		t.Fatalf("after restart JITR: %q %v", st, err)
	}
}

func TestInvokeEndpoint(t *testing.T) {
	called := make(chan json.RawMessage, 1)
	l := start(t, Config{Functions: map[string]Function{
		"RenewalFunction": func(ctx context.Context, ev json.RawMessage) (json.RawMessage, error) {
			called <- ev
			return json.RawMessage(`{"queued":3}`), nil
		},
	}})
	out, err := l.Invoke(context.Background(), "RenewalFunction", json.RawMessage(`{"source":"test"}`))
	if err != nil || string(out) != `{"queued":3}` {
		t.Fatalf("Invoke = %s, %v", out, err)
	}
	if ev := <-called; string(ev) != `{"source":"test"}` {
		t.Fatalf("event %s", ev)
	}
	hc := ClientConfig(l.ServerCAPEM(), "").HTTPClient
	for _, tc := range []struct {
		name, fn, body string
		code           int
		want           string
	}{
		{"ok/invoke", "RenewalFunction", `{"source":"http"}`, 200, `{"queued":3}`},
		{"fail/unknown function", "NoSuchFunction", `{}`, 404, "ResourceNotFoundException"},
		{"fail/not json", "RenewalFunction", `{`, 400, "not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", l.Endpoints().API+"/lab/functions/"+tc.fn+"/invoke", strings.NewReader(tc.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
				t.Fatalf("%d %s, want %d %s", resp.StatusCode, b, tc.code, tc.want)
			}
		})
	}
	<-called
	req, _ := http.NewRequest("GET", l.Endpoints().API+"/lab/state", nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var state map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&state); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"registry", "broker", "functions", "rules", "endpoints"} {
		if _, ok := state[k]; !ok {
			t.Errorf("GET /lab/state has no %q section", k)
		}
	}
	var fns map[string]FunctionStats
	if err := json.Unmarshal(state["functions"], &fns); err != nil || fns["RenewalFunction"].Invocations != 2 {
		t.Errorf("functions section %s (%v), want 2 invocations of RenewalFunction", state["functions"], err)
	}
}

// TestTemplateRules runs the real cloud/template.yaml's rules and policies
// with Go stand-ins for the functions: JITR event -> activator, the
// certificates/+/+ request rule -> vendor (with the fields the SQL adds),
// job execution events -> reaper.
func TestTemplateRules(t *testing.T) {
	var l *Lab
	ready := make(chan struct{})
	activated := make(chan string, 4)
	vendorEvents := make(chan map[string]any, 4)
	reaperEvents := make(chan map[string]any, 8)
	fns := map[string]Function{
		"ActivatorFunction": func(ctx context.Context, ev json.RawMessage) (json.RawMessage, error) {
			<-ready
			var e struct{ CertificateID string }
			if err := json.Unmarshal(ev, &e); err != nil {
				return nil, err
			}
			r := l.Registry()
			cert, err := r.DescribeCertificate(e.CertificateID)
			if err != nil {
				return nil, err
			}
			block, _ := pem.Decode([]byte(cert.PEM))
			c, _ := x509.ParseCertificate(block.Bytes)
			thing := c.Subject.CommonName
			if _, err := r.CreateThing(thing, "bootcert-gateway", nil); err != nil {
				return nil, err
			}
			if err := r.AttachThingPrincipal(thing, cert.ARN); err != nil {
				return nil, err
			}
			if err := r.AttachPolicy("bootcert-bootstrap", cert.ARN); err != nil {
				return nil, err
			}
			if err := r.UpdateCertificate(e.CertificateID, "ACTIVE"); err != nil {
				return nil, err
			}
			activated <- thing
			return nil, nil
		},
		"VendorFunction": func(ctx context.Context, ev json.RawMessage) (json.RawMessage, error) {
			var e map[string]any
			if err := json.Unmarshal(ev, &e); err != nil {
				return nil, err
			}
			vendorEvents <- e
			reply, _ := json.Marshal(map[string]any{"clientToken": e["clientToken"], "certificateId": "abc"})
			return nil, l.Broker().Publish("certificates/"+e["thingName"].(string)+"/"+e["operation"].(string)+"/accepted", reply, 1)
		},
		"ReaperFunction": func(ctx context.Context, ev json.RawMessage) (json.RawMessage, error) {
			var e map[string]any
			if err := json.Unmarshal(ev, &e); err != nil {
				return nil, err
			}
			reaperEvents <- e
			return nil, nil
		},
	}
	f := newFixture(t, Config{TemplatePath: filepath.Join("..", "template.yaml"), NoBuild: true, Functions: fns})
	l = f.lab
	close(ready)
	if _, err := l.Registry().GetPolicy("bootcert-bootstrap"); err != nil {
		t.Fatalf("template policy not created: %v", err)
	}

	leaf := f.ca.NewLeaf(t, "gw-7")
	if out, err := labtest.Pub(t, f.client(leaf, "gw-7"), "certificates/gw-7/get", "{}"); err == nil {
		t.Fatalf("first connect succeeded: %s", out)
	}
	select {
	case thing := <-activated:
		if thing != "gw-7" {
			t.Fatalf("activated %q", thing)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the JITR rule did not invoke ActivatorFunction")
	}

	lost := make(chan error, 1)
	c := pahoClient(t, f, leaf, "gw-7", lost)
	got := make(chan paho.Message, 4)
	if tok := c.Subscribe("certificates/gw-7/get/+", 1, func(_ paho.Client, m paho.Message) { got <- m }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Publish("certificates/gw-7/get", 1, false, `{"jobId":"bootcert-rotation","clientToken":"tok-1","csr":"x"}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case e := <-vendorEvents:
		if e["thingName"] != "gw-7" || e["operation"] != "get" || e["principal"] != leaf.CertID || e["clientId"] != "gw-7" || e["clientToken"] != "tok-1" || e["jobId"] != "bootcert-rotation" {
			t.Fatalf("vendor event %v", e)
		}
		if _, ok := e["receivedAt"].(float64); !ok {
			t.Fatalf("vendor event without receivedAt: %v", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the request rule did not invoke VendorFunction")
	}
	select {
	case m := <-got:
		if m.Topic() != "certificates/gw-7/get/accepted" || !strings.Contains(string(m.Payload()), "tok-1") {
			t.Fatalf("reply %s %s", m.Topic(), m.Payload())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the device got no reply")
	}

	// The bootstrap policy does not allow telemetry: publishing it ends the session.
	c.Publish("telemetry/gw-7/x", 1, false, "x").WaitTimeout(5 * time.Second)
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("unauthorized publish did not disconnect the client")
	}

	// The real bootstrap policy, enforced with mosquitto: connect only as
	// its own thing, its own topics only.
	dev := f.client(leaf, "gw-7")
	for _, tc := range []struct {
		name, clientID, topic string
		ok                    bool
	}{
		{"ok/own get topic", "gw-7", "certificates/gw-7/get", true},
		{"fail/another thing's get topic", "gw-7", "certificates/gw-8/get", false},
		{"fail/connect as another thing", "gw-8", "certificates/gw-8/get", false},
		{"fail/telemetry", "gw-7", "telemetry/gw-7/t", false},
		{"ok/own jobs topic", "gw-7", "$aws/things/gw-7/jobs/get", true},
		{"fail/another thing's jobs topic", "gw-7", "$aws/things/gw-8/jobs/get", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := labtest.Pub(t, withID(dev, tc.clientID), tc.topic, `{"clientToken":"x"}`)
			if tc.ok != (err == nil) {
				t.Fatalf("publish %s as %s: %v %s", tc.topic, tc.clientID, err, out)
			}
		})
	}
	s := labtest.StartSub(t, dev, "$aws/things/gw-8/jobs/#", "certificates/gw-7/get/+")
	if g := s.Granted(); len(g) != 2 || g[0] != 128 || g[1] != 1 {
		t.Fatalf("SUBACK %v, want [128 1]", g)
	}
	s.Stop()

	// Job execution events reach the reaper only while JOB_EXECUTION events
	// are enabled (off until UpdateEventConfigurations, as in AWS;
	// bootcertctl cloud setup enables them).
	r := l.Registry()
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	if _, err := r.CreateJob(registry.CreateJobInput{JobID: "bootcert-rotation", Targets: []string{r.ThingGroupARN("bootcert-rotation")}, Document: string(doc), TargetSelection: registry.TargetContinuous}); err != nil {
		t.Fatal(err)
	}
	fail := func(thing string) {
		t.Helper()
		if err := r.AddThingToThingGroup("bootcert-rotation", thing); err != nil {
			t.Fatal(err)
		}
		if _, _, ok, err := r.StartNextPendingJobExecution(thing, nil, nil); err != nil || !ok {
			t.Fatalf("start-next: %v %v", ok, err)
		}
		if _, _, err := r.UpdateJobExecution(registry.UpdateJobExecutionInput{ThingName: thing, JobID: "bootcert-rotation", Status: "FAILED", StatusDetails: map[string]string{"reason": "test"}}); err != nil {
			t.Fatal(err)
		}
	}
	fail("gw-7") // events disabled: the reaper hears nothing
	ctx := context.Background()
	if _, err := f.api.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"JOB_EXECUTION": {Enabled: true}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateThing("gw-9", "", nil); err != nil {
		t.Fatal(err)
	}
	fail("gw-9")
	deadline := time.After(20 * time.Second)
	for seen := 0; ; {
		select {
		case e := <-reaperEvents:
			seen++
			if e["thingArn"] != acct+"thing/gw-9" {
				t.Fatalf("reaper got an event of %v while JOB_EXECUTION events were disabled: %v", e["thingArn"], e)
			}
			if e["status"] != "FAILED" {
				continue
			}
			if e["jobId"] != "bootcert-rotation" || e["eventType"] != "JOB_EXECUTION" {
				t.Fatalf("reaper event %v", e)
			}
			// Rule actions invoke the function asynchronously, as AWS
			// does (no ordering between invocations): the FAILED event
			// may come before the QUEUED and IN_PROGRESS ones. Every
			// message the rule matched must reach the reaper, all of gw-9.
			matched := l.rules.snapshot()["bootcert_job_events"].Matched
			for int64(seen) < matched {
				select {
				case e := <-reaperEvents:
					seen++
					if e["thingArn"] != acct+"thing/gw-9" {
						t.Fatalf("reaper got an event of %v while JOB_EXECUTION events were disabled: %v", e["thingArn"], e)
					}
				case <-deadline:
					t.Fatalf("job events rule matched %d messages, the reaper got %d", matched, seen)
				}
			}
			select {
			case e := <-reaperEvents:
				t.Fatalf("the reaper got more events than the rule matched (%d): %v", matched, e)
			case <-time.After(100 * time.Millisecond):
			}
			return
		case <-deadline:
			t.Fatal("the job execution rule did not invoke ReaperFunction with FAILED")
		}
	}
}

// TestTemplateBuildsFunctions: without stand-ins, the lab builds every
// function of the real template with cloud.Build.
func TestTemplateBuildsFunctions(t *testing.T) {
	l := start(t, Config{TemplatePath: filepath.Join("..", "template.yaml")})
	for _, id := range []string{"ActivatorFunction", "VendorFunction", "ReaperFunction", "ActivationFunction", "RenewalFunction"} {
		if !l.invoker.has(id) {
			t.Errorf("function %s not built (have %v)", id, l.invoker.names())
		}
	}
	if got := l.rules.snapshot(); len(got) != 4 {
		t.Errorf("rules %v, want the template's 4", got)
	}
}

// TestConnectQuotas: beyond the connect quotas the broker refuses the
// connect, like AWS ("Connect requests per second per client ID" 1,
// "per account" configurable).
func TestConnectQuotas(t *testing.T) {
	limitsFile := filepath.Join(t.TempDir(), "limits.json")
	if err := os.WriteFile(limitsFile, []byte(`{"connectsPerSecond":2,"connectsPerClientPerSecond":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	clock := clock.NewFake(time.Now())
	f := newFixture(t, Config{LimitsPath: limitsFile, Clock: clock})
	a := f.ca.NewLeaf(t, "dev-a")
	b := f.ca.NewLeaf(t, "dev-b")
	f.registerActive(a, devicePolicy, "device")
	if _, err := f.api.AttachPolicy(context.Background(), &iot.AttachPolicyInput{PolicyName: aws.String("device"), Target: aws.String(acct + "cert/" + b.CertID)}); err == nil {
		t.Fatal("attaching to an unregistered certificate succeeded")
	}
	f.registerActive(b, "", "device")
	c := f.ca.NewLeaf(t, "dev-c")
	f.registerActive(c, "", "device")
	ca, cb, cc := f.client(a, "dev-a"), f.client(b, "dev-b"), f.client(c, "dev-c")
	clock.Advance(10 * time.Second) // fresh buckets
	steps := []struct {
		name string
		c    labtest.Client
		ok   bool
		tick time.Duration
	}{
		{"ok/first connect of dev-a", ca, true, 0},
		{"fail/second connect of dev-a in the same second", ca, false, 0},
		{"ok/dev-b", cb, true, 0},
		{"fail/dev-c beyond the account's 2 connects per second", cc, false, 0},
		{"ok/dev-c one second later", cc, true, time.Second},
		{"ok/dev-a one second later", ca, true, 0},
	}
	for _, s := range steps {
		clock.Advance(s.tick)
		out, err := labtest.Pub(t, s.c, "devices/"+s.c.ClientID+"/x", "x")
		if s.ok != (err == nil) {
			t.Fatalf("%s: err=%v %s", s.name, err, out)
		}
	}
}

// TestRepublishAndErrorAction: a republish action with a WHERE clause and
// ${topic(2)}, and a Lambda action to a function the lab does not have,
// which makes the rule's error action publish AWS's error message.
func TestRepublishAndErrorAction(t *testing.T) {
	f := newFixture(t, Config{TemplatePath: filepath.Join("testdata", "lab-republish.yaml"), NoBuild: true})
	leaf := f.ca.NewLeaf(t, "dev-5")
	f.registerActive(leaf, devicePolicy, "device")
	watch := labtest.StartSub(t, f.admin, "alerts/#", "errors/#")
	dev := f.client(leaf, "dev-5")
	for _, p := range []string{`{"temp":20}`, `{"temp":35}`} {
		if out, err := labtest.Pub(t, dev, "devices/dev-5/telemetry", p); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	m := watch.WaitFor(t, "republished alert", labtest.Topic("alerts/dev-5"))
	var got map[string]any
	if err := json.Unmarshal([]byte(m.Payload), &got); err != nil || got["temp"] != 35.0 || got["device"] != "dev-5" || got["clientId"] != "dev-5" {
		t.Fatalf("alert %s (%v)", m.Payload, err)
	}
	e := watch.WaitFor(t, "error action", labtest.Topic("errors/dev-5"))
	var em struct {
		RuleName string `json:"ruleName"`
		Topic    string `json:"topic"`
		Failures []struct {
			FailedAction, FailedResource string
		} `json:"failures"`
	}
	if err := json.Unmarshal([]byte(e.Payload), &em); err != nil || em.RuleName != "alerts" || em.Topic != "devices/dev-5/telemetry" || len(em.Failures) != 1 || em.Failures[0].FailedAction != "LambdaAction" {
		t.Fatalf("error action message %s (%v)", e.Payload, err)
	}
	for _, m := range watch.Messages() {
		if strings.Contains(m.Payload, `"temp":20`) {
			t.Fatalf("the WHERE clause let temp 20 through: %v", m)
		}
	}
}

// TestJITRNeedsActiveCAWithAutoRegistration: a CA with auto-registration
// disabled, or INACTIVE, registers nothing.
func TestJITRNeedsActiveCAWithAutoRegistration(t *testing.T) {
	f := newFixture(t, Config{})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		in   iot.UpdateCACertificateInput
	}{
		{"fail/auto-registration disabled", iot.UpdateCACertificateInput{NewAutoRegistrationStatus: types.AutoRegistrationStatusDisable}},
		{"fail/CA inactive", iot.UpdateCACertificateInput{NewStatus: types.CACertificateStatusInactive, NewAutoRegistrationStatus: types.AutoRegistrationStatusEnable}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.CertificateId = aws.String(f.caID)
			if _, err := f.api.UpdateCACertificate(ctx, &in); err != nil {
				t.Fatalf("UpdateCACertificate: %v", err)
			}
			leaf := f.ca.NewLeaf(t, "dev-x")
			if out, err := labtest.Pub(t, f.client(leaf, "dev-x"), "devices/dev-x/a", "x"); err == nil {
				t.Fatalf("connected: %s", out)
			}
			if _, err := f.api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(leaf.CertID)}); err == nil {
				t.Fatal("certificate registered although JITR is off for its CA")
			}
		})
	}
}
