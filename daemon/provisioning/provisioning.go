// Package provisioning is bootcertd's onboarding by claim (identity.mode =
// "fleet-provisioning"): with the claim certificate it asks AWS IoT fleet
// provisioning for its first operational certificate, for a key made in its
// own TPM or token, and installs it as credential generation 1 with the
// rotation engine's journal, credential store and atomic pointer swap. The
// daemon then starts the rotation engine as for any device.
//
// Steps, each one journal transition (daemon/journal), so that a crash at any
// point resumes or starts over and never leaves a consumed claim with no
// identity:
//
//	idle        -> key-staged   operational key made in hardware (never the claim key), CSR journalled
//	key-staged  -> cert-staged  CreateCertificateFromCsr: certificate stored as generation 1; token in provisioning.json
//	cert-staged -> switched     RegisterThing accepted: pointer -> generation 1
//	switched    -> committed -> idle  the new credential connected
//
// Recovery: an ownership token that is used, expired (one hour) or lost is
// answered by connecting with the staged certificate (it was registered) or,
// if that is refused, by starting over from the same key (the hook admits the
// same key again: same device). A new credential the broker keeps refusing
// is rolled back (pointer to 0) and provisioning starts over.
package provisioning

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/daemon/session"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/protocol"
)

// JobID marks the journal entries of onboarding by claim.
const JobID = "fleet-provisioning"

// StateFile holds the ownership token between CreateCertificateFromCsr and
// RegisterThing (0600; the token is never logged).
const StateFile = "provisioning.json"

// ClientIDPrefix is the client ID prefix the claim policy allows.
const ClientIDPrefix = "bootcert-provision-"

// Config configures onboarding.
type Config struct {
	Thing      string            // the thing name to expect (= the serial number)
	Template   string            // provisioning template name
	Parameters map[string]string // RegisterThing parameters (SerialNumber, ...)

	ClaimKey       string // claim key URI
	Claim          []*x509.Certificate
	OperationalKey string // key URI of generation 1
	Algorithm      keystore.Algorithm
	StateDir       string

	// Session is the broker connection; ClientID is replaced.
	Session      session.Config
	ReplyTimeout time.Duration
	// Retry is the wait between failed attempts (full jitter is not needed:
	// devices of a batch start at different times).
	Retry time.Duration
	// RetryMax caps the wait, which doubles after each failure (a refusal
	// by the hook is not retried in a tight loop).
	RetryMax time.Duration
	// Refusals of the new credential before it is rolled back.
	Refusals int

	Clock clock.Clock
	Log   *slog.Logger
	// Dial connects (nil: session.Dial); tests and the crash matrix use it.
	Dial func(ctx context.Context, cfg session.Config, c session.Credential) (Conn, error)
}

// Conn is a connected session.
type Conn interface {
	Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error
	Publish(ctx context.Context, topic string, payload []byte) error
	Close(quiesce time.Duration)
}

type state struct {
	CertificateID string    `json:"certificateId"`
	Token         string    `json:"certificateOwnershipToken"`
	Expires       time.Time `json:"expires"`
}

// Onboarded reports whether the state directory already holds an active
// operational credential (the flow is done).
func Onboarded(stateDir string) (bool, error) {
	st, err := credset.Open(stateDir)
	if err != nil {
		return false, err
	}
	ptr, err := st.Pointer()
	if err != nil {
		return false, err
	}
	j, err := journal.Open(stateDir)
	if err != nil {
		return false, err
	}
	ph := j.Current().Phase
	return ptr.Active > 0 && (ph == journal.Idle || ph == journal.Committed || ph == ""), nil
}

type flow struct {
	cfg   Config
	log   *slog.Logger
	j     *journal.Journal
	store *credset.Store
	key   crypto.Signer
}

