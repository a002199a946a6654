package broker

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/labtest"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/protocol"
)

// These tests run the broker with hand-written registry, authorizer and jobs
// fakes (narrow unit tests); the lab's end-to-end tests (package lab) run
// it with the real registry, policy engine and rules.

type fakeRegistry struct {
	mu     sync.Mutex
	status map[string]string
	cas    map[string]*x509.Certificate // id -> CA
	auto   map[string]bool
}

func (r *fakeRegistry) CertificateStatus(id string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.status[id]
	return s, ok
}

func (r *fakeRegistry) FindCA(chain []*x509.Certificate) (string, bool, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, ca := range r.cas {
		if chain[0].CheckSignatureFrom(ca) == nil {
			return id, r.auto[id], true
		}
	}
	return "", false, false
}

func (r *fakeRegistry) RegisterPendingCertificate(der []byte, caID string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := protocol.CertificateID(der)
	if _, ok := r.status[id]; ok {
		return false, nil
	}
	r.status[id] = StatusPendingActivation
	return true, nil
}

func (r *fakeRegistry) set(id, status string) {
	r.mu.Lock()
	r.status[id] = status
	r.mu.Unlock()
}

// fakeAuthorizer: "admin" may do anything; a device (CN = client ID) may
// connect as itself, publish, subscribe and receive under devices/{cn}/ and
// its jobs topics, subscribe to shared/# and receive shared/{cn}/*.
type fakeAuthorizer struct{}

func (fakeAuthorizer) Authorize(p Principal, a Action, res string) Decision {
	arn := "arn:aws:iot:us-east-1:123456789012:"
	allow := Decision{Allowed: true, Policy: "fake", Statement: 0}
	deny := Decision{Allowed: false, Statement: -1, Reason: "no matching allow"}
	if p.CommonName == "admin" {
		return allow
	}
	cn := p.CommonName
	switch a {
	case ActionConnect:
		if res == arn+"client/"+cn || res == arn+"client/"+cn+"-pub" {
			return allow
		}
	case ActionPublish, ActionReceive:
		if strings.HasPrefix(res, arn+"topic/devices/"+cn+"/") || strings.HasPrefix(res, arn+"topic/$aws/things/"+cn+"/jobs/") {
			return allow
		}
		if a == ActionReceive && strings.HasPrefix(res, arn+"topic/shared/"+cn+"/") {
			return allow
		}
	case ActionSubscribe:
		if strings.HasPrefix(res, arn+"topicfilter/devices/"+cn+"/") || strings.HasPrefix(res, arn+"topicfilter/$aws/things/"+cn+"/jobs/") || res == arn+"topicfilter/shared/#" {
			return allow
		}
	}
	return deny
}

type fakeJobs struct {
	mu   sync.Mutex
	exec *protocol.JobExecution
}

func (j *fakeJobs) Pending(thing string) ([]protocol.JobExecutionSummary, []protocol.JobExecutionSummary, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.exec == nil || j.exec.ThingName != thing || j.exec.Status.Terminal() {
		return nil, nil, nil
	}
	s := protocol.JobExecutionSummary{JobID: j.exec.JobID, QueuedAt: j.exec.QueuedAt, VersionNumber: j.exec.VersionNumber, ExecutionNumber: 1}
	if j.exec.Status == "IN_PROGRESS" {
		return []protocol.JobExecutionSummary{s}, nil, nil
	}
	return nil, []protocol.JobExecutionSummary{s}, nil
}

func (j *fakeJobs) StartNext(thing string, req protocol.StartNextRequest) (*protocol.JobExecution, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.exec == nil || j.exec.ThingName != thing || j.exec.Status != "QUEUED" {
		return nil, nil
	}
	j.exec.Status = "IN_PROGRESS"
	j.exec.StatusDetails = req.StatusDetails
	j.exec.VersionNumber++
	e := *j.exec
	return &e, nil
}

func (j *fakeJobs) Describe(thing, jobID string, n *int64, doc bool) (*protocol.JobExecution, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.exec == nil || (jobID != "$next" && jobID != j.exec.JobID) {
		return nil, &JobError{Code: protocol.JobsResourceNotFound, Message: "no such job"}
	}
	e := *j.exec
	return &e, nil
}

