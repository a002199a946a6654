package engine

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/protocol"
)

// jobExecution is the part of an AWS IoT Jobs execution the engine reads.
type jobExecution struct {
	JobID       string          `json:"jobId"`
	Status      string          `json:"status"`
	JobDocument json.RawMessage `json:"jobDocument"`
}

type jobsReply struct {
	ClientToken string        `json:"clientToken"`
	Execution   *jobExecution `json:"execution"`
	Code        string        `json:"code"`
	Message     string        `json:"message"`
}

func (e *Engine) jobsTopic(rest string) string {
	return "$aws/things/" + e.cfg.Thing + "/jobs/" + rest
}

func token() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// runSession drives one connected session until it ends.
func (e *Engine) runSession(ctx context.Context, conn Conn, c *Credential) error {
	e.conn, e.connCred = conn, c
	in := make(chan message, 64)
	e.in = in
	e.subscribed = map[string]bool{}
	e.retryAt = nil
	e.unanswered = 0
	e.setConn("connected", c)
	e.log.Info("connected", "generation", c.Generation, "certificateId", c.CertificateID())
	for _, f := range []string{e.jobsTopic("notify-next"), e.jobsTopic("start-next/+"), e.jobsTopic("+/update/+")} {
		if err := e.subscribe(ctx, f); err != nil {
			if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
				// no SUBACK within the reply timeout: a slow or stuck
				// broker, not a verdict on the credential
				return err
			}
			return &notEstablished{err}
		}
	}
	if err := e.resume(ctx); err != nil {
		return err
	}
	if err := e.startNext(ctx); err != nil {
		return err
	}
	for {
		var err error
		e.tick()
		select {
		case <-e.beatC:
		case <-ctx.Done():
			return ctx.Err()
		case <-conn.Done():
			return fmt.Errorf("connection lost: %v", conn.Err())
		case m := <-in:
			err = e.handle(ctx, m)
		case r := <-e.keygenChan():
			err = e.onKeygen(ctx, r)
		case <-e.rotateNow:
			err = e.startNext(ctx)
		case <-e.retryAt:
			e.retryAt = nil
			err = e.retry(ctx)
		}
		if err != nil {
			return err
		}
	}
}

func (e *Engine) keygenChan() chan keygenResult {
	if e.keygenDone == nil {
		e.keygenDone = make(chan keygenResult, 1)
	}
	return e.keygenDone
}

func (e *Engine) subscribe(ctx context.Context, filter string) error {
	if e.subscribed[filter] {
		return nil
	}
	in, done := e.in, e.conn.Done()
	// paho runs each handler in its own goroutine (order does not matter):
	// a handler waiting here for a busy engine blocks nothing else.
	wctx, cancel := e.netWait(ctx)
	defer cancel()
	err := e.conn.Subscribe(wctx, filter, func(topic string, payload []byte) {
		select {
		case in <- message{topic, payload}:
		case <-done:
		}
	})
	e.tick()
	if err != nil {
		return err
	}
	e.subscribed[filter] = true
	return nil
}

// netWait bounds a wait for the broker (SUBACK, PUBACK) by the reply
// timeout: a broker that stops answering on an open connection ends the
// session (and the engine reconnects) instead of holding the engine loop.
func (e *Engine) netWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.cfg.ReplyTimeout)
}

// publish publishes at QoS 1 and waits for the PUBACK, at most the reply
// timeout.
func (e *Engine) publish(ctx context.Context, topic string, payload []byte) error {
	wctx, cancel := e.netWait(ctx)
	defer cancel()
	err := e.conn.Publish(wctx, topic, payload)
	e.tick()
	return err
}

func (e *Engine) publishJSON(ctx context.Context, topic string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return e.publish(ctx, topic, b)
}

func (e *Engine) startNext(ctx context.Context) error {
	// Only the reply to the latest request counts: a duplicated or late reply
	// would restart a job that has just finished.
	e.startToken = token()
	return e.publishJSON(ctx, e.jobsTopic("start-next"), map[string]any{
		"clientToken": e.startToken, "statusDetails": map[string]string{"progress": "started"},
	})
}