// Run onboards the device and returns when it has an operational
// credential (at once when it already has one), or when ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 5 * time.Second
	}
	if cfg.RetryMax < cfg.Retry {
		cfg.RetryMax = max(cfg.Retry, 5*time.Minute)
	}
	if cfg.ReplyTimeout <= 0 {
		cfg.ReplyTimeout = 30 * time.Second
	}
	if cfg.Refusals <= 0 {
		cfg.Refusals = 3
	}
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, sc session.Config, c session.Credential) (Conn, error) {
			return session.Dial(ctx, sc, c)
		}
	}
	if cfg.OperationalKey == cfg.ClaimKey {
		return errors.New("provisioning: the operational key must not be the claim key")
	}
	f := &flow{cfg: cfg, log: cfg.Log.With("component", "provisioning")}
	var err error
	if f.store, err = credset.Open(cfg.StateDir); err != nil {
		return err
	}
	if f.j, err = journal.Open(cfg.StateDir); err != nil {
		return err
	}
	defer func() {
		if f.key != nil {
			keystore.CloseSigner(f.key)
		}
	}()
	// A rotation of the engine in progress (after onboarding) is the
	// engine's to resume, not ours.
	if j := f.j.Current(); j.Phase != journal.Idle && j.Phase != "" && j.JobID != JobID {
		return nil
	}
	refused := 0
	delay := cfg.Retry
	for {
		done, err := f.step(ctx, &refused)
		if done {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			delay = cfg.Retry
			continue
		}
		f.log.Warn("onboarding by claim: step failed; retrying", "phase", f.j.Current().Phase, "err", err, "retryIn", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-cfg.Clock.After(delay):
		}
		delay = min(delay*2, cfg.RetryMax)
	}
}

func (f *flow) write(e journal.Entry) error {
	e.UpdatedAt = f.cfg.Clock.Now()
	return f.j.Write(e)
}

// step advances one phase; done is true once onboarded.
func (f *flow) step(ctx context.Context, refused *int) (done bool, err error) {
	j := f.j.Current()
	ptr, err := f.store.Pointer()
	if err != nil {
		return false, err
	}
	switch j.Phase {
	case journal.Idle, "":
		if ptr.Active > 0 {
			return true, nil
		}
		now := f.cfg.Clock.Now()
		return false, f.write(journal.Entry{Phase: journal.KeyStaged, JobID: JobID, Generation: 1, KeyURI: f.cfg.OperationalKey,
			KeyRole: credset.RoleStaged, Mode: credset.ModeOnDemand, StartedAt: now})
	case journal.KeyStaged:
		if err := f.stageKey(ctx, &j); err != nil {
			return false, err
		}
		return false, f.createCertificate(ctx, j)
	case journal.CertStaged:
		if ptr.Active == j.Generation { // swapped, crashed before the journal write
			j.Phase = journal.Switched
			return false, f.write(j)
		}
		return false, f.register(ctx, j)
	case journal.Switched:
		if ptr.Active != j.Generation {
			if err := f.store.SetPointer(credset.Pointer{Active: j.Generation}); err != nil {
				return false, err
			}
		}
		return f.confirm(ctx, j, refused)
	case journal.Committed:
		os.Remove(filepath.Join(f.cfg.StateDir, StateFile))
		return true, f.write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, Result: protocol.JobSucceeded, Reason: "onboarded by claim", FinishedAt: f.cfg.Clock.Now()})
	case journal.RolledBack:
		if ptr.Active != 0 {
			if err := f.store.SetPointer(credset.Pointer{}); err != nil {
				return false, err
			}
		}
		return false, f.write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, Result: protocol.JobFailed, Reason: j.Reason, FinishedAt: f.cfg.Clock.Now()})
	}
	return false, fmt.Errorf("provisioning: journal phase %q", j.Phase)
}

// stageKey opens or makes the operational key and journals its CSR.
func (f *flow) stageKey(ctx context.Context, j *journal.Entry) error {
	if f.key == nil {
		k, err := keystore.Open(ctx, j.KeyURI)
		if errors.Is(err, keystore.ErrNotFound) {
			f.log.Info("generating the operational key in hardware", "key", redacted(j.KeyURI))
			k, err = keystore.Generate(ctx, j.KeyURI, f.cfg.Algorithm)
		}
		if err != nil {
			return fmt.Errorf("operational key %s: %w", redacted(j.KeyURI), err)
		}
		f.key = k
	}
	if j.CSR != "" {
		return nil
	}
	der, err := csr.Create(f.key, f.cfg.Thing)
	if err != nil {
		return fmt.Errorf("CSR: %w", err)
	}
	j.CSR = string(csr.EncodePEM(der))
	return f.write(*j)
}

func redacted(uri string) string {
	if u, err := keystore.ParseURI(uri); err == nil {
		return u.Redacted()
	}
	return "(key URI)"
}