func (j *fakeJobs) Update(thing, jobID string, req protocol.UpdateRequest) (*protocol.JobExecution, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.exec == nil || jobID != j.exec.JobID {
		return nil, &JobError{Code: protocol.JobsResourceNotFound, Message: "no such job"}
	}
	st := &protocol.ExecutionState{Status: j.exec.Status, VersionNumber: j.exec.VersionNumber}
	if req.ExpectedVersion != nil && *req.ExpectedVersion != j.exec.VersionNumber {
		return nil, &JobError{Code: protocol.JobsVersionMismatch, Message: "expected version mismatch", State: st}
	}
	if j.exec.Status.Terminal() {
		return nil, &JobError{Code: protocol.JobsInvalidStateTransition, Message: "terminal", State: st}
	}
	j.exec.Status = req.Status
	j.exec.VersionNumber++
	e := *j.exec
	return &e, nil
}

// countLimiter allows the first n publishes.
type countLimiter struct {
	mu sync.Mutex
	n  int
}

func (c *countLimiter) AllowPublish(string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n--
	return c.n >= 0
}

type env struct {
	t      *testing.T
	srv    *Server
	reg    *fakeRegistry
	ca     *testca.CA
	dir    string
	caFile string
	jobs   *fakeJobs
	msgs   chan Message
}