// updateJob reports a job execution's status; it does not wait for the
// reply (a lost update is repeated at the next step or resume).
func (e *Engine) updateJob(ctx context.Context, jobID, status string, details map[string]string) error {
	if jobID == "" {
		return nil
	}
	for k, v := range details {
		if len(v) > 512 {
			details[k] = v[:512]
		}
	}
	b, err := json.Marshal(map[string]any{"status": status, "statusDetails": details})
	if err != nil {
		return err
	}
	if status == "SUCCEEDED" || status == "FAILED" {
		// terminal: wait for the PUBACK before the journal forgets the job
		return e.publish(ctx, e.jobsTopic(jobID+"/update"), b)
	}
	return e.conn.PublishNoWait(e.jobsTopic(jobID+"/update"), b)
}

// resume continues a rotation the journal says is in progress.
func (e *Engine) resume(ctx context.Context) error {
	j := e.journal.Current()
	switch j.Phase {
	case journal.KeyStaged:
		if e.staged == nil && !e.keygenBusy {
			e.startKeygen(j.Generation, j.KeyURI)
		} else if e.staged != nil {
			return e.sendGet(ctx)
		}
	case journal.CertStaged:
		return e.swap(ctx)
	case journal.Switched:
		if e.connCred.Generation == j.Generation {
			e.lap("reconnect")
			return e.sendAck(ctx)
		}
	case journal.Committed:
		return e.finishCommit(ctx)
	case journal.RolledBack:
		return e.finishRollback(ctx)
	}
	return nil
}

func (e *Engine) handle(ctx context.Context, m message) error {
	j := e.journal.Current()
	switch {
	case m.topic == e.jobsTopic("notify-next"):
		var r jobsReply
		if err := protocol.Decode("jobs notify-next", m.payload, &r); err != nil {
			e.log.Warn("ignoring message", "topic", m.topic, "err", err)
			return nil
		}
		if r.Execution != nil && idle(j.Phase) {
			return e.startNext(ctx)
		}
		return nil
	case m.topic == e.jobsTopic("start-next/accepted"):
		var r jobsReply
		if err := protocol.Decode("jobs start-next reply", m.payload, &r); err != nil {
			e.log.Warn("ignoring message", "topic", m.topic, "err", err)
			return nil
		}
		if r.ClientToken != e.startToken {
			return nil
		}
		e.startToken = ""
		if r.Execution == nil {
			e.setPending("")
			return nil
		}
		if !idle(j.Phase) {
			return nil // a rotation is in progress; its own job comes back here too
		}
		return e.begin(ctx, r.Execution)
	case m.topic == e.jobsTopic("start-next/rejected"):
		e.log.Warn("jobs start-next rejected", "payload", truncate(m.payload))
		return nil
	case strings.HasPrefix(m.topic, e.jobsTopic("")) && strings.HasSuffix(m.topic, "/update/rejected"):
		e.log.Warn("job update rejected", "topic", m.topic, "payload", truncate(m.payload))
		return nil
	}
	if j.Doc != nil {
		get := j.Doc.Get.Expand(e.cfg.Thing)
		ack := j.Doc.Ack.Expand(e.cfg.Thing)
		if s, ok := replySuffix(get.Subscribe, m.topic); ok {
			return e.onGetReply(ctx, s, m.payload)
		}
		if s, ok := replySuffix(ack.Subscribe, m.topic); ok {
			return e.onAckReply(ctx, s, m.payload)
		}
	}
	return nil
}

func idle(p journal.Phase) bool {
	return p == journal.Idle || p == journal.Committed || p == journal.RolledBack
}