// request publishes one fleet provisioning request on a claim connection
// and waits for its reply.
func (f *flow) request(ctx context.Context, c Conn, topic string, req any) (accepted bool, payload []byte, err error) {
	ch := make(chan struct {
		topic   string
		payload []byte
	}, 2)
	for _, suffix := range []string{"/accepted", "/rejected"} {
		if err := c.Subscribe(ctx, topic+suffix, func(t string, p []byte) {
			select {
			case ch <- struct {
				topic   string
				payload []byte
			}{t, append([]byte(nil), p...)}:
			default:
			}
		}); err != nil {
			return false, nil, fmt.Errorf("subscribing to %s%s: %w", topic, suffix, err)
		}
	}
	b, _ := json.Marshal(req)
	if err := c.Publish(ctx, topic, b); err != nil {
		return false, nil, fmt.Errorf("publishing %s: %w", topic, err)
	}
	select {
	case m := <-ch:
		return m.topic == topic+"/accepted", m.payload, nil
	case <-f.cfg.Clock.After(f.cfg.ReplyTimeout):
		return false, nil, fmt.Errorf("no reply on %s/accepted or /rejected within %s", topic, f.cfg.ReplyTimeout)
	case <-ctx.Done():
		return false, nil, ctx.Err()
	}
}

func (f *flow) claimConn(ctx context.Context) (Conn, error) {
	sc := f.cfg.Session
	sc.ClientID = ClientIDPrefix + f.cfg.Thing
	var chain [][]byte
	for _, c := range f.cfg.Claim {
		chain = append(chain, c.Raw)
	}
	signer, err := keystore.Open(ctx, f.cfg.ClaimKey)
	if err != nil {
		return nil, fmt.Errorf("claim key %s: %w", redacted(f.cfg.ClaimKey), err)
	}
	c, err := f.cfg.Dial(ctx, sc, session.Credential{Chain: chain, Signer: signer})
	if err != nil {
		keystore.CloseSigner(signer)
		return nil, fmt.Errorf("connecting with the claim certificate: %w", err)
	}
	return &closing{Conn: c, signer: signer}, nil
}

type closing struct {
	Conn
	signer crypto.Signer
}

func (c *closing) Close(q time.Duration) {
	c.Conn.Close(q)
	keystore.CloseSigner(c.signer)
}

func rejection(payload []byte) *protocol.ProvisioningError {
	var e protocol.ProvisioningError
	if json.Unmarshal(payload, &e) != nil || e.ErrorCode == "" {
		return &protocol.ProvisioningError{ErrorCode: "unparseable", ErrorMessage: fmt.Sprintf("%.200q", payload)}
	}
	return &e
}

// createCertificate runs CreateCertificateFromCsr and stages the
// certificate as generation 1.
func (f *flow) createCertificate(ctx context.Context, j journal.Entry) error {
	c, err := f.claimConn(ctx)
	if err != nil {
		return err
	}
	defer c.Close(0)
	ok, payload, err := f.request(ctx, c, protocol.TopicCreateFromCSR, protocol.CreateCertificateFromCSRRequest{CertificateSigningRequest: j.CSR})
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("CreateCertificateFromCsr rejected: %w", rejection(payload))
	}
	var out protocol.CreateCertificateFromCSRResponse
	if err := json.Unmarshal(payload, &out); err != nil {
		return fmt.Errorf("CreateCertificateFromCsr reply: %w", err)
	}
	chain, err := protocol.ParseChain([]byte(out.CertificatePEM))
	if err != nil {
		return fmt.Errorf("CreateCertificateFromCsr certificate: %w", err)
	}
	leaf := chain[0]
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(f.key.Public()) {
		return errors.New("CreateCertificateFromCsr returned a certificate for another key")
	}
	if id := protocol.CertificateID(leaf.Raw); id != out.CertificateID {
		return fmt.Errorf("CreateCertificateFromCsr: certificateId %q does not match the certificate", out.CertificateID)
	}
	now := f.cfg.Clock.Now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return fmt.Errorf("CreateCertificateFromCsr: certificate valid %s to %s, not now", leaf.NotBefore, leaf.NotAfter)
	}
	st := state{CertificateID: out.CertificateID, Token: out.CertificateOwnershipToken, Expires: now.Add(protocol.OwnershipTokenLifetime)}
	b, _ := json.Marshal(st)
	if err := atomicfile.WriteFile(filepath.Join(f.cfg.StateDir, StateFile), b, 0o600); err != nil {
		return err
	}
	cred := &credset.Credential{Generation: j.Generation, KeyURI: j.KeyURI, Chain: chain, Meta: credset.Meta{
		Generation: j.Generation, CertificateID: out.CertificateID, JobID: JobID, Issuer: leaf.Issuer.String(),
		NotAfter: leaf.NotAfter, CreatedAt: now, KeyRole: credset.RoleOperational, Mode: credset.ModeOnDemand}}
	if err := f.store.Put(cred); errors.Is(err, credset.ErrExists) {
		if err := f.store.Remove(j.Generation); err != nil {
			return err
		}
		err = f.store.Put(cred)
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	f.log.Info("CreateCertificateFromCsr accepted: certificate staged as generation 1", "certificateId", out.CertificateID)
	j.Phase, j.CertificateID = journal.CertStaged, out.CertificateID
	return f.write(j)
}