func newEnv(t *testing.T, opts ...func(*Config)) *env {
	t.Helper()
	labtest.RequireMosquitto(t)
	dir := t.TempDir()
	serverCA := testca.New(t, "lab server CA")
	srvLeaf := serverCA.NewLeaf(t, "localhost", testca.Server("localhost", "127.0.0.1"))
	caFile := filepath.Join(dir, "server-ca.pem")
	if err := os.WriteFile(caFile, serverCA.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(srvLeaf.CertPEM, srvLeaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	deviceCA := testca.New(t, "factory CA")
	reg := &fakeRegistry{status: map[string]string{}, cas: map[string]*x509.Certificate{"ca1": deviceCA.Cert}, auto: map[string]bool{"ca1": true}}
	e := &env{t: t, reg: reg, ca: deviceCA, dir: dir, caFile: caFile, jobs: &fakeJobs{}, msgs: make(chan Message, 100)}
	cfg := Config{
		Addr: "127.0.0.1:0", ServerCert: cert, Registry: reg, Authorizer: fakeAuthorizer{}, Jobs: e.jobs,
		OnMessage: func(m Message) {
			select {
			case e.msgs <- m:
			default:
			}
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	e.srv, err = Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.srv.Close() })
	return e
}

// device issues an ACTIVE certificate for cn and returns a client for it.
func (e *env) device(cn string, status string) (labtest.Client, *testca.Leaf) {
	leaf := e.ca.NewLeaf(e.t, cn)
	if status != "" {
		e.reg.set(leaf.CertID, status)
	}
	certFile, keyFile := leaf.Files(e.t, e.dir, cn)
	return labtest.Client{Addr: e.srv.Addr(), CAFile: e.caFile, CertFile: certFile, KeyFile: keyFile, ClientID: cn}, leaf
}

func TestJITR(t *testing.T) {
	e := newEnv(t)
	admin, _ := e.device("admin", StatusActive)
	sub := labtest.StartSub(t, admin, "$aws/events/certificates/registered/#")

	dev, leaf := e.device("dev-1", "")
	if out, err := labtest.Pub(t, dev, "devices/dev-1/hello", "hi"); err == nil {
		t.Fatalf("first connect with an unknown certificate succeeded: %s", out)
	}
	if st, _ := e.reg.CertificateStatus(leaf.CertID); st != StatusPendingActivation {
		t.Fatalf("status after JITR = %q, want PENDING_ACTIVATION", st)
	}
	m := sub.WaitFor(t, "registered event", labtest.Topic("$aws/events/certificates/registered/ca1"))
	var ev map[string]any
	if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil {
		t.Fatal(err)
	}
	if ev["certificateId"] != leaf.CertID || ev["caCertificateId"] != "ca1" || ev["certificateStatus"] != "PENDING_ACTIVATION" || ev["awsAccountId"] != "123456789012" {
		t.Fatalf("registered event = %v", ev)
	}
	// Still pending: refused again, no second event.
	if _, err := labtest.Pub(t, dev, "devices/dev-1/hello", "hi"); err == nil {
		t.Fatal("PENDING_ACTIVATION certificate connected")
	}
	e.reg.set(leaf.CertID, StatusActive)
	if out, err := labtest.Pub(t, dev, "devices/dev-1/hello", "hi"); err != nil {
		t.Fatalf("ACTIVE certificate refused: %v %s", err, out)
	}
	if n := len(sub.Messages()); n != 1 {
		t.Fatalf("%d registered events, want 1:\n%s", n, labtest.Describe(sub.Messages()))
	}
}

func TestUnknownCA(t *testing.T) {
	e := newEnv(t)
	other := testca.New(t, "someone else")
	leaf := other.NewLeaf(t, "dev-x")
	c, k := leaf.Files(t, e.dir, "dev-x")
	out, err := labtest.Pub(t, labtest.Client{Addr: e.srv.Addr(), CAFile: e.caFile, CertFile: c, KeyFile: k, ClientID: "dev-x"}, "devices/dev-x/a", "x")
	if err == nil {
		t.Fatalf("certificate from an unregistered CA connected: %s", out)
	}
	if _, ok := e.reg.CertificateStatus(leaf.CertID); ok {
		t.Fatal("certificate from an unregistered CA was registered")
	}
	// No client certificate at all.
	if _, err := labtest.Pub(t, labtest.Client{Addr: e.srv.Addr(), CAFile: e.caFile, ClientID: "anon"}, "a", "x"); err == nil {
		t.Fatal("connect without a client certificate succeeded")
	}
}

func TestPolicyEnforcement(t *testing.T) {
	e := newEnv(t)
	admin, _ := e.device("admin", StatusActive)
	all := labtest.StartSub(t, admin, "devices/#")
	dev, _ := e.device("dev-1", StatusActive)

	t.Run("ok/publish own topic", func(t *testing.T) {
		if out, err := labtest.Pub(t, dev, "devices/dev-1/telemetry", "one"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		all.WaitFor(t, "own message", labtest.Contains("devices/dev-1/telemetry", "one"))
	})
	t.Run("fail/publish other device's topic disconnects", func(t *testing.T) {
		if out, err := labtest.Pub(t, dev, "devices/dev-2/telemetry", "two"); err == nil {
			t.Fatalf("publish to another device's topic succeeded: %s", out)
		}
		// A later allowed message arrives and the denied one never did.
		if out, err := labtest.Pub(t, dev, "devices/dev-1/telemetry", "three"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		all.WaitFor(t, "later message", labtest.Contains("devices/dev-1/telemetry", "three"))
		for _, m := range all.Messages() {
			if m.Topic == "devices/dev-2/telemetry" {
				t.Fatalf("denied publish was delivered: %v", m)
			}
		}
	})
	t.Run("fail/connect as another client id", func(t *testing.T) {
		other := dev
		other.ClientID = "dev-2"
		if _, err := labtest.Pub(t, other, "devices/dev-1/telemetry", "x"); err == nil {
			t.Fatal("connect with a client ID the policy does not allow succeeded")
		}
	})
	t.Run("fail/subscribe denied gets SUBACK 0x80", func(t *testing.T) {
		s := labtest.StartSub(t, dev, "devices/dev-2/#", "devices/dev-1/#")
		if g := s.Granted(); len(g) != 2 || g[0] != 0x80 || g[1] != 1 {
			t.Fatalf("SUBACK codes = %v, want [128 1]; output:\n%s", g, s.Output())
		}
	})
	t.Run("fail/receive denied is not delivered", func(t *testing.T) {
		s := labtest.StartSub(t, dev, "shared/#")
		if g := s.Granted(); len(g) != 1 || g[0] != 1 {
			t.Fatalf("SUBACK codes = %v; output:\n%s", g, s.Output())
		}
		if out, err := labtest.Pub(t, admin, "shared/dev-2/x", "not-for-you"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if out, err := labtest.Pub(t, admin, "shared/dev-1/x", "for-you"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		s.WaitFor(t, "allowed message", labtest.Topic("shared/dev-1/x"))
		for _, m := range s.Messages() {
			if m.Topic == "shared/dev-2/x" {
				t.Fatalf("message without iot:Receive delivered: %v", m)
			}
		}
	})
}

func TestInactiveEndsSession(t *testing.T) {
	e := newEnv(t)
	dev, leaf := e.device("dev-1", StatusActive)
	s := labtest.StartSub(t, dev, "devices/dev-1/#")
	if s.Exited() {
		t.Fatalf("subscriber ended early:\n%s", s.Output())
	}
	if n := len(e.srv.Stats().Clients); n != 1 {
		t.Fatalf("%d clients connected, want 1", n)
	}
	e.reg.set(leaf.CertID, StatusInactive)
	e.srv.CertificateStatusChanged(leaf.CertID, StatusInactive)
	// mosquitto_sub reconnects by itself: the session must be gone and
	// every reconnect refused.
	for deadline := time.Now().Add(20 * time.Second); len(e.srv.Stats().Clients) != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("session of an INACTIVE certificate still open:\n%s", s.Output())
		}
	}
	if _, err := labtest.Pub(t, dev, "devices/dev-1/x", "x"); err == nil {
		t.Fatal("INACTIVE certificate connected")
	}
	if st := e.srv.Stats(); len(st.Clients) != 0 || st.Refused == 0 {
		t.Fatalf("after INACTIVE: %+v", st)
	}
	if n := strings.Count(s.Output(), "received CONNACK"); n != 1 {
		t.Fatalf("mosquitto_sub got %d CONNACKs, want only the first:\n%s", n, s.Output())
	}
}

func TestJobsTopics(t *testing.T) {
	e := newEnv(t)
	dev, _ := e.device("dev-1", StatusActive)
	e.jobs.exec = &protocol.JobExecution{JobID: "job-1", ThingName: "dev-1", Status: "QUEUED", JobDocument: json.RawMessage(`{"operation":"x"}`), VersionNumber: 1, ExecutionNumber: 1}
	s := labtest.StartSub(t, dev, "$aws/things/dev-1/jobs/#")
	base := "$aws/things/dev-1/jobs/"

	publisher := dev
	publisher.ClientID = "dev-1-pub" // the subscriber keeps "dev-1"
	pub := func(topic, msg string) {
		t.Helper()
		if out, err := labtest.Pub(t, publisher, base+topic, msg); err != nil {
			t.Fatalf("publish %s: %v: %s", topic, err, out)
		}
	}
	pub("get", `{"clientToken":"t1"}`)
	m := s.WaitFor(t, "get/accepted", labtest.Contains(base+"get/accepted", `"t1"`))
	if !strings.Contains(m.Payload, `"queuedJobs":[{"jobId":"job-1"`) {
		t.Fatalf("get/accepted = %s", m.Payload)
	}
	pub("start-next", `{"clientToken":"t2","statusDetails":{"progress":"started"}}`)
	m = s.WaitFor(t, "start-next/accepted", labtest.Contains(base+"start-next/accepted", `"t2"`))
	var sn struct {
		Execution protocol.JobExecution `json:"execution"`
	}
	if err := json.Unmarshal([]byte(m.Payload), &sn); err != nil || sn.Execution.Status != "IN_PROGRESS" || string(sn.Execution.JobDocument) != `{"operation":"x"}` {
		t.Fatalf("start-next/accepted = %s (%v)", m.Payload, err)
	}
	pub("job-1/update", `{"clientToken":"t3","status":"SUCCEEDED","expectedVersion":1}`)
	m = s.WaitFor(t, "update/rejected", labtest.Contains(base+"job-1/update/rejected", `"t3"`))
	if !strings.Contains(m.Payload, `"code":"VersionMismatch"`) || !strings.Contains(m.Payload, `"executionState"`) {
		t.Fatalf("update/rejected = %s", m.Payload)
	}
	pub("job-1/update", `{"clientToken":"t4","status":"SUCCEEDED","expectedVersion":2,"includeJobExecutionState":true}`)
	m = s.WaitFor(t, "update/accepted", labtest.Contains(base+"job-1/update/accepted", `"t4"`))
	if !strings.Contains(m.Payload, `"executionState":{"status":"SUCCEEDED"`) {
		t.Fatalf("update/accepted = %s", m.Payload)
	}
	pub("job-1/update", `{"clientToken":"t5","status":`)
	m = s.WaitFor(t, "invalid json rejection", labtest.Contains(base+"job-1/update/rejected", `InvalidJson`))
	pub("job-2/get", `{"clientToken":"t6"}`)
	s.WaitFor(t, "not found", labtest.Contains(base+"job-2/get/rejected", `"ResourceNotFound"`))

	e.srv.JobExecutionChanged(JobExecutionEvent{ThingName: "dev-1", JobID: "job-1", Status: "SUCCEEDED", OldStatus: "IN_PROGRESS", Operation: "update"})
	s.WaitFor(t, "notify-next", labtest.Topic(base+"notify-next"))
	s.WaitFor(t, "notify", labtest.Topic(base+"notify"))
}

func TestRuleHookSeesPrincipal(t *testing.T) {
	e := newEnv(t)
	dev, leaf := e.device("dev-1", StatusActive)
	if out, err := labtest.Pub(t, dev, "devices/dev-1/get", `{"a":1}`); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-e.msgs:
			if m.Topic != "devices/dev-1/get" {
				continue
			}
			if m.Principal != leaf.CertID || m.ClientID != "dev-1" || string(m.Payload) != `{"a":1}` {
				t.Fatalf("message = %+v", m)
			}
			return
		case <-deadline:
			t.Fatal("OnMessage did not see the publish")
		}
	}
}

func TestParseJobsTopic(t *testing.T) {
	for _, tc := range []struct {
		name, topic, thing, op string
		ok                     bool
	}{
		{"ok/get", "$aws/things/t1/jobs/get", "t1", "get", true},
		{"ok/start-next", "$aws/things/t1/jobs/start-next", "t1", "start-next", true},
		{"ok/update", "$aws/things/t1/jobs/j1/update", "t1", "j1/update", true},
		{"fail/accepted", "$aws/things/t1/jobs/get/accepted", "", "", false},
		{"fail/notify", "$aws/things/t1/jobs/notify-next", "", "", false},
		{"fail/other", "$aws/things/t1/shadow/get", "", "", false},
		{"fail/plain", "devices/t1/jobs/get", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			thing, op, ok := parseJobsTopic(tc.topic)
			if thing != tc.thing || op != tc.op || ok != tc.ok {
				t.Fatalf("parseJobsTopic(%q) = %q %q %v", tc.topic, thing, op, ok)
			}
		})
	}
}

// FuzzJobsRequest drives the Jobs API router with arbitrary topics and
// payloads (outside input from devices): it must answer, never panic.
func FuzzJobsRequest(f *testing.F) {
	for _, s := range []string{`{}`, `{"clientToken":"x","status":"SUCCEEDED","expectedVersion":3}`, `{"statusDetails":{"a":"b"}}`, `{"status":1}`, `[`, ``, `{"executionNumber":-1,"includeJobDocument":"yes"}`} {
		f.Add("job-1/update", []byte(s))
		f.Add("start-next", []byte(s))
		f.Add("$next/get", []byte(s))
		f.Add("get", []byte(s))
	}
	ca := testca.New(f, "fuzz CA")
	leaf := ca.NewLeaf(f, "localhost", testca.Server("127.0.0.1"))
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		f.Fatal(err)
	}
	jobs := &fakeJobs{exec: &protocol.JobExecution{JobID: "job-1", ThingName: "t", Status: "QUEUED", VersionNumber: 1}}
	srv, err := Start(Config{Addr: "127.0.0.1:0", ServerCert: cert, Registry: &fakeRegistry{status: map[string]string{}}, Authorizer: fakeAuthorizer{}, Jobs: jobs})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, op string, payload []byte) {
		if thing, o, ok := parseJobsTopic("$aws/things/t/jobs/" + op); ok {
			srv.handleJobs(thing, o, payload)
		}
	})
}

