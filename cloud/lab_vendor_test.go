package cloud_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// TestLabConcurrentIdenticalGets: identical get requests handled at the
// same time (the rule invokes the vendor on parallel workers, as Lambda may
// run parallel instances) issue one certificate; every reply names it, and
// the ack over it succeeds.
func TestLabConcurrentIdenticalGets(t *testing.T) {
	const n = 8
	r := startLab(t, nil, "")
	d0 := r.ca.Issue(t, "gw-race", time.Now())
	r.setup([]manifest.Entry{{DeviceID: d0.ID}})
	d := r.admit(d0)
	c, err := r.connect(d.DER, d.Key, d.ID)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	var mu sync.Mutex
	var replies []string
	tok := c.c.Subscribe("certificates/"+d.ID+"/get/+", 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		replies = append(replies, m.Topic()+" "+string(m.Payload()))
		mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	d.startJob(t, c)
	key := newKey(t)
	req, _ := json.Marshal(protocol.GetRequest{JobID: "bootcert-rotation", ClientToken: "tok", CSR: string(testpki.CSR(t, d.ID, key))})
	var toks []paho.Token
	for range n {
		toks = append(toks, c.c.Publish("certificates/"+d.ID+"/get", 1, false, req))
	}
	for _, tk := range toks {
		tk.WaitTimeout(10 * time.Second)
	}
	waitFor(t, "n replies", func() bool { mu.Lock(); defer mu.Unlock(); return len(replies) >= n })
	var certID string
	for i, rep := range replies {
		topic, payload, _ := strings.Cut(rep, " ")
		var a protocol.GetAccepted
		if !strings.HasSuffix(topic, "/accepted") || json.Unmarshal([]byte(payload), &a) != nil {
			t.Fatalf("reply %d: %s", i, topic)
		}
		if i == 0 {
			certID = a.CertificateID
		} else if a.CertificateID != certID {
			t.Errorf("reply %d names %s, reply 0 %s", i, a.CertificateID, certID)
		}
	}
	// One certificate besides the bootstrap one, in the registry and on the thing.
	out, err := r.iot.ListCertificates(context.Background(), &iot.ListCertificatesInput{})
	if err != nil {
		t.Fatalf("ListCertificates: %v", err)
	}
	if len(out.Certificates) != 2 {
		var ids []string
		for _, c := range out.Certificates {
			ids = append(ids, aws.ToString(c.CertificateId)[:8]+" "+string(c.Status))
		}
		t.Errorf("%d certificates in the registry (%v), want the bootstrap and one issued", len(out.Certificates), ids)
	}
	ps, err := r.iot.ListThingPrincipals(context.Background(), &iot.ListThingPrincipalsInput{ThingName: aws.String(d.ID)})
	if err != nil || len(ps.Principals) != 2 {
		t.Errorf("thing principals %v (%v), want the bootstrap and the issued certificate", ps, err)
	}
	// The device keeps the first reply and commits it.
	var first protocol.GetAccepted
	_, payload, _ := strings.Cut(replies[0], " ")
	json.Unmarshal([]byte(payload), &first)
	c.c.Disconnect(50)
	nc := d.conn(leafDER(t, first.CertificatePEM), key)
	if a, j := ack(t, nc, d.ID, first.CertificateID); a.CertificateID != first.CertificateID {
		t.Fatalf("ack of the first reply's certificate: %+v", j)
	}
}

// TestLabSetupEnablesJobEvents: job execution events reach the reaper's
// rule only after `bootcertctl cloud setup` (setup.Run) enabled them, as in
// AWS (off by default).
func TestLabSetupEnablesJobEvents(t *testing.T) {
	r := startLab(t, nil, "")
	ctx := context.Background()
	jobEvents := func() bool {
		out, err := r.iot.DescribeEventConfigurations(ctx, &iot.DescribeEventConfigurationsInput{})
		if err != nil {
			t.Fatalf("DescribeEventConfigurations: %v", err)
		}
		return out.EventConfigurations["JOB_EXECUTION"].Enabled
	}
	if jobEvents() {
		t.Fatal("JOB_EXECUTION events enabled before setup")
	}
	d0 := r.ca.Issue(t, "gw-events", time.Now())
	r.setup([]manifest.Entry{{DeviceID: d0.ID}})
	if !jobEvents() {
		t.Fatal("setup did not enable JOB_EXECUTION events")
	}
	// The device's execution is queued after setup: its event reaches
	// the rule that invokes the reaper.
	r.admit(d0)
	waitFor(t, "the job events rule to match", func() bool { return r.ruleMatched("bootcert_job_events") > 0 })
}

// ruleMatched reads a rule's match counter from GET /lab/state.
func (r *labRig) ruleMatched(rule string) int64 {
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
		Rules map[string]struct{ Matched int64 } `json:"rules"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		r.t.Fatalf("GET /lab/state: %v", err)
	}
	return st.Rules[rule].Matched
}