// replySuffix matches a topic against a filter ending in "/+".
func replySuffix(filter, topic string) (string, bool) {
	prefix, ok := strings.CutSuffix(filter, "+")
	if !ok || !strings.HasPrefix(topic, prefix) {
		return "", false
	}
	s := topic[len(prefix):]
	if s == "" || strings.Contains(s, "/") {
		return "", false
	}
	return s, true
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

func (e *Engine) nextGeneration() int {
	n := 0
	ptr, _ := e.store.Pointer()
	gens, _ := e.store.Generations()
	for _, g := range append(gens, ptr.Active, ptr.Previous, e.journal.Current().Generation) {
		if g > n {
			n = g
		}
	}
	return n + 1
}

// begin starts a rotation for a job execution.
func (e *Engine) begin(ctx context.Context, x *jobExecution) error {
	e.setPending(x.JobID)
	doc, err := protocol.ParseJobDocument(x.JobDocument)
	if err != nil {
		e.log.Warn("job refused", "job", x.JobID, "err", err)
		e.setResult(protocol.JobFailed, "job "+x.JobID+": "+err.Error())
		return e.updateJob(ctx, x.JobID, "FAILED", map[string]string{"reason": err.Error()})
	}
	ptr, _ := e.store.Pointer()
	gen := e.nextGeneration()
	var keyURI string
	switch {
	case e.cfg.PreProvisoned != "" && ptr.Active == 0:
		keyURI = e.cfg.PreProvisoned
	case e.cfg.OperationalFn != nil:
		keyURI = e.cfg.OperationalFn(gen)
	}
	if keyURI == "" {
		reason := "no operational key template configured (identity.operational_key) for a renewal"
		e.setResult(protocol.JobFailed, reason)
		return e.updateJob(ctx, x.JobID, "FAILED", map[string]string{"reason": reason})
	}
	now := e.clock.Now()
	entry := journal.Entry{Phase: journal.KeyStaged, JobID: x.JobID, ClientToken: token(), Generation: gen,
		Previous: ptr.Active, KeyURI: keyURI, Doc: &doc, StartedAt: now, UpdatedAt: now}
	if err := e.journal.Write(entry); err != nil {
		return fmt.Errorf("starting rotation: %w", err)
	}
	e.startToken = ""
	e.replyTries = 0
	e.laps, e.lapMark = map[string]time.Duration{}, time.Now()
	e.refreshStatus()
	e.log.Info("rotation started", "job", x.JobID, "generation", gen)
	e.startKeygen(gen, keyURI)
	return nil
}

// startKeygen makes (or, after a crash, finds) the staged key off the MQTT
// path: hardware time never delays keep-alives or message handling.
func (e *Engine) startKeygen(gen int, uri string) {
	e.keygenBusy = true
	ch := e.keygenChan()
	pre := uri == e.cfg.PreProvisoned
	alg := e.cfg.Algorithm
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		ctx := context.Background()
		if pre {
			signer, err := e.keys.Open(ctx, uri)
			ch <- keygenResult{gen: gen, signer: signer, err: err}
			return
		}
		signer, err := e.keys.Generate(ctx, uri, alg)
		if errors.Is(err, keystore.ErrExists) {
			// made before a crash, under this generation's name: ours
			signer, err = e.keys.Open(ctx, uri)
		}
		ch <- keygenResult{gen: gen, signer: signer, err: err}
	}()
}

func (e *Engine) onKeygen(ctx context.Context, r keygenResult) error {
	e.keygenBusy = false
	j := e.journal.Current()
	if j.Phase != journal.KeyStaged || j.Generation != r.gen {
		if r.signer != nil {
			keystore.CloseSigner(r.signer)
		}
		return nil
	}
	if r.err != nil {
		return e.fail(ctx, fmt.Sprintf("staging key %s: %v", redactURI(j.KeyURI), r.err))
	}
	e.staged = r.signer
	e.keepSigner(j.KeyURI, r.signer) // the reconnect after the swap uses it
	e.lap("key")
	e.updateJob(ctx, j.JobID, "IN_PROGRESS", map[string]string{"progress": "key-staged"})
	return e.sendGet(ctx)
}