// register runs RegisterThing with the ownership token.
func (f *flow) register(ctx context.Context, j journal.Entry) error {
	var st state
	b, err := os.ReadFile(filepath.Join(f.cfg.StateDir, StateFile))
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		f.log.Warn("provisioning state unreadable", "err", err)
	}
	if st.CertificateID != j.CertificateID || st.Token == "" || f.cfg.Clock.Now().After(st.Expires) {
		return f.tokenGone(ctx, j, "no valid ownership token for the staged certificate")
	}
	c, err := f.claimConn(ctx)
	if err != nil {
		return err
	}
	ok, payload, err := f.request(ctx, c, protocol.ProvisionTopic(f.cfg.Template), protocol.RegisterThingRequest{CertificateOwnershipToken: st.Token, Parameters: f.cfg.Parameters})
	c.Close(0)
	if err != nil {
		return err
	}
	if !ok {
		rej := rejection(payload)
		if rej.ErrorCode == protocol.ProvisioningInvalidToken {
			return f.tokenGone(ctx, j, rej.Error())
		}
		return fmt.Errorf("RegisterThing rejected: %w", rej)
	}
	var out protocol.RegisterThingResponse
	if err := json.Unmarshal(payload, &out); err != nil {
		return fmt.Errorf("RegisterThing reply: %w", err)
	}
	if out.ThingName != f.cfg.Thing {
		return fmt.Errorf("RegisterThing provisioned thing %q, this device is %q (identity.thing_name / provisioning.serial_number)", out.ThingName, f.cfg.Thing)
	}
	f.log.Info("RegisterThing accepted", "thing", out.ThingName, "certificateId", j.CertificateID)
	if err := f.store.SetPointer(credset.Pointer{Active: j.Generation}); err != nil {
		return err
	}
	j.Phase = journal.Switched
	return f.write(j)
}

// tokenGone: the staged certificate may have been registered before a crash
// (its token then is used); try it, else start over from the same key.
func (f *flow) tokenGone(ctx context.Context, j journal.Entry, why string) error {
	if err := f.probe(ctx, j.Generation); err == nil {
		f.log.Info("the staged certificate connects: it was registered before", "certificateId", j.CertificateID)
		if err := f.store.SetPointer(credset.Pointer{Active: j.Generation}); err != nil {
			return err
		}
		j.Phase = journal.Switched
		return f.write(j)
	}
	f.log.Info("starting over from the same key", "reason", why)
	return f.write(journal.Entry{Phase: journal.Idle, Generation: j.Generation, Result: protocol.JobFailed, Reason: why, FinishedAt: f.cfg.Clock.Now()})
}

// probe connects once with generation gen as the thing.
func (f *flow) probe(ctx context.Context, gen int) error {
	cred, err := f.store.Get(gen)
	if err != nil {
		return err
	}
	var chain [][]byte
	for _, c := range cred.Chain {
		chain = append(chain, c.Raw)
	}
	signer := f.key
	if signer == nil {
		if signer, err = keystore.Open(ctx, cred.KeyURI); err != nil {
			return err
		}
		f.key = signer
	}
	sc := f.cfg.Session
	sc.ClientID = f.cfg.Thing
	c, err := f.cfg.Dial(ctx, sc, session.Credential{Chain: chain, Signer: signer})
	if err != nil {
		return err
	}
	c.Close(0)
	return nil
}

// confirm connects with the new credential; refusals roll it back.
func (f *flow) confirm(ctx context.Context, j journal.Entry, refused *int) (bool, error) {
	err := f.probe(ctx, j.Generation)
	if err == nil {
		f.log.Info("onboarded by claim: connected with generation 1", "thing", f.cfg.Thing, "certificateId", j.CertificateID)
		j.Phase, j.Result, j.FinishedAt = journal.Committed, protocol.JobSucceeded, f.cfg.Clock.Now()
		return false, f.write(j)
	}
	var ce interface{ Refused() bool }
	if errors.As(err, &ce) && ce.Refused() {
		*refused++
		if *refused >= f.cfg.Refusals {
			*refused = 0
			j.Phase, j.Reason = journal.RolledBack, "the new credential was refused: "+err.Error()
			if err := f.store.SetPointer(credset.Pointer{}); err != nil {
				return false, err
			}
			return false, f.write(j)
		}
	}
	return false, err
}
