package engine

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/protocol"
)

// fakeCloud is an in-memory AWS IoT Core with the Jobs API and the vendor
// function, for the engine's unit tests. It is a narrow fake: the real path
// is tested against the lab.
type fakeCloud struct {
	t     *testing.T
	ca    *testca.CA
	thing string

	mu       sync.Mutex
	accepted map[string]bool // certificate IDs the broker accepts
	job      string          // pending job ID ("" = none)
	doc      json.RawMessage
	updates  []string // "jobId STATUS details"
	issued   []string // certificate IDs issued
	acks     int
	conns    []*fakeConn
	dials    int
	refusals int
	nexts    int

	// hooks to misbehave
	getReply   func(req protocol.GetRequest, pub any) (suffix string, payload []byte, ok bool)
	acceptNew  bool // activate issued certificates at once (default true)
	denyNewSub bool // issued certificates connect but may not subscribe (no policy)
	dupReplies bool
	dropAcks   int
	dropGets   int
	csrs       []string
	byCSR      map[string]*x509.Certificate
	// deafNew: this many connections with an issued certificate get
	// SUBACKs and PUBACKs but no message (the broker lost them from its
	// client table, as the lab's mochi did on a quick reconnect)
	deafNew int
	// hangSubs: this many SUBSCRIBEs on issued certificates never get a
	// SUBACK
	hangSubs int
	// stall: when set, a start-next publish blocks, deadline or not, until
	// it is closed (a call that never returns), after closing stalled
	stall, stalled chan struct{}
	// deniedSubs: filters the policy refuses (SUBACK 0x80, connection up);
	// deniedPubs: topics whose publish makes the broker close the
	// connection (AWS IoT's answer to an ungranted publish)
	deniedSubs, deniedPubs map[string]bool
	// dropAfterStartNext: every connection is closed by the broker right
	// after its start-next (a session that never does useful work)
	dropAfterStartNext bool
	// status of each job execution the cloud ended (CANCELED, REMOVED)
	ended     map[string]protocol.JobStatus
	describes int
	// rotation requests (the safety net) and how the cloud answers them:
	// nil accepts and queues a job, as the cloud does
	rotates     []protocol.RotateRequest
	rotateReply func(req protocol.RotateRequest) (suffix string, payload []byte)
	// onPublish sees every publish before the cloud acts on it (called
	// without the lock); issueOpts shape the certificates it issues
	onPublish func(topic string, payload []byte)
	issueOpts []testca.Option
}

func (f *fakeCloud) rotateRequests() []protocol.RotateRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]protocol.RotateRequest(nil), f.rotates...)
}

// deniedErr is a SUBACK 0x80.
type deniedErr struct{ filter string }

func (d deniedErr) Error() string { return "subscribing to " + d.filter + ": refused by the broker" }
func (deniedErr) Denied() bool    { return true }

// cancel ends a job execution in the cloud (CancelJobExecution --force):
// the device is told by notify-next without it.
func (f *fakeCloud) cancel(jobID string, status protocol.JobStatus) {
	f.mu.Lock()
	if f.ended == nil {
		f.ended = map[string]protocol.JobStatus{}
	}
	f.ended[jobID] = status
	if f.job == jobID {
		f.job = ""
	}
	conns := append([]*fakeConn(nil), f.conns...)
	f.mu.Unlock()
	for _, c := range conns {
		c.deliver(c.jobs("notify-next"), []byte(`{"timestamp":1}`))
	}
}

func (f *fakeCloud) dialCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dials
}

type refusedErr struct{}

func (refusedErr) Error() string { return "remote error: tls: bad certificate" }
func (refusedErr) Refused() bool { return true }

func newFakeCloud(t *testing.T, ca *testca.CA, thing string) *fakeCloud {
	return &fakeCloud{t: t, ca: ca, thing: thing, accepted: map[string]bool{}, acceptNew: true, byCSR: map[string]*x509.Certificate{}}
}