func (e *Engine) sendGet(ctx context.Context) error {
	j := e.journal.Current()
	get := j.Doc.Get.Expand(e.cfg.Thing)
	if err := e.subscribe(ctx, get.Subscribe); err != nil {
		return err
	}
	req := protocol.GetRequest{JobID: j.JobID, ClientToken: j.ClientToken}
	if j.KeyURI != e.cfg.PreProvisoned {
		// One CSR per rotation, journalled: retries and restarts send the
		// same bytes, so the vendor (idempotent per thing, job and CSR)
		// answers with the same certificate instead of issuing another.
		if j.CSR == "" || !csrMatches(j.CSR, e.staged.Public()) {
			der, err := csr.Create(e.staged, e.cfg.Thing)
			if err != nil {
				return e.fail(ctx, fmt.Sprintf("making the CSR with the staged key: %v", err))
			}
			j.CSR = string(pem.EncodeToMemory(&pem.Block{Type: csr.PEMType, Bytes: der}))
			if err := e.journal.Write(j); err != nil {
				return err
			}
		}
		req.CSR = j.CSR
	}
	if err := e.publishJSON(ctx, get.Publish, req); err != nil {
		return err
	}
	e.lap("csr+publish")
	e.asked("certificate request")
	return nil
}

// maxUnanswered is how many requests (get, ack) a session may leave without
// any reply before the engine ends it and reconnects: a broker that
// acknowledges publishes but delivers nothing to a connection (subscriptions
// lost on its side) is only cured by a new session.
const maxUnanswered = 2

// asked arms the retry of a request just sent.
func (e *Engine) asked(what string) {
	e.unanswered++
	d := e.retryDelay()
	e.log.Debug("waiting for a reply", "request", what, "sent", e.unanswered, "retryIn", d.Round(time.Millisecond))
	e.retryAt = e.clock.After(d)
}

// answered notes a reply on this session.
func (e *Engine) answered() { e.unanswered = 0 }

// errNoReply ends a session whose requests go unanswered.
var errNoReply = errors.New("no reply to the last requests on this session")

// csrMatches reports whether a journalled CSR is for the staged key (a key
// made again after a crash needs a new one).
func csrMatches(p string, pub crypto.PublicKey) bool {
	r, err := csr.Parse([]byte(p))
	if err != nil {
		return false
	}
	a, err1 := keystore.Fingerprint(r.PublicKey)
	b, err2 := keystore.Fingerprint(pub)
	return err1 == nil && err2 == nil && a == b
}