// TestPublishThrottled: beyond the publish quota a message is dropped (no
// PUBACK, so mosquitto_pub -q 1 fails) but the connection stays open.
func TestPublishThrottled(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Publishes = &countLimiter{n: 2} })
	admin, _ := e.device("admin", StatusActive)
	s := labtest.StartSub(t, admin, "devices/#")
	dev, _ := e.device("dev-1", StatusActive)
	// admin's subscription used no publish; dev-1 publishes twice within quota.
	for _, p := range []string{"one", "two"} {
		if out, err := labtest.Pub(t, dev, "devices/dev-1/t", p); err != nil {
			t.Fatalf("publish %s: %v %s", p, err, out)
		}
	}
	s.WaitFor(t, "second message", labtest.Contains("devices/dev-1/t", "two"))
	out, err := labtestPubTimeout(t, dev, "devices/dev-1/t", "three")
	if err == nil {
		t.Fatalf("throttled QoS 1 publish was acknowledged: %s", out)
	}
	if st := e.srv.Stats(); st.Throttled != 1 {
		t.Fatalf("throttled %d, want 1", st.Throttled)
	}
	for _, m := range s.Messages() {
		if m.Payload == "three" {
			t.Fatal("throttled message delivered")
		}
	}
}

// labtestPubTimeout is mosquitto_pub -q 1 that gives up waiting for the
// PUBACK after 3s (a correct lab never sends it; a wrong one sends it at once).
func labtestPubTimeout(t *testing.T, c labtest.Client, topic, msg string) (string, error) {
	t.Helper()
	return labtest.PubArgs(t, c, 3*time.Second, "-t", topic, "-m", msg, "-q", "1")
}

