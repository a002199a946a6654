package cloud_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/manifest"
)

// logBuffer collects the lab's log lines (the functions' audit lines).
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLabLogged is startLab with the lab's log (functions included)
// captured.
func startLabLogged(t *testing.T, env map[string]string) (*labRig, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg := lab.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		TemplatePath: "template.yaml", Env: env, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	l, err := lab.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	ac := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	r := &labRig{t: t, lab: l,
		iot: iot.NewFromConfig(ac, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) }),
		ca:  testpki.NewCA(t, "bootcert factory CA", time.Now()),
	}
	r.s3 = s3.NewFromConfig(ac, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(l.Endpoints().S3)
		o.UsePathStyle = true
	})
	return r, logs
}

// functionInvocations reads a function's finished invocations from GET
// /lab/state (counted after the function returned, its replies published).
func (r *labRig) functionInvocations(fn string) int64 {
	r.t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.lab.ServerCAPEM())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 20 * time.Second}
	resp, err := hc.Get(r.lab.Endpoints().API + "/lab/state?pem=false")
	if err != nil {
		r.t.Fatalf("GET /lab/state: %v", err)
	}
	defer resp.Body.Close()
	var st struct {
		Functions map[string]struct{ Invocations int64 } `json:"functions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		r.t.Fatalf("GET /lab/state: %v", err)
	}
	return st.Functions[fn].Invocations
}

// TestLabIdentityOnlyFromBroker: a device that adds case variants of the
// rule's identity fields (thingname, clientid, Principal) to its own get
// request is refused: the vendor drops the event with an audit line, issues
// nothing and publishes nothing, neither on the other device's topics nor on
// its own (issue 10, item 8). Before the fix encoding/json let "thingname"
// override the rule's thingName and the vendor published a rejection on the
// victim's reply topic.
func TestLabIdentityOnlyFromBroker(t *testing.T) {
	r, logs := startLabLogged(t, nil)
	now := time.Now()
	a0 := r.ca.Issue(t, "gw-attacker", now)
	v0 := r.ca.Issue(t, "gw-victim", now)
	r.setup([]manifest.Entry{{DeviceID: a0.ID}, {DeviceID: v0.ID}})
	attacker, victim := r.admit(a0), r.admit(v0)
	vc := victim.conn(victim.DER, victim.Key)
	ac := attacker.conn(attacker.DER, attacker.Key)
	attacker.startJob(t, ac)
	certsBefore := r.certificateCount()

	for _, payload := range []map[string]any{
		{"jobId": "bootcert-rotation", "clientToken": "t1", "csr": "", "thingname": victim.ID, "clientid": victim.ID},
		{"jobId": "bootcert-rotation", "clientToken": "t2", "csr": "", "ThingName": victim.ID, "ClientID": victim.ID, "PRINCIPAL": victim.CertID},
		{"jobId": "bootcert-rotation", "clientToken": "t3", "csr": "", "Operation": "ack"},
	} {
		before := r.functionInvocations("VendorFunction")
		ac.publish(t, "certificates/"+attacker.ID+"/get", payload)
		waitFor(t, "the vendor to handle request "+payload["clientToken"].(string), func() bool {
			return r.functionInvocations("VendorFunction") > before
		})
	}
	// Nothing was published on either device's reply topics.
	for _, c := range []*conn{vc, ac} {
		c.mu.Lock()
		got := len(c.msgs)
		var topics []string
		for tp := range c.msgs {
			topics = append(topics, tp)
		}
		c.mu.Unlock()
		if got != 0 {
			t.Errorf("replies published after requests with case-variant identity keys: %v", topics)
		}
	}
	if n := r.certificateCount(); n != certsBefore {
		t.Errorf("%d certificates after the refused requests, %d before", n, certsBefore)
	}
	out := logs.String()
	if c := strings.Count(out, "request dropped"); c != 3 || !strings.Contains(out, `key \"clientid\"`) || !strings.Contains(out, "topicThing="+attacker.ID) || !strings.Contains(out, "identityKeyCollision=true") {
		t.Errorf("want 3 audit lines naming the colliding key, got %d:\n%s", c, grepLines(out, "request dropped"))
	}
	// The same device's well-formed request is still answered on its own topic.
	if _, j := get(t, ac, attacker.ID, string(testpki.CSR(t, attacker.ID, newKey(t)))); j.Code != "" {
		t.Errorf("well-formed get after the refused ones rejected: %+v", j)
	}
	vc.mu.Lock()
	defer vc.mu.Unlock()
	if len(vc.msgs) != 0 {
		t.Errorf("victim got messages: %d", len(vc.msgs))
	}
}

func (r *labRig) certificateCount() int {
	r.t.Helper()
	out, err := r.iot.ListCertificates(context.Background(), &iot.ListCertificatesInput{})
	if err != nil {
		r.t.Fatalf("ListCertificates: %v", err)
	}
	return len(out.Certificates)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