func (e *Engine) onGetReply(ctx context.Context, suffix string, payload []byte) error {
	j := e.journal.Current()
	if j.Phase != journal.KeyStaged || e.staged == nil {
		return nil // duplicate or late
	}
	switch suffix {
	case protocol.SuffixRejected:
		var r protocol.Rejected
		if err := protocol.Decode("get/rejected", payload, &r); err != nil {
			return e.fail(ctx, "undecodable rejection: "+err.Error())
		}
		if r.ClientToken != j.ClientToken {
			return nil
		}
		e.answered()
		if r.Retryable {
			e.log.Warn("certificate request rejected, retrying", "code", r.Code, "message", r.Message)
			e.retryAt = e.clock.After(e.retryDelay())
			return nil
		}
		return e.fail(ctx, fmt.Sprintf("certificate request rejected: %s: %s", r.Code, r.Message))
	case protocol.SuffixAccepted:
	default:
		return nil
	}
	var a protocol.GetAccepted
	if err := protocol.Decode("get/accepted", payload, &a); err != nil {
		return e.fail(ctx, "certificate reply refused: "+err.Error())
	}
	if a.ClientToken != j.ClientToken {
		return nil
	}
	e.lap("wait-get")
	e.replyTries = 0
	e.answered()
	pemData := []byte(a.CertificatePEM)
	if len(pemData) == 0 {
		if a.Location == "" {
			return e.fail(ctx, "certificate reply has neither certificatePem nor location")
		}
		if e.fetch == nil {
			return e.fail(ctx, "certificate reply has only a location and downloads are not configured (verify.location_hosts)")
		}
		data, err := e.fetch.Fetch(ctx, a.Location)
		if err != nil {
			return e.fail(ctx, "certificate download refused: "+err.Error())
		}
		pemData = packagePEM(data)
	}
	chain, err := ParseCertificatePEM(pemData)
	if err == nil {
		err = VerifyCertificate(chain, e.staged.Public(), VerifyOptions{Thing: e.cfg.Thing, IssuerSHA256: e.cfg.IssuerSHA256, Now: e.clock.Now()})
	}
	if err == nil && a.CertificateID != "" && a.CertificateID != credset.CertificateID(chain[0]) {
		err = fmt.Errorf("%w: certificateId %q does not match the certificate", ErrBadCertificate, a.CertificateID)
	}
	if err != nil {
		return e.fail(ctx, err.Error())
	}
	leaf := chain[0]
	cred := &credset.Credential{Generation: j.Generation, KeyURI: j.KeyURI, Chain: chain, Meta: credset.Meta{
		Generation: j.Generation, CertificateID: credset.CertificateID(leaf), JobID: j.JobID,
		Issuer: leaf.Issuer.String(), NotAfter: leaf.NotAfter, CreatedAt: e.clock.Now()}}
	if err := e.store.Put(cred); errors.Is(err, credset.ErrExists) {
		e.store.Remove(j.Generation)
		err = e.store.Put(cred)
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	j.Phase = journal.CertStaged
	j.CertificateID = cred.Meta.CertificateID
	j.UpdatedAt = e.clock.Now()
	if err := e.journal.Write(j); err != nil {
		return err
	}
	e.refreshStatus()
	e.updateJob(ctx, j.JobID, "IN_PROGRESS", map[string]string{"progress": "cert-staged", "certificateId": j.CertificateID})
	return e.swap(ctx)
}

// packagePEM accepts a bare PEM or a JSON package {"certificatePem": ...}.
func packagePEM(data []byte) []byte {
	var p struct {
		CertificatePEM string `json:"certificatePem"`
	}
	if len(data) > 0 && data[0] == '{' && json.Unmarshal(data, &p) == nil && p.CertificatePEM != "" {
		return []byte(p.CertificatePEM)
	}
	return data
}

// swap makes the staged credential active (one atomic pointer write) and
// ends the session so that the engine reconnects with it.
func (e *Engine) swap(ctx context.Context) error {
	j := e.journal.Current()
	if err := e.store.SetPointer(credset.Pointer{Active: j.Generation, Previous: j.Previous}); err != nil {
		return fmt.Errorf("switching credentials: %w", err)
	}
	j.Phase = journal.Switched
	j.UpdatedAt = e.clock.Now()
	if err := e.journal.Write(j); err != nil {
		return err
	}
	e.refreshStatus()
	e.updateJob(ctx, j.JobID, "IN_PROGRESS", map[string]string{"progress": "switched", "certificateId": j.CertificateID})
	e.lap("verify+store+swap")
	e.replyTries = 0
	e.log.Info("switched credentials", "generation", j.Generation)
	e.staged = nil // stays open in the signer cache for the reconnect
	return errSwitch
}

func (e *Engine) sendAck(ctx context.Context) error {
	j := e.journal.Current()
	ack := j.Doc.Ack.Expand(e.cfg.Thing)
	if err := e.subscribe(ctx, ack.Subscribe); err != nil {
		return err
	}
	if err := e.publishJSON(ctx, ack.Publish, protocol.AckRequest{JobID: j.JobID, ClientToken: j.ClientToken, CertificateID: j.CertificateID}); err != nil {
		return err
	}
	e.asked("acknowledgement")
	return nil
}

func (e *Engine) onAckReply(ctx context.Context, suffix string, payload []byte) error {
	j := e.journal.Current()
	if j.Phase != journal.Switched || e.connCred.Generation != j.Generation {
		return nil
	}
	switch suffix {
	case protocol.SuffixAccepted:
		var a protocol.AckAccepted
		if err := protocol.Decode("ack/accepted", payload, &a); err != nil || a.ClientToken != j.ClientToken {
			return nil
		}
		e.answered()
		j.Phase = journal.Committed
		j.UpdatedAt = e.clock.Now()
		if err := e.journal.Write(j); err != nil {
			return err
		}
		e.retryAt = nil
		e.lap("wait-ack")
		e.replyTries = 0
		e.log.Info("rotation committed", "job", j.JobID, "generation", j.Generation)
		return e.finishCommit(ctx)
	case protocol.SuffixRejected:
		var r protocol.Rejected
		if err := protocol.Decode("ack/rejected", payload, &r); err != nil || r.ClientToken != j.ClientToken {
			return nil
		}
		e.answered()
		if r.Retryable {
			e.retryAt = e.clock.After(e.retryDelay())
			return nil
		}
		e.rollback(fmt.Sprintf("acknowledgement rejected: %s: %s", r.Code, r.Message))
		return errSwitch
	}
	return nil
}

// finishCommit is idempotent: job SUCCEEDED, previous operational key
// destroyed (never the bootstrap key), journal idle.
func (e *Engine) finishCommit(ctx context.Context) error {
	j := e.journal.Current()
	if err := e.updateJob(ctx, j.JobID, "SUCCEEDED", map[string]string{"progress": "committed", "certificateId": j.CertificateID}); err != nil {
		return err
	}
	if j.Previous > 0 {
		if prev, err := e.store.Get(j.Previous); err == nil {
			e.dropSigner(prev.KeyURI)
			e.destroyKey(ctx, prev.KeyURI)
		}
		if err := e.store.Remove(j.Previous); err != nil {
			e.log.Warn("removing previous credential", "generation", j.Previous, "err", err)
		}
	}
	if err := e.store.SetPointer(credset.Pointer{Active: j.Generation}); err != nil {
		return err
	}
	now := e.clock.Now()
	done := journal.Entry{Phase: journal.Idle, Generation: j.Generation, Result: protocol.JobSucceeded, JobID: j.JobID, CertificateID: j.CertificateID, StartedAt: j.StartedAt, FinishedAt: now, UpdatedAt: now}
	if err := e.journal.Write(done); err != nil {
		return err
	}
	if e.laps != nil {
		e.lap("commit")
		laps := map[string]float64{}
		for k, v := range e.laps {
			laps[k] = float64(v.Microseconds()) / 1000
		}
		e.laps = nil
		e.update(func(s *Status) { s.LastTimings = laps })
	}
	e.setPending("")
	e.refreshStatus()
	return e.startNext(ctx) // replies sent before the commit are now stale
}

// destroyKey deletes an operational key; the bootstrap key is never deleted.
func (e *Engine) destroyKey(ctx context.Context, uri string) {
	if uri == "" || uri == e.cfg.BootstrapKey {
		return
	}
	if err := e.keys.Delete(ctx, uri); err != nil && !errors.Is(err, keystore.ErrNotFound) {
		e.log.Warn("deleting previous operational key", "key", redactURI(uri), "err", err)
	}
}

// fail ends a rotation before the swap: job FAILED with the reason, staged
// key destroyed, credentials untouched.
func (e *Engine) fail(ctx context.Context, reason string) error {
	j := e.journal.Current()
	e.log.Warn("rotation failed", "job", j.JobID, "reason", reason)
	e.staged = nil
	e.dropSigner(j.KeyURI)
	if j.KeyURI != e.cfg.PreProvisoned {
		e.destroyKey(ctx, j.KeyURI)
	}
	e.store.Remove(j.Generation)
	now := e.clock.Now()
	if err := e.journal.Write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, JobID: j.JobID, Result: protocol.JobFailed, Reason: reason, FinishedAt: now, UpdatedAt: now}); err != nil {
		return err
	}
	e.retryAt = nil
	e.setPending("")
	e.refreshStatus()
	if err := e.updateJob(ctx, j.JobID, "FAILED", map[string]string{"reason": reason}); err != nil {
		return err
	}
	return e.startNext(ctx)
}

