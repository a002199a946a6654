package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/protocol"
)

// docWithGet is the default job document with another get topic.
func docWithGet(publish string) string {
	d := protocol.DefaultJobDocument()
	d.Get = protocol.TopicPair{Publish: publish, Subscribe: publish + "/+"}
	b, _ := json.Marshal(d)
	return string(b)
}

// queueValidJob replaces the continuous rotation job with one carrying the
// default document (CancelJob on the old one, so that it does not run
// again) and puts the thing back in the rotation group: the rotation after
// a failed or cancelled one.
func (c *cloudEnv) queueValidJob(thing, jobID string) {
	c.t.Helper()
	ctx := context.Background()
	// the reaper takes a thing whose rotation ended before the commit out
	// of the rotation group (asynchronously): re-add it after that
	if !testkit.Poll(30*time.Second, func() bool {
		out, err := c.api.ListThingGroupsForThing(ctx, &iot.ListThingGroupsForThingInput{ThingName: aws.String(thing)})
		if err != nil {
			return false
		}
		for _, g := range out.ThingGroups {
			if aws.ToString(g.GroupName) == "bootcert-rotation" {
				return false
			}
		}
		return true
	}) {
		c.t.Fatalf("%s still in the rotation group after its rotation ended", thing)
	}
	if _, err := c.api.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("bootcert-rotation")}); err != nil {
		c.t.Fatalf("CancelJob: %v", err)
	}
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	if _, err := c.api.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String(jobID), Document: aws.String(string(doc)),
		Targets: []string{acct + "thinggroup/bootcert-rotation"}, TargetSelection: types.TargetSelectionContinuous}); err != nil {
		c.t.Fatalf("CreateJob: %v", err)
	}
	// a new continuous job runs once for a thing added to its group (no
	// snapshot job as well: it would find the thing out of the group after
	// this one's commit and fail NO_ROTATION_PENDING)
	if _, err := c.api.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingName: aws.String(thing), ThingGroupName: aws.String("bootcert-rotation")}); err != nil {
		c.t.Fatalf("AddThingToThingGroup: %v", err)
	}
	c.mu.Lock()
	if c.jobs == nil {
		c.jobs = map[string]string{}
	}
	c.jobs[thing] = jobID
	c.mu.Unlock()
}

// connects is the lab broker's connect count (accepted and refused).
func (c *cloudEnv) connects() int64 {
	st := c.lab.Broker().Stats()
	return st.Connects + st.Refused
}

// TestWedgingJob (issue 10): a rotation job whose document names a get
// topic the device's policy does not grant (the lab's policies are the
// template's: subscribe certificates/{thing}/get/*, publish exactly
// certificates/{thing}/get and .../ack) or one outside
// certificates/{thingName}/ ends FAILED with a reason within one reply
// timeout of the refusal, with fewer than 10 connects, the credentials
// unchanged; the next valid rotation succeeds.
func TestWedgingJob(t *testing.T) {
	const reply = 30 * time.Second
	for i, tc := range []struct {
		name, doc, reason string
	}{
		// SUBACK 0x80 for certificates/{thing}/get2/+
		{"subscribe refused", docWithGet("certificates/{thingName}/get2"), "SUBACK 0x80"},
		// subscribe certificates/{thing}/get/x/+ granted (get/*), the
		// publish to certificates/{thing}/get/x not: the lab, like AWS,
		// disconnects the client
		{"publish refused", docWithGet("certificates/{thingName}/get/x"), "closed the connection right after the publish"},
		{"outside the namespace", docWithGet("devices/{thingName}/get"), "outside certificates/{thingName}/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCloudWith(t, cloudOpts{doc: tc.doc})
			d := newDevice(t, c, fmt.Sprintf("gw-wedge-%d", i), deviceOpts{kind: onFile, configure: func(cfg *config.Config) {
				cfg.Timeouts.Reply = config.Duration(reply)
			}})
			d.start()
			// from the moment the job is started (IN_PROGRESS) to FAILED
			var started time.Time
			var before int64
			if !testkit.Poll(60*time.Second, func() bool {
				st, _ := c.jobStatus(d.name)
				if started.IsZero() && st != "" && st != types.JobExecutionStatusQueued {
					started, before = time.Now(), c.connects()
				}
				return st == types.JobExecutionStatusFailed
			}) {
				t.Fatalf("job never FAILED\nlog:\n%s", tail(d.Log(), 60))
			}
			took, n := time.Since(started), c.connects()-before
			t.Logf("FAILED %s after the job started, %d connects", took.Round(time.Millisecond), n)
			if took >= reply {
				t.Errorf("FAILED %s after the job started, want within one reply timeout (%s)", took, reply)
			}
			if n >= 10 {
				t.Errorf("%d connects before the job failed, want < 10", n)
			}
			_, det := c.jobStatus(d.name)
			if !strings.Contains(det["reason"], tc.reason) {
				t.Errorf("job statusDetails %v, want a reason with %q", det, tc.reason)
			}
			st := d.waitFor("idle on the bootstrap credential", func(s engineStatus) bool {
				return s.Phase == journal.Idle && s.LastResult == protocol.JobFailed && s.Connection == "connected"
			})
			if st.Active.Generation != 0 || st.ConnectedWith != 0 || !strings.Contains(st.LastReason, tc.reason) {
				t.Errorf("status %+v", st)
			}
			if keys, _ := filepath.Glob(filepath.Join(d.dir, "keys", "op-*")); len(keys) != 0 {
				t.Errorf("staged keys left: %v", keys)
			}
			quiet := c.connects()
			c.queueValidJob(d.name, "bootcert-rotation-valid")
			st = d.waitFor("the next valid rotation", func(s engineStatus) bool {
				return s.Phase == journal.Idle && s.Active.Generation > 0 && s.ConnectedWith == s.Active.Generation && s.LastResult == protocol.JobSucceeded
			})
			if got := c.connects() - quiet; got > 3 {
				t.Errorf("%d connects for the valid rotation, want about 1 (the switch)", got)
			}
			d.stop()
		})
	}
}

