package cloud_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// startLabClock is startLab on an injected clock.
func startLabClock(t *testing.T, clk clock.Clock) *labRig {
	t.Helper()
	l, err := lab.Start(context.Background(), lab.Config{DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		TemplatePath: "template.yaml", Clock: clk})
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	ac := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	return &labRig{t: t, lab: l,
		iot: iot.NewFromConfig(ac, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) }),
		s3: s3.NewFromConfig(ac, func(o *s3.Options) {
			o.BaseEndpoint = aws.String(l.Endpoints().S3)
			o.UsePathStyle = true
		}),
		ca: testpki.NewCA(t, "bootcert factory CA", time.Now()),
	}
}

func (r *labRig) execStatus(job, thing string) string {
	out, err := r.iot.DescribeJobExecution(context.Background(), &iot.DescribeJobExecutionInput{JobId: aws.String(job), ThingName: aws.String(thing)})
	if err != nil || out.Execution == nil {
		return ""
	}
	return string(out.Execution.Status)
}

// A device's rotate request (certificates/{thing}/rotate, granted by the
// template's policy to the thing itself) goes through the rule to the
// renewal function, which queues a snapshot job with the template's
// in-progress timeout. The device takes a certificate and never acks: on
// the lab clock the execution becomes TIMED_OUT and the reaper deletes the
// orphaned certificate, leaving the device on its old credentials.
func TestLabRotateRequestAndTimedOut(t *testing.T) {
	clk := clock.NewFake(time.Now())
	r := startLabClock(t, clk)
	d0 := r.ca.Issue(t, "gw-rq", time.Now())
	r.setup([]manifest.Entry{{DeviceID: d0.ID}})
	d := r.admit(d0)
	c := d.conn(d.DER, d.Key)
	if code := c.subscribe(t, "certificates/"+d.ID+"/rotate/+"); code != 1 {
		t.Fatalf("SUBACK %#x for the rotate replies", code)
	}
	ask := func() (string, map[string]any) {
		t.Helper()
		c.mu.Lock()
		delete(c.msgs, "certificates/"+d.ID+"/rotate/accepted")
		delete(c.msgs, "certificates/"+d.ID+"/rotate/rejected")
		c.mu.Unlock()
		c.publish(t, protocol.RotateTopic(d.ID), protocol.RotateRequest{ClientToken: "rq", Reason: "age", CertificateID: d.CertID})
		topic, payload := c.wait(t, "certificates/"+d.ID+"/rotate/accepted", "certificates/"+d.ID+"/rotate/rejected")
		var p map[string]any
		json.Unmarshal(payload, &p)
		return topic, p
	}
	// The first rotation (the continuous job) is pending: accepted, same job.
	if topic, p := ask(); !strings.HasSuffix(topic, "/accepted") || p["jobId"] != "bootcert-rotation" {
		t.Fatalf("while the first rotation is pending: %s %v", topic, p)
	}
	// It fails; the reaper takes the thing out of the group.
	d.startJob(t, c)
	c.publish(t, protocol.JobUpdateTopic(d.ID, "bootcert-rotation"), protocol.UpdateRequest{Status: protocol.JobFailed, StatusDetails: map[string]string{"reason": "test"}})
	waitFor(t, "the thing out of the rotation group", func() bool {
		g, err := r.iot.ListThingGroupsForThing(context.Background(), &iot.ListThingGroupsForThingInput{ThingName: aws.String(d.ID)})
		return err == nil && len(g.ThingGroups) == 0
	})
	// Asked again: a new snapshot job.
	topic, p := ask()
	job, _ := p["jobId"].(string)
	if !strings.HasSuffix(topic, "/accepted") || !strings.HasPrefix(job, "bootcert-r-") {
		t.Fatalf("rotate request: %s %v", topic, p)
	}
	waitFor(t, "the new execution QUEUED", func() bool { return r.execStatus(job, d.ID) == "QUEUED" })
	c.publish(t, protocol.JobsTopic(d.ID, protocol.JobsStartNext), protocol.StartNextRequest{})
	waitFor(t, "the new execution IN_PROGRESS", func() bool { return r.execStatus(job, d.ID) == "IN_PROGRESS" })
	c.publish(t, "certificates/"+d.ID+"/get", protocol.GetRequest{JobID: job, ClientToken: "g", CSR: string(testpki.CSR(t, d.ID, nil))})
	topic, payload := c.wait(t, "certificates/"+d.ID+"/get/accepted", "certificates/"+d.ID+"/get/rejected")
	var acc protocol.GetAccepted
	if json.Unmarshal(payload, &acc); !strings.HasSuffix(topic, "/accepted") || acc.CertificateID == "" {
		t.Fatalf("get: %s %s", topic, payload)
	}
	if st := r.certStatus(acc.CertificateID); st != "ACTIVE" {
		t.Fatalf("issued certificate %s", st)
	}
	// No ack. 59 minutes: still IN_PROGRESS; past 60 (JobInProgressTimeout): TIMED_OUT.
	clk.Advance(59 * time.Minute)
	r.lab.Registry().ExpireTimeouts() // what the lab's ticker does every second
	if st := r.execStatus(job, d.ID); st != "IN_PROGRESS" {
		t.Fatalf("after 59 minutes: %s", st)
	}
	clk.Advance(2 * time.Minute)
	waitFor(t, "TIMED_OUT", func() bool { return r.execStatus(job, d.ID) == "TIMED_OUT" })
	waitFor(t, "the orphaned certificate deleted by the reaper", func() bool { return r.certStatus(acc.CertificateID) == "" })
	if st := r.certStatus(d.CertID); st != "ACTIVE" {
		t.Errorf("bootstrap certificate %s after the timed-out rotation", st)
	}
}