// finishRollback reports the rolled-back job FAILED and removes the refused
// credential.
func (e *Engine) finishRollback(ctx context.Context) error {
	j := e.journal.Current()
	if err := e.updateJob(ctx, j.JobID, "FAILED", map[string]string{"reason": j.Reason}); err != nil {
		return err
	}
	if j.KeyURI != e.cfg.PreProvisoned {
		e.dropSigner(j.KeyURI)
		e.destroyKey(ctx, j.KeyURI)
	}
	e.store.Remove(j.Generation)
	now := e.clock.Now()
	if err := e.journal.Write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, JobID: j.JobID, Result: protocol.ResultRolledBack, Reason: j.Reason, FinishedAt: now, UpdatedAt: now}); err != nil {
		return err
	}
	e.setPending("")
	e.refreshStatus()
	return e.startNext(ctx)
}

// retryDelay is how long to wait for a reply before asking again: the reply
// timeout plus a jittered, growing backoff (no fixed retry intervals).
func (e *Engine) retryDelay() time.Duration {
	d := e.cfg.ReplyTimeout + e.cfg.Backoff.Delay(e.replyTries)
	e.replyTries++
	return d
}

func (e *Engine) retry(ctx context.Context) error {
	j := e.journal.Current()
	var what string
	switch {
	case j.Phase == journal.KeyStaged && e.staged != nil:
		what = "certificate request"
	case j.Phase == journal.Switched && e.connCred.Generation == j.Generation:
		what = "acknowledgement"
	default:
		return nil
	}
	if e.unanswered >= maxUnanswered {
		e.log.Warn("no reply on this session; reconnecting", "request", what, "unanswered", e.unanswered)
		return fmt.Errorf("%w (%d %s requests, reply timeout %s)", errNoReply, e.unanswered, what, e.cfg.ReplyTimeout)
	}
	e.log.Info("no reply; asking again", "request", what, "unanswered", e.unanswered)
	if what == "acknowledgement" {
		return e.sendAck(ctx)
	}
	return e.sendGet(ctx)
}