// gateVendor is the template's vendor function, holding get requests of
// the things in hold (no reply) until released.
type gateVendor struct {
	mu   sync.Mutex
	real lab.Function
	hold map[string]bool
	held chan string
}

func (g *gateVendor) fn(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
	var ev struct {
		ThingName string `json:"thingName"`
		Operation string `json:"operation"`
	}
	json.Unmarshal(event, &ev)
	g.mu.Lock()
	hold, real := g.hold[ev.ThingName] && ev.Operation == protocol.OpGet, g.real
	g.mu.Unlock()
	if hold {
		select {
		case g.held <- ev.ThingName:
		default:
		}
		return nil, nil
	}
	return real(ctx, event)
}

// buildVendor builds the template's VendorFunction against the lab, as the
// lab does for the functions it is not given.
func buildVendor(t *testing.T, c *cloudEnv) lab.Function {
	t.Helper()
	tmpl, err := template.Load(templatePath(), template.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tmpl.Functions {
		if f.LogicalID != "VendorFunction" {
			continue
		}
		ep := c.lab.Endpoints()
		fn, err := cloud.Build(context.Background(), f.LogicalID, func(k string) string { return f.Env[k] },
			cloud.Deps{AWS: lab.ClientConfig(c.lab.ServerCAPEM(), "us-east-1"), Endpoints: cloud.Endpoints{IoT: ep.API, S3: ep.S3, IoTData: ep.API}})
		if err != nil {
			t.Fatal(err)
		}
		return lab.Function(fn)
	}
	t.Fatal("the template has no VendorFunction")
	return nil
}

// TestCancelledExecution (issue 10): CancelJobExecution --force while the
// device waits for its certificate ends the rotation cleanly: the device
// stays on its old credentials, the staged key is destroyed, nothing is
// reported over the cancelled execution, and a later job rotates.
func TestCancelledExecution(t *testing.T) {
	gv := &gateVendor{hold: map[string]bool{"gw-cancel": true}, held: make(chan string, 1)}
	c := newCloudWith(t, cloudOpts{functions: map[string]lab.Function{"VendorFunction": gv.fn}})
	gv.mu.Lock()
	gv.real = buildVendor(t, c)
	gv.mu.Unlock()
	d := newDevice(t, c, "gw-cancel", deviceOpts{kind: onTPM})
	d.start()
	select {
	case <-gv.held:
	case <-time.After(60 * time.Second):
		t.Fatalf("no certificate request\nlog:\n%s", tail(d.Log(), 60))
	}
	if e := d.journalEntry(); e.Phase != journal.KeyStaged {
		t.Fatalf("journal %+v, want key-staged", e)
	}
	staged := filepath.Join(d.dir, "keys", "op-1.tpmkey")
	if _, err := os.Stat(staged); err != nil {
		t.Fatalf("no staged key: %v", err)
	}
	if _, err := c.api.CancelJobExecution(context.Background(), &iot.CancelJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String(d.name), Force: true}); err != nil {
		t.Fatalf("CancelJobExecution: %v", err)
	}
	st := d.waitFor("the rotation ended", func(s engineStatus) bool {
		return s.Phase == journal.Idle && s.LastResult == protocol.JobCanceled && s.Connection == "connected"
	})
	if st.Active.Generation != 0 || st.ConnectedWith != 0 || !strings.Contains(st.LastReason, "previous credentials kept") {
		t.Errorf("status %+v", st)
	}
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Errorf("staged key not destroyed: %v", err)
	}
	if s, _ := c.jobStatus(d.name); s != types.JobExecutionStatusCanceled {
		t.Errorf("execution %s, want CANCELED", s)
	}
	if strings.Contains(d.Log(), `"status":"FAILED"`) {
		t.Error("a FAILED update was sent")
	}
	// the cancelled rotation's certificate was never issued: no ACTIVE
	// certificate but the bootstrap one is attached to the thing
	ps, err := c.api.ListThingPrincipals(context.Background(), &iot.ListThingPrincipalsInput{ThingName: aws.String(d.name)})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps.Principals {
		id := p[strings.LastIndex(p, "/")+1:]
		if id != d.bootID && c.certStatus(id) == types.CertificateStatusActive {
			t.Errorf("orphaned ACTIVE certificate %s", id)
		}
	}
	gv.mu.Lock()
	gv.hold = nil
	gv.mu.Unlock()
	c.queueValidJob(d.name, "bootcert-rotation-2")
	d.waitFor("the next rotation", func(s engineStatus) bool {
		return s.Phase == journal.Idle && s.Active.Generation > 0 && s.ConnectedWith == s.Active.Generation && s.LastResult == protocol.JobSucceeded
	})
	d.stop()
}
