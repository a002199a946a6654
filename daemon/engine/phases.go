package engine

import (
	"context"
	"crypto"
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

// The rotation's phase transitions (journal.Phase):
//
//	idle -> key-staged        begin: job accepted, key made off the MQTT path
//	key-staged -> cert-staged onGetReply: certificate verified and stored
//	cert-staged -> switched   swap: active pointer replaced; reconnect with it
//	switched -> committed     onAckReply: the cloud saw the new certificate
//	committed -> idle         finishCommit: job SUCCEEDED, previous key destroyed
//	switched -> rolled-back   Engine.rollback: refused, or ack rejected
//	rolled-back -> idle       finishRollback: job FAILED, staged key destroyed
//	key/cert-staged -> idle   fail: job FAILED, nothing switched
//	key/cert-staged -> idle   endedInCloud: execution cancelled/removed, not reported
//	key/cert-staged -> rolled-back  abandon: the broker closed the connection
//	                          after deniedPublishes publishes to a document topic
//	switched -> rolled-back   a document topic refused, the session budget
//	                          spent, or the execution ended in the cloud
//
// A phase may start at most Config.PhaseSessions sessions (wedge.go).
//
// Each is one journal write; resume continues from any of them after a
// reconnect or a restart (reconcile runs first).

func idle(p journal.Phase) bool {
	return p == journal.Idle || p == journal.Committed || p == journal.RolledBack
}

// resume continues a rotation the journal says is in progress. Every
// session it resumes on counts against the phase's budget (wedge.go), and
// the job execution is described, so that one cancelled or removed while
// the device was away ends the rotation.
func (s *session) resume(ctx context.Context) error {
	e := s.e
	over, err := s.countSession()
	if err != nil {
		return err
	}
	if over {
		return s.overBudget(ctx)
	}
	j := e.journal.Current()
	switch j.Phase {
	case journal.KeyStaged, journal.Switched:
		if err := s.describeJob(ctx); err != nil {
			return err
		}
	}
	switch j.Phase {
	case journal.KeyStaged:
		if e.rot.staged == nil && !e.rot.keygenBusy {
			e.startKeygen(j.Generation, j.KeyURI, j.Mode)
		} else if e.rot.staged != nil {
			return s.sendGet(ctx)
		}
	case journal.CertStaged:
		return s.swap(ctx)
	case journal.Switched:
		if s.cred.Generation == j.Generation {
			e.lap("reconnect")
			return s.sendAck(ctx)
		}
	case journal.Committed:
		return s.finishCommit(ctx, true)
	case journal.RolledBack:
		return s.finishRollback(ctx, true)
	}
	return nil
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

// begin starts a rotation for a job execution (idle -> key-staged).
func (s *session) begin(ctx context.Context, x *protocol.JobExecution) error {
	e := s.e
	if err := s.clockOK(); err != nil {
		return err // the job stays pending; start-next finds it again
	}
	e.setPending(x.JobID)
	doc, err := protocol.ParseJobDocument(x.JobDocument)
	if err != nil {
		e.log.Warn("job refused", "job", x.JobID, "err", err)
		e.setResult(protocol.JobFailed, "job "+x.JobID+": "+err.Error())
		return s.updateJob(ctx, x.JobID, protocol.JobFailed, map[string]string{"reason": err.Error()})
	}
	ptr, _ := e.store.Pointer()
	gen := e.nextGeneration()
	mode, keyURI := credset.ModeOnDemand, ""
	switch {
	case e.cfg.PreProvisionedKey != "" && ptr.Active == 0:
		mode, keyURI = credset.ModePreProvisioned, e.cfg.PreProvisionedKey
	case e.cfg.OperationalFn != nil:
		keyURI = e.cfg.OperationalFn(gen)
	}
	if keyURI == "" {
		reason := "no operational key template configured (identity.operational_key) for a renewal"
		e.setResult(protocol.JobFailed, reason)
		return s.updateJob(ctx, x.JobID, protocol.JobFailed, map[string]string{"reason": reason})
	}
	now := e.clock.Now()
	entry := journal.Entry{Phase: journal.KeyStaged, JobID: x.JobID, ClientToken: token(), Generation: gen,
		Previous: ptr.Active, KeyURI: keyURI, KeyRole: credset.RoleStaged, Mode: mode, Doc: &doc, StartedAt: now, UpdatedAt: now}
	if err := e.journal.Write(entry); err != nil {
		return fmt.Errorf("starting rotation: %w", err)
	}
	s.startToken = ""
	s.jobAnswersRequest(x.JobID, now)
	e.rot = rotation{keygenBusy: e.rot.keygenBusy, laps: map[string]time.Duration{}, lapMark: now}
	e.refreshStatus()
	e.log.Info("rotation started", "job", x.JobID, "generation", gen, "mode", mode)
	e.startKeygen(gen, keyURI, mode)
	return nil
}

// onKeygen takes the staged key made off the MQTT path.
func (s *session) onKeygen(ctx context.Context, r keygenResult) error {
	e := s.e
	e.rot.keygenBusy = false
	j := e.journal.Current()
	if j.Phase != journal.KeyStaged || j.Generation != r.gen {
		if r.signer != nil {
			keystore.CloseSigner(r.signer)
		}
		// the rotation ended while its key was being made (failed,
		// cancelled): the key made after the cleanup is destroyed too
		if ptr, _ := e.store.Pointer(); r.err == nil && r.gen != ptr.Active && r.gen != ptr.Previous && (idle(j.Phase) || j.Generation != r.gen) {
			e.destroyKey(ctx, r.uri, credset.RoleStaged, r.mode)
		}
		return nil
	}
	if r.err != nil {
		return s.fail(ctx, fmt.Sprintf("staging key %s: %v", redactURI(j.KeyURI), r.err))
	}
	e.rot.staged = r.signer
	e.keepSigner(j.KeyURI, r.signer) // the reconnect after the swap uses it
	e.lap("key")
	s.updateJob(ctx, j.JobID, protocol.JobInProgress, map[string]string{"progress": "key-staged"})
	return s.sendGet(ctx)
}

// sendGet asks the cloud for the staged key's certificate.
func (s *session) sendGet(ctx context.Context) error {
	e := s.e
	j := e.journal.Current()
	get := j.Doc.Get.Expand(e.cfg.Thing)
	if err := s.subscribe(ctx, get.Subscribe); err != nil {
		if isDenied(err) {
			return s.subscribeDenied(ctx, get.Subscribe, err)
		}
		return err
	}
	req := protocol.GetRequest{JobID: j.JobID, ClientToken: j.ClientToken}
	if j.Mode != credset.ModePreProvisioned {
		// One CSR per rotation, journalled: retries and restarts send the
		// same bytes, so the vendor (idempotent per thing, job and CSR)
		// answers with the same certificate instead of issuing another.
		if j.CSR == "" || !csrMatches(j.CSR, e.rot.staged.Public()) {
			der, err := csr.Create(e.rot.staged, e.cfg.Thing)
			if err != nil {
				return s.fail(ctx, fmt.Sprintf("making the CSR with the staged key: %v", err))
			}
			j.CSR = string(pem.EncodeToMemory(&pem.Block{Type: csr.PEMType, Bytes: der}))
			if err := e.journal.Write(j); err != nil {
				return err
			}
		}
		req.CSR = j.CSR
		req.Attestation = s.attest(ctx, j.KeyURI, j.JobID, j.ClientToken)
	}
	if err := s.publishJSON(ctx, get.Publish, req); err != nil {
		return s.publishLost(get.Publish, err)
	}
	s.docPublish = get.Publish
	e.lap("csr+publish")
	s.asked("certificate request")
	return nil
}

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

// onGetReply verifies and stores the delivered certificate (key-staged ->
// cert-staged), then swaps.
func (s *session) onGetReply(ctx context.Context, suffix string, payload []byte) error {
	e := s.e
	j := e.journal.Current()
	if j.Phase != journal.KeyStaged || e.rot.staged == nil {
		return nil // duplicate or late
	}
	switch suffix {
	case protocol.SuffixRejected:
		var r protocol.Rejected
		if err := protocol.Decode("get/rejected", payload, &r); err != nil {
			return s.fail(ctx, "undecodable rejection: "+err.Error())
		}
		if r.ClientToken != j.ClientToken {
			return nil
		}
		s.answered()
		if r.Retryable {
			e.log.Warn("certificate request rejected, retrying", "code", r.Code, "message", r.Message)
			s.retryAt = e.clock.After(e.retryDelay())
			return nil
		}
		return s.fail(ctx, fmt.Sprintf("certificate request rejected: %s: %s", r.Code, r.Message))
	case protocol.SuffixAccepted:
	default:
		return nil
	}
	var a protocol.GetAccepted
	if err := protocol.Decode("get/accepted", payload, &a); err != nil {
		return s.fail(ctx, "certificate reply refused: "+err.Error())
	}
	if a.ClientToken != j.ClientToken {
		return nil
	}
	if err := s.clockOK(); err != nil {
		// judged on a sane clock after the wait: the resumed session
		// sends the journalled CSR again and the vendor answers with the
		// same certificate
		return err
	}
	e.lap("wait-get")
	e.rot.replyTries = 0
	s.answered()
	pemData := []byte(a.CertificatePEM)
	if len(pemData) == 0 {
		if a.Location == "" {
			return s.fail(ctx, "certificate reply has neither certificatePem nor location")
		}
		if e.fetch == nil {
			return s.fail(ctx, "certificate reply has only a location and downloads are not configured (verify.location_hosts)")
		}
		data, err := e.fetch.Fetch(ctx, a.Location)
		if err != nil {
			return s.fail(ctx, "certificate download refused: "+err.Error())
		}
		pemData = packagePEM(data)
	}
	chain, err := ParseCertificatePEM(pemData)
	if err == nil {
		err = VerifyCertificate(chain, e.rot.staged.Public(), VerifyOptions{Thing: e.cfg.Thing, IssuerSHA256: e.cfg.IssuerSHA256, Now: e.clock.Now()})
	}
	if err == nil && a.CertificateID != "" && a.CertificateID != protocol.CertificateID(chain[0].Raw) {
		err = fmt.Errorf("%w: certificateId %q does not match the certificate", ErrBadCertificate, a.CertificateID)
	}
	if err != nil {
		return s.fail(ctx, err.Error())
	}
	leaf := chain[0]
	cred := &credset.Credential{Generation: j.Generation, KeyURI: j.KeyURI, Chain: chain, Meta: credset.Meta{
		Generation: j.Generation, CertificateID: protocol.CertificateID(leaf.Raw), JobID: j.JobID,
		Issuer: leaf.Issuer.String(), NotAfter: leaf.NotAfter, CreatedAt: e.clock.Now(),
		KeyRole: credset.RoleOperational, Mode: j.Mode, Attested: a.Attested}}
	if err := e.store.Put(cred); errors.Is(err, credset.ErrExists) {
		// stored before a crash, with a certificate for a key made again
		if err := e.store.Remove(j.Generation); err != nil {
			return err
		}
		if err := e.store.Put(cred); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	j.Phase = journal.CertStaged
	j.Sessions, j.Denials = 0, 0
	j.CertificateID = cred.Meta.CertificateID
	j.UpdatedAt = e.clock.Now()
	if err := e.journal.Write(j); err != nil {
		return err
	}
	e.refreshStatus()
	s.updateJob(ctx, j.JobID, protocol.JobInProgress, map[string]string{"progress": "cert-staged", "certificateId": j.CertificateID})
	return s.swap(ctx)
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

// swap makes the staged credential active (one atomic pointer write;
// cert-staged -> switched) and ends the session so that the engine
// reconnects with it.
func (s *session) swap(ctx context.Context) error {
	e := s.e
	j := e.journal.Current()
	if err := e.store.SetPointer(credset.Pointer{Active: j.Generation, Previous: j.Previous}); err != nil {
		return fmt.Errorf("switching credentials: %w", err)
	}
	j.Phase = journal.Switched
	j.Sessions, j.Denials = 0, 0
	j.UpdatedAt = e.clock.Now()
	if err := e.journal.Write(j); err != nil {
		return err
	}
	e.refreshStatus()
	s.updateJob(ctx, j.JobID, protocol.JobInProgress, map[string]string{"progress": "switched", "certificateId": j.CertificateID})
	e.lap("verify+store+swap")
	e.rot.replyTries = 0
	e.log.Info("switched credentials", "generation", j.Generation)
	e.rot.staged = nil // stays open in the signer cache for the reconnect
	return errSwitch
}

// sendAck acknowledges the new certificate over a session made with it.
func (s *session) sendAck(ctx context.Context) error {
	j := s.e.journal.Current()
	ack := j.Doc.Ack.Expand(s.e.cfg.Thing)
	if err := s.subscribe(ctx, ack.Subscribe); err != nil {
		if isDenied(err) {
			return s.subscribeDenied(ctx, ack.Subscribe, err)
		}
		return err
	}
	if err := s.publishJSON(ctx, ack.Publish, protocol.AckRequest{JobID: j.JobID, ClientToken: j.ClientToken, CertificateID: j.CertificateID}); err != nil {
		return s.publishLost(ack.Publish, err)
	}
	s.docPublish = ack.Publish
	s.asked("acknowledgement")
	return nil
}

// onAckReply commits (switched -> committed) or rolls back.
func (s *session) onAckReply(ctx context.Context, suffix string, payload []byte) error {
	e := s.e
	j := e.journal.Current()
	if j.Phase != journal.Switched || s.cred.Generation != j.Generation {
		return nil
	}
	switch suffix {
	case protocol.SuffixAccepted:
		var a protocol.AckAccepted
		if err := protocol.Decode("ack/accepted", payload, &a); err != nil || a.ClientToken != j.ClientToken {
			return nil
		}
		s.answered()
		j.Phase = journal.Committed
		j.Sessions, j.Denials = 0, 0
		j.UpdatedAt = e.clock.Now()
		if err := e.journal.Write(j); err != nil {
			return err
		}
		s.retryAt = nil
		e.lap("wait-ack")
		e.rot.replyTries = 0
		e.log.Info("rotation committed", "job", j.JobID, "generation", j.Generation)
		return s.finishCommit(ctx, true)
	case protocol.SuffixRejected:
		var r protocol.Rejected
		if err := protocol.Decode("ack/rejected", payload, &r); err != nil || r.ClientToken != j.ClientToken {
			return nil
		}
		s.answered()
		if r.Retryable {
			s.retryAt = e.clock.After(e.retryDelay())
			return nil
		}
		e.rollback(fmt.Sprintf("acknowledgement rejected: %s: %s", r.Code, r.Message))
		return errSwitch
	}
	return nil
}

// finishCommit is idempotent (committed -> idle): job SUCCEEDED, previous
// operational key destroyed (never the bootstrap key), journal idle. With
// report false (the phase is over its session budget) the SUCCEEDED update
// is sent without waiting for its PUBACK: the rotation has happened, and
// the job's in-progress timeout settles it in the cloud if it is lost.
func (s *session) finishCommit(ctx context.Context, report bool) error {
	e := s.e
	j := e.journal.Current()
	details := map[string]string{"progress": "committed", "certificateId": j.CertificateID}
	if !report {
		s.updateJobNoWait(j.JobID, protocol.JobSucceeded, details)
	} else if err := s.updateJob(ctx, j.JobID, protocol.JobSucceeded, details); err != nil {
		return err
	}
	if j.Previous > 0 {
		if prev, err := e.store.Get(j.Previous); err == nil {
			e.destroyKey(ctx, prev.KeyURI, prev.Meta.KeyRole, prev.Meta.Mode)
		}
		e.removeGeneration(j.Previous, "replaced by a committed generation")
	}
	if err := e.store.SetPointer(credset.Pointer{Active: j.Generation}); err != nil {
		return err
	}
	now := e.clock.Now()
	done := journal.Entry{Phase: journal.Idle, Generation: j.Generation, Result: protocol.JobSucceeded, JobID: j.JobID, CertificateID: j.CertificateID, StartedAt: j.StartedAt, FinishedAt: now, UpdatedAt: now}
	if err := e.journal.Write(done); err != nil {
		return err
	}
	if e.rot.laps != nil {
		e.lap("commit")
		laps := map[string]float64{}
		for k, v := range e.rot.laps {
			laps[k] = float64(v.Microseconds()) / 1000
		}
		e.rot.laps = nil
		e.update(func(st *Status) { st.LastTimings = laps })
	}
	e.setPending("")
	e.refreshStatus()
	return s.startNext(ctx) // replies sent before the commit are now stale
}

// fail ends a rotation before the swap (key-staged or cert-staged -> idle):
// job FAILED with the reason, staged key destroyed unless the factory made
// it, credentials untouched.
func (s *session) fail(ctx context.Context, reason string) error {
	e := s.e
	j := e.journal.Current()
	e.log.Warn("rotation failed", "job", j.JobID, "reason", reason)
	e.rot.staged = nil
	e.destroyKey(ctx, j.KeyURI, j.KeyRole, j.Mode)
	e.removeGeneration(j.Generation, "rotation failed")
	now := e.clock.Now()
	if err := e.journal.Write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, JobID: j.JobID, Result: protocol.JobFailed, Reason: reason, FinishedAt: now, UpdatedAt: now}); err != nil {
		return err
	}
	s.retryAt = nil
	e.setPending("")
	e.refreshStatus()
	if err := s.updateJob(ctx, j.JobID, protocol.JobFailed, map[string]string{"reason": reason}); err != nil {
		return err
	}
	return s.startNext(ctx)
}

// finishRollback (rolled-back -> idle) reports the rolled-back job FAILED
// and removes the refused credential. A job execution the cloud ended
// (cancelled, removed, timed out) is not reported; with report false (over
// the session budget) the FAILED update does not wait for its PUBACK.
func (s *session) finishRollback(ctx context.Context, report bool) error {
	e := s.e
	j := e.journal.Current()
	result := protocol.ResultRolledBack
	switch {
	case endedInCloud(j.Result):
		result = j.Result
	case !report:
		s.updateJobNoWait(j.JobID, protocol.JobFailed, map[string]string{"reason": j.Reason})
	default:
		if err := s.updateJob(ctx, j.JobID, protocol.JobFailed, map[string]string{"reason": j.Reason}); err != nil {
			return err
		}
	}
	if j.Abandoned && result == protocol.ResultRolledBack {
		result = protocol.JobFailed // nothing had been switched
	}
	e.destroyKey(ctx, j.KeyURI, j.KeyRole, j.Mode)
	e.removeGeneration(j.Generation, "rolled back")
	now := e.clock.Now()
	if err := e.journal.Write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, JobID: j.JobID, Result: result, Reason: j.Reason, FinishedAt: now, UpdatedAt: now}); err != nil {
		return err
	}
	e.setPending("")
	e.refreshStatus()
	return s.startNext(ctx)
}