func (f *fakeCloud) accept(id string)   { f.mu.Lock(); f.accepted[id] = true; f.mu.Unlock() }
func (f *fakeCloud) revoke(id string)   { f.mu.Lock(); delete(f.accepted, id); f.mu.Unlock() }
func (f *fakeCloud) queueJob(id string) { f.queueJobDoc(id, nil) }
func (f *fakeCloud) queueJobDoc(id string, doc json.RawMessage) {
	f.mu.Lock()
	if doc == nil {
		doc, _ = json.Marshal(protocol.DefaultJobDocument())
	}
	f.job, f.doc = id, doc
	conns := append([]*fakeConn(nil), f.conns...)
	f.mu.Unlock()
	for _, c := range conns {
		c.deliver(c.jobs("notify-next"), []byte(`{"execution":{"jobId":"`+id+`"}}`))
	}
}

func (f *fakeCloud) startNexts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nexts
}

func (f *fakeCloud) jobUpdates() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.updates...)
}

func (f *fakeCloud) Dial(ctx context.Context, c *Credential) (Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials++
	id := c.CertificateID()
	if !f.accepted[id] {
		f.refusals++
		return nil, refusedErr{}
	}
	for _, old := range f.conns {
		old.drop(errors.New("session taken over"))
	}
	conn := &fakeConn{cloud: f, certID: id, subs: map[string]func(string, []byte){}, done: make(chan struct{})}
	if f.deafNew > 0 && contains(f.issued, id) {
		f.deafNew--
		conn.deaf = true
	}
	f.conns = []*fakeConn{conn}
	return conn, nil
}

type fakeConn struct {
	cloud  *fakeCloud
	certID string
	mu     sync.Mutex
	subs   map[string]func(string, []byte)
	done   chan struct{}
	once   sync.Once
	err    error
	deaf   bool
}

func (c *fakeConn) jobs(rest string) string { return "$aws/things/" + c.cloud.thing + "/jobs/" + rest }

func (c *fakeConn) drop(err error) {
	c.once.Do(func() { c.err = err; close(c.done) })
}

func (c *fakeConn) Done() <-chan struct{} { return c.done }
func (c *fakeConn) Err() error            { return c.err }
func (c *fakeConn) Close(time.Duration)   { c.drop(errors.New("closed")) }