func TestLifecycleEvents(t *testing.T) {
	e := newEnv(t)
	admin, _ := e.device("admin", StatusActive)
	s := labtest.StartSub(t, admin, "$aws/events/presence/+/dev-1")
	dev, leaf := e.device("dev-1", StatusActive)
	if out, err := labtest.Pub(t, dev, "devices/dev-1/x", "x"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	c := s.WaitFor(t, "connected", labtest.Topic("$aws/events/presence/connected/dev-1"))
	d := s.WaitFor(t, "disconnected", labtest.Contains("$aws/events/presence/disconnected/dev-1", "CLIENT_INITIATED_DISCONNECT"))
	var ev map[string]any
	if err := json.Unmarshal([]byte(c.Payload), &ev); err != nil || ev["principalIdentifier"] != leaf.CertID || ev["eventType"] != "connected" || ev["ipAddress"] != "127.0.0.1" {
		t.Fatalf("connected event %s (%v)", c.Payload, err)
	}
	if !strings.Contains(d.Payload, `"clientInitiatedDisconnect":true`) {
		t.Fatalf("disconnected event %s", d.Payload)
	}
	if _, err := labtest.Pub(t, dev, "devices/dev-2/x", "x"); err == nil {
		t.Fatal("denied publish succeeded")
	}
	s.WaitFor(t, "AUTH_ERROR", labtest.Contains("$aws/events/presence/disconnected/dev-1", `"disconnectReason":"AUTH_ERROR"`))
}

// TestDataPlaneOnMQTTPort: HTTPS requests on the MQTT port reach
// Config.DataPlane (like AWS's data endpoint), MQTT still works beside them,
// and without a DataPlane they are closed.
func TestDataPlaneOnMQTTPort(t *testing.T) {
	for _, tc := range []struct {
		name string
		dp   http.Handler
		ok   bool
	}{
		{"ok/with data plane", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("published " + r.URL.Path)) }), true},
		{"fail/without data plane", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.DataPlane = tc.dp })
			pool := x509.NewCertPool()
			ca, _ := os.ReadFile(e.caFile)
			pool.AppendCertsFromPEM(ca)
			hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 20 * time.Second}
			resp, err := hc.Post("https://"+e.srv.Addr()+"/topics/a%2Fb?qos=1", "application/json", strings.NewReader("{}"))
			if !tc.ok {
				if err == nil {
					resp.Body.Close()
					t.Fatal("HTTPS on the MQTT port answered without a data plane")
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != "published /topics/a/b" {
					t.Fatalf("got %q", b)
				}
			}
			dev, _ := e.device("dev-1", StatusActive)
			if out, err := labtest.Pub(t, dev, "devices/dev-1/x", "x"); err != nil {
				t.Fatalf("MQTT beside HTTPS: %v %s", err, out)
			}
		})
	}
}

// TestWillNeedsPublishPermission: a will on a topic the policies refuse is
// dropped at CONNECT; an allowed one is delivered when the client dies.
func TestWillNeedsPublishPermission(t *testing.T) {
	e := newEnv(t)
	admin, _ := e.device("admin", StatusActive)
	watch := labtest.StartSub(t, admin, "devices/#")
	dev, _ := e.device("dev-1", StatusActive)
	denied := labtest.StartSubArgs(t, dev, []string{"--will-topic", "devices/dev-2/will", "--will-payload", "spoofed", "--will-qos", "1"}, "devices/dev-1/in")
	denied.Kill()
	allowed := labtest.StartSubArgs(t, withClientID(dev, "dev-1"), []string{"--will-topic", "devices/dev-1/will", "--will-payload", "gone", "--will-qos", "1"}, "devices/dev-1/in")
	allowed.Kill()
	watch.WaitFor(t, "allowed will", labtest.Contains("devices/dev-1/will", "gone"))
	for _, m := range watch.Messages() {
		if m.Topic == "devices/dev-2/will" {
			t.Fatalf("will on a refused topic delivered: %v", m)
		}
	}
}

func withClientID(c labtest.Client, id string) labtest.Client {
	c.ClientID = id
	return c
}