// reconcile brings journal, pointer and stored generations into agreement
// after a start (or a crash).
func (e *Engine) reconcile(ctx context.Context) error {
	e.store.Cleanup()
	j := e.journal.Current()
	ptr, err := e.store.Pointer()
	if err != nil {
		e.log.Error("active pointer unreadable; using the bootstrap credential", "err", err)
		ptr = credset.Pointer{}
		if err := e.store.SetPointer(ptr); err != nil {
			return err
		}
	}
	switch j.Phase {
	case journal.CertStaged:
		if ptr.Active == j.Generation { // swapped, crashed before the journal write
			j.Phase = journal.Switched
			if err := e.journal.Write(j); err != nil {
				return err
			}
		} else if _, err := e.store.Get(j.Generation); err != nil { // never staged: start over
			if err := e.journal.Write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, JobID: j.JobID, Result: protocol.JobFailed, Reason: "staged certificate lost"}); err != nil {
				return err
			}
		}
	case journal.Switched:
		if ptr.Active != j.Generation {
			if err := e.store.SetPointer(credset.Pointer{Active: j.Generation, Previous: j.Previous}); err != nil {
				return err
			}
		}
	case journal.RolledBack:
		if ptr.Active != j.Previous {
			if err := e.store.SetPointer(credset.Pointer{Active: j.Previous}); err != nil {
				return err
			}
		}
	}
	// generations nobody points at are leftovers of interrupted rotations
	j = e.journal.Current()
	ptr, _ = e.store.Pointer()
	gens, _ := e.store.Generations()
	for _, g := range gens {
		if g == ptr.Active || g == ptr.Previous || (!idle(j.Phase) && g == j.Generation) || (j.Phase == journal.Committed && g == j.Previous) {
			continue
		}
		e.log.Info("removing unreferenced credential generation", "generation", g)
		e.store.Remove(g)
	}
	if ptr.Active > 0 && j.Phase != journal.Switched {
		c, err := e.store.Get(ptr.Active)
		if err == nil {
			var s interface{}
			s, err = e.keys.Open(ctx, c.KeyURI)
			if err == nil {
				if sg, ok := s.(interface{ Close() error }); ok {
					sg.Close()
				}
			}
		}
		if errors.Is(err, keystore.ErrNotFound) || errors.Is(err, credset.ErrNotFound) {
			e.log.Error("active operational credential is gone; falling back to the bootstrap credential", "generation", ptr.Active, "err", err)
			e.setError(fmt.Sprintf("operational credential generation %d missing (%v); using the bootstrap certificate", ptr.Active, err), "the TPM or token may have been cleared; a new rotation job will make a new key")
			if err := e.store.SetPointer(credset.Pointer{}); err != nil {
				return err
			}
		}
	}
	e.refreshStatus()
	return nil
}

func redactURI(raw string) string {
	u, err := keystore.ParseURI(raw)
	if err != nil {
		return "(invalid key URI)"
	}
	return u.Redacted()
}