func (c *fakeConn) Subscribe(ctx context.Context, filter string, h func(string, []byte)) error {
	f := c.cloud
	f.mu.Lock()
	deny := f.denyNewSub && contains(f.issued, c.certID)
	hang := f.hangSubs > 0 && contains(f.issued, c.certID)
	if hang {
		f.hangSubs--
	}
	f.mu.Unlock()
	if hang {
		select {
		case <-ctx.Done():
			return fmt.Errorf("subscribing to %s: %w", filter, ctx.Err())
		case <-c.done:
			return errors.New("subscribing to " + filter + ": connection lost")
		}
	}
	if deny {
		c.drop(errors.New("closed by the broker: not authorized"))
		return errors.New("subscribing to " + filter + ": connection lost")
	}
	f.mu.Lock()
	refused := f.deniedSubs[filter]
	f.mu.Unlock()
	if refused {
		return deniedErr{filter}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs[filter] = h
	return nil
}

func match(filter, topic string) bool {
	fp, tp := strings.Split(filter, "/"), strings.Split(topic, "/")
	if len(fp) != len(tp) {
		return false
	}
	for i := range fp {
		if fp[i] != "+" && fp[i] != tp[i] {
			return false
		}
	}
	return true
}

// deliver runs matching handlers asynchronously, as the network would.
func (c *fakeConn) deliver(topic string, payload []byte) {
	if c.deaf {
		return
	}
	c.mu.Lock()
	var hs []func(string, []byte)
	for f, h := range c.subs {
		if match(f, topic) {
			hs = append(hs, h)
		}
	}
	c.mu.Unlock()
	for _, h := range hs {
		go h(topic, payload)
	}
}

func (c *fakeConn) PublishNoWait(topic string, payload []byte) error {
	return c.Publish(context.Background(), topic, payload)
}

func (c *fakeConn) Publish(ctx context.Context, topic string, payload []byte) error {
	select {
	case <-c.done:
		return errors.New("connection lost")
	default:
	}
	f := c.cloud
	t := f.thing
	f.mu.Lock()
	hook := f.onPublish
	f.mu.Unlock()
	if hook != nil {
		hook(topic, payload)
	}
	f.mu.Lock()
	refused := f.deniedPubs[topic]
	f.mu.Unlock()
	if refused {
		c.drop(io.EOF) // AWS IoT closes the connection
		return errors.New("publishing to " + topic + ": connection lost")
	}
	if topic == c.jobs("start-next") {
		f.mu.Lock()
		drop := f.dropAfterStartNext
		f.mu.Unlock()
		if drop {
			defer c.drop(io.EOF)
		}
	}
	switch {
	case strings.HasPrefix(topic, c.jobs("")) && strings.HasSuffix(topic, "/get") && topic != c.jobs("get"):
		jobID := strings.TrimSuffix(strings.TrimPrefix(topic, c.jobs("")), "/get")
		var req protocol.DescribeRequest
		json.Unmarshal(payload, &req)
		f.mu.Lock()
		f.describes++
		st, ended := f.ended[jobID]
		pending := f.job == jobID
		f.mu.Unlock()
		switch {
		case ended:
			p, _ := json.Marshal(protocol.ExecutionAccepted{ClientToken: req.ClientToken, Execution: &protocol.JobExecution{JobID: jobID, Status: st}})
			c.deliver(c.jobs(jobID+"/get/accepted"), p)
		case pending:
			p, _ := json.Marshal(protocol.ExecutionAccepted{ClientToken: req.ClientToken, Execution: &protocol.JobExecution{JobID: jobID, Status: protocol.JobInProgress}})
			c.deliver(c.jobs(jobID+"/get/accepted"), p)
		default:
			p, _ := json.Marshal(protocol.JobsRejected{ClientToken: req.ClientToken, Code: protocol.JobsResourceNotFound, Message: "no such execution"})
			c.deliver(c.jobs(jobID+"/get/rejected"), p)
		}
	case topic == c.jobs("start-next"):
		f.mu.Lock()
		stall, stalled := f.stall, f.stalled
		f.stall = nil
		f.mu.Unlock()
		if stall != nil {
			close(stalled)
			<-stall
		}
		f.mu.Lock()
		f.nexts++
		job, doc := f.job, f.doc
		f.mu.Unlock()
		var req struct {
			ClientToken string `json:"clientToken"`
		}
		json.Unmarshal(payload, &req)
		if job == "" {
			c.deliver(c.jobs("start-next/accepted"), []byte(`{"clientToken":"`+req.ClientToken+`"}`))
		} else {
			c.deliver(c.jobs("start-next/accepted"), []byte(`{"clientToken":"`+req.ClientToken+`","execution":{"jobId":"`+job+`","status":"IN_PROGRESS","jobDocument":`+string(doc)+`}}`))
		}
	case strings.HasPrefix(topic, c.jobs("")) && strings.HasSuffix(topic, "/update"):
		jobID := strings.TrimSuffix(strings.TrimPrefix(topic, c.jobs("")), "/update")
		var u struct {
			Status        string            `json:"status"`
			StatusDetails map[string]string `json:"statusDetails"`
		}
		json.Unmarshal(payload, &u)
		f.mu.Lock()
		if st, ended := f.ended[jobID]; ended {
			f.mu.Unlock()
			p, _ := json.Marshal(protocol.JobsRejected{Code: protocol.JobsInvalidStateTransition, Message: "execution is terminal", ExecutionState: &protocol.ExecutionState{Status: st}})
			c.deliver(c.jobs(jobID+"/update/rejected"), p)
			return nil
		}
		f.updates = append(f.updates, jobID+" "+u.Status+" "+u.StatusDetails["progress"]+u.StatusDetails["reason"])
		if (u.Status == "SUCCEEDED" || u.Status == "FAILED") && f.job == jobID {
			f.job = ""
		}
		f.mu.Unlock()
	case topic == "certificates/"+t+"/get":
		var req protocol.GetRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			f.t.Errorf("bad get request: %v", err)
			return nil
		}
		f.mu.Lock()
		f.csrs = append(f.csrs, req.CSR)
		dropGet := f.dropGets > 0
		if dropGet {
			f.dropGets--
		}
		f.mu.Unlock()
		if dropGet {
			return nil
		}
		blk, _ := pem.Decode([]byte(req.CSR))
		if blk == nil {
			f.t.Errorf("get request without CSR")
			return nil
		}
		r, err := csr.Parse(blk.Bytes)
		if err != nil {
			f.t.Errorf("bad CSR: %v", err)
			return nil
		}
		if f.getReply != nil {
			if suffix, p, ok := f.getReply(req, r.PublicKey); ok {
				c.deliver("certificates/"+t+"/get/"+suffix, p)
				return nil
			}
		}
		// idempotent per CSR, as the vendor is: a repeated request gets
		// the same certificate; issued counts distinct certificates
		f.mu.Lock()
		cert, again := f.byCSR[req.CSR]
		f.mu.Unlock()
		if !again {
			cert = f.ca.Issue(f.t, r.Subject.CommonName, r.PublicKey, f.issueOpts...)
		}
		id := protocol.CertificateID(cert.Raw)
		f.mu.Lock()
		if !again {
			f.byCSR[req.CSR] = cert
			f.issued = append(f.issued, id)
		}
		if f.acceptNew {
			f.accepted[id] = true
		}
		dup := f.dupReplies
		f.mu.Unlock()
		p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificateID: id, CertificatePEM: string(testca.PEM(cert)) + string(testca.PEM(f.ca.Cert))})
		c.deliver("certificates/"+t+"/get/accepted", p)
		if dup {
			c.deliver("certificates/"+t+"/get/accepted", p)
		}
	case topic == "certificates/"+t+"/rotate":
		var req protocol.RotateRequest
		if err := json.Unmarshal(payload, &req); err != nil {
			f.t.Errorf("bad rotate request: %v", err)
			return nil
		}
		f.mu.Lock()
		f.rotates = append(f.rotates, req)
		n, reply := len(f.rotates), f.rotateReply
		f.mu.Unlock()
		if reply != nil {
			if suffix, p := reply(req); suffix != "" {
				c.deliver("certificates/"+t+"/rotate/"+suffix, p)
			}
			return nil
		}
		job := fmt.Sprintf("rot-req-%d", n)
		p, _ := json.Marshal(protocol.RotateAccepted{ClientToken: req.ClientToken, JobID: job})
		c.deliver("certificates/"+t+"/rotate/accepted", p)
		go f.queueJob(job)
	case topic == "certificates/"+t+"/ack":
		var req protocol.AckRequest
		json.Unmarshal(payload, &req)
		f.mu.Lock()
		f.acks++
		drop := f.dropAcks > 0
		if drop {
			f.dropAcks--
		}
		dup := f.dupReplies
		f.mu.Unlock()
		if drop {
			return nil
		}
		if req.CertificateID != c.certID {
			p, _ := json.Marshal(protocol.Rejected{ClientToken: req.ClientToken, Code: protocol.NotAllowed, Message: "ack over the old certificate"})
			c.deliver("certificates/"+t+"/ack/rejected", p)
			return nil
		}
		p, _ := json.Marshal(protocol.AckAccepted{ClientToken: req.ClientToken, CertificateID: req.CertificateID})
		c.deliver("certificates/"+t+"/ack/accepted", p)
		if dup {
			c.deliver("certificates/"+t+"/ack/accepted", p)
		}
	}
	return nil
}
