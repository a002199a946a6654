// Package engine is bootcertd's rotation state machine (DESIGN.md section 3):
// it keeps one MQTT session with the first credential the broker accepts,
// runs rotation jobs through the AWS IoT Jobs MQTT API, stages a key in
// hardware, verifies the new certificate, swaps credentials atomically, rolls
// back after repeated refusals, acknowledges over the new certificate and
// commits. Every step is journalled so that a crash at any instant resumes.
//
// Files by job:
//
//	engine.go     the Engine, its configuration and the connect loop
//	session.go    one MQTT connection: its state dies with it
//	jobs.go       the AWS IoT Jobs MQTT API client (start-next, update)
//	phases.go     the rotation's phase transitions
//	reconcile.go  bringing journal, pointer and credentials into agreement after a start
//	keys.go       opening, staging and destroying keys by role
//	status.go     what `bootcertctl status` shows
//	verify.go     checking and downloading a delivered certificate
//
// It runs over small ports it owns (Dialer/Conn, Keys, Fetcher) and
// internal/clock, so the same code runs against fakes in unit tests and
// against the real session, keystore and lab.
package engine

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// Credential is a credential set the engine can connect with.
type Credential struct {
	Generation int // 0 = bootstrap
	KeyURI     string
	// Role is the key's role: credset.RoleBootstrap for generation 0,
	// credset.RoleOperational for a stored generation.
	Role  credset.KeyRole
	Chain []*x509.Certificate
	// Attested: the cloud verified the key's TPM attestation at issuance.
	Attested bool
	Signer   crypto.Signer // opened lazily
}

// Leaf is the device certificate.
func (c *Credential) Leaf() *x509.Certificate { return c.Chain[0] }

// CertificateID is the AWS IoT certificate ID of the leaf.
func (c *Credential) CertificateID() string { return protocol.CertificateID(c.Leaf().Raw) }

// ChainDER is the chain as DER, leaf first.
func (c *Credential) ChainDER() [][]byte {
	var out [][]byte
	for _, x := range c.Chain {
		out = append(out, x.Raw)
	}
	return out
}

// Config is what the engine needs to know.
type Config struct {
	Thing         string
	Endpoint      string
	BootstrapKey  string
	Bootstrap     []*x509.Certificate
	OperationalFn func(gen int) string // "" when not configured
	// PreProvisionedKey is the factory-made operational key's URI
	// (identity.mode = pre-provisioned): the first rotation uses it; ""
	// makes every key on demand.
	PreProvisionedKey string
	Algorithm         keystore.Algorithm
	StateDir          string

	ReplyTimeout time.Duration
	// Backoff paces reconnects after network failures and refusals.
	Backoff Backoff
	// KeyRetryInitial and KeyRetryMax pace reconnects when every credential
	// failed on its key, not the network: a key file the daemon may not
	// read, a missing PIN file, a TPM or token that does not answer. Those
	// are fixed by hand on the device, so the daemon looks again soon: the
	// delay doubles from KeyRetryInitial (default 1s) to KeyRetryMax
	// (default 30s), without jitter (no fleet to spread), and the network
	// backoff does not grow meanwhile.
	KeyRetryInitial, KeyRetryMax time.Duration
	// HardwareSlow is how long a key operation on a TPM or PKCS#11 token
	// (opening a key, signing the TLS handshake) may go unanswered before
	// status, STATUS= and the log say the hardware is not answering
	// (default 3s); the operation itself ends at the transport's timeout.
	HardwareSlow     time.Duration
	RollbackRefusals int
	RollbackWindow   time.Duration
	FallbackToBoot   bool
	IssuerSHA256     []string
	ShutdownQuiesce  time.Duration
	// PhaseSessions bounds the MQTT sessions a rotation may start in one
	// phase; one more fails it (rotation.phase_sessions, default 5).
	PhaseSessions int
	// StableAfter is how long a session must last to count as useful and
	// reset the reconnect backoff, unless it moved a rotation on
	// (backoff.reset_after, default 60s).
	StableAfter time.Duration
	// The safety net (safetynet.go): ask for a rotation once the
	// operational certificate has used RequestAfterLife of its validity
	// (0: never) or is older than MaxAge (0: never), again after
	// RequestInterval (doubling to a day) while no job comes.
	RequestAfterLife float64
	MaxAge           time.Duration
	RequestInterval  time.Duration
	// ClockFloor is the earliest time the engine believes (plausible.go);
	// zero is clock.Floor().
	ClockFloor time.Time
	// AttestationKey is the TPM attestation key's URI; "" uses
	// keystore.DefaultAKURI(BootstrapKey) (where the factory enrols it).
	AttestationKey string
}

// Engine runs rotations. Everything but the status (mu) belongs to the
// goroutine running Run.
type Engine struct {
	cfg     Config
	dial    Dialer
	keys    Keys
	fetch   Fetcher
	clock   clock.Clock
	log     *slog.Logger
	journal *journal.Journal
	store   *credset.Store

	rotateNow chan struct{}
	mu        sync.Mutex
	status    Status
	// refusedGen is 1 + the generation whose refused connect is
	// status.LastError (0: LastError is not a refusal); a later connect
	// with that generation resolves it. Guarded by mu.
	refusedGen int
	// fallbackErr: status.LastError is why the device connected with
	// its bootstrap certificate; a connect with an operational credential
	// resolves it. Guarded by mu.
	fallbackErr bool
	// stall is the hardware that is not answering right now (prefixes the
	// summary); keyErr: status.LastError is a key problem, which a connect
	// resolves. Guarded by mu.
	stall    string
	keyErr   bool
	watchers map[chan Status]struct{}
	onStatus func(Status)
	// notifyMu keeps status updates and their OnStatus calls in order
	// (the hardware watch updates from its own goroutine).
	notifyMu sync.Mutex

	beat    atomic.Int64     // unix ns (engine clock) of the last pass through a loop
	beatC   <-chan time.Time // the idle beat, re-armed on the engine clock
	signers map[string]crypto.Signer
	rot     rotation
	net     safetyNet // the device's rotation requests (safetynet.go)
	// keygenDone receives the staged key made off the MQTT path; a result
	// that arrives between connections waits here for the next one.
	keygenDone chan keygenResult
	bg         sync.WaitGroup // key generation in flight
	reload     reloadSlot     // settings from a configuration reload (reload.go)
}

// rotation is what the engine holds in memory about the rotation in
// progress beyond its journal entry. It outlives connections (a key staged
// on one is used on the next) and is reset when a rotation begins.
type rotation struct {
	staged     crypto.Signer // the staged key, once made or opened
	keygenBusy bool
	replyTries int                      // requests sent without a reply in this rotation step
	laps       map[string]time.Duration // where the rotation's time went
	lapMark    time.Time
	attested   *attestation // the staged key's evidence for the current request (attest.go)
}

type message struct {
	topic   string
	payload []byte
}

// New prepares an engine over a state directory. A nil clock is the real
// one.
func New(cfg Config, dial Dialer, keys Keys, fetch Fetcher, clk clock.Clock, log *slog.Logger) (*Engine, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.RollbackRefusals <= 0 {
		cfg.RollbackRefusals = 3
	}
	if cfg.RollbackWindow <= 0 {
		cfg.RollbackWindow = 10 * time.Minute
	}
	if cfg.ReplyTimeout <= 0 {
		cfg.ReplyTimeout = 30 * time.Second
	}
	if cfg.PhaseSessions <= 0 {
		cfg.PhaseSessions = 5
	}
	if cfg.KeyRetryInitial <= 0 {
		cfg.KeyRetryInitial = DefaultKeyRetryInitial
	}
	if cfg.KeyRetryMax <= 0 {
		cfg.KeyRetryMax = DefaultKeyRetryMax
	}
	if cfg.HardwareSlow <= 0 {
		cfg.HardwareSlow = DefaultHardwareSlow
	}
	if cfg.KeyRetryMax < cfg.KeyRetryInitial {
		cfg.KeyRetryMax = cfg.KeyRetryInitial
	}
	if cfg.StableAfter <= 0 {
		cfg.StableAfter = time.Minute
	}
	if cfg.RequestInterval <= 0 {
		cfg.RequestInterval = time.Hour
	}
	if cfg.Algorithm == "" {
		cfg.Algorithm = keystore.DefaultAlgorithm
	}
	if len(cfg.Bootstrap) == 0 {
		return nil, errors.New("engine: no bootstrap certificate")
	}
	if cfg.Thing == "" {
		cfg.Thing = cfg.Bootstrap[0].Subject.CommonName
	}
	j, err := journal.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	s, err := credset.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, dial: dial, keys: keys, fetch: fetch, clock: clk, log: log, journal: j, store: s,
		rotateNow: make(chan struct{}, 1), watchers: map[chan Status]struct{}{}, signers: map[string]crypto.Signer{},
		keygenDone: make(chan keygenResult, 1), reload: newReloadSlot()}
	e.status = Status{Thing: cfg.Thing, Endpoint: cfg.Endpoint, Connection: "disconnected", ConnectedWith: -1, Counters: control.Counters{Since: clk.Now()}}
	return e, nil
}

// Thing is the thing name in use.
func (e *Engine) Thing() string { return e.cfg.Thing }

// RotateNow asks the engine to look for pending jobs now.
func (e *Engine) RotateNow() {
	select {
	case e.rotateNow <- struct{}{}:
	default:
	}
}

// Run runs until ctx ends. It returns nil on a clean shutdown.
func (e *Engine) Run(ctx context.Context) error {
	defer e.closeSigners()
	defer e.bg.Wait() // never leave a key half-made behind
	e.tick()
	e.beatC = e.clock.After(BeatInterval)
	if err := e.reconcile(ctx); err != nil {
		return err
	}
	attempt, keyAttempt := 0, 0
	for ctx.Err() == nil {
		if e.waitForClock(ctx) {
			return nil
		}
		next, done := e.connectOnce(ctx)
		if done {
			return nil
		}
		switch next {
		case reconnectNow:
			attempt, keyAttempt = 0, 0
			continue
		case resetBackoff:
			attempt = 0
		}
		var d time.Duration
		if next == retryKeys {
			d = e.keyRetryDelay(keyAttempt)
			keyAttempt++
			e.log.Info("key unusable; trying again soon", "in", d)
		} else {
			keyAttempt = 0
			d = e.cfg.Backoff.Delay(attempt)
			attempt++
			e.log.Debug("reconnecting", "in", d)
		}
		wait := e.clock.After(d)
	backoff:
		for {
			e.tick()
			if e.applyReload() {
				break backoff // new connection settings: try them now
			}
			select {
			case <-ctx.Done():
				return nil
			case <-wait:
				break backoff
			case <-e.rotateNow:
				break backoff
			case <-e.reload.wake:
			case <-e.beatC:
				e.beatC = e.clock.After(BeatInterval)
			}
		}
	}
	return nil
}

// what the connect loop does after a pass over the candidates
type reconnect int

const (
	reconnectLater reconnect = iota // back off, then try again
	reconnectNow                    // a credential changed: try at once
	resetBackoff                    // a useful session ran: back off from the start
	retryKeys                       // every credential failed on its key: the short key schedule
)

// Defaults of Config.KeyRetryInitial and KeyRetryMax.
const (
	DefaultKeyRetryInitial = time.Second
	DefaultKeyRetryMax     = 30 * time.Second
)

// keyRetryDelay is the n-th delay (n from 0) of the key retry schedule:
// KeyRetryInitial doubling to KeyRetryMax.
func (e *Engine) keyRetryDelay(n int) time.Duration {
	d := e.cfg.KeyRetryInitial
	for i := 0; i < n && d < e.cfg.KeyRetryMax; i++ {
		d *= 2
	}
	return min(d, e.cfg.KeyRetryMax)
}

// connectOnce tries the candidate credentials in order and runs a session
// on the first that connects. done is true when ctx ended.
func (e *Engine) connectOnce(ctx context.Context) (next reconnect, done bool) {
	cands, why := e.candidates()
	if why != "" {
		e.setError(why, "")
	}
	// keyOnly stays true while every credential tried failed on its key
	keyOnly := len(cands) > 0
	for _, c := range cands {
		e.setConn("connecting", c)
		conn, err := e.dialOne(ctx, c)
		e.tick() // a dial is bounded by timeouts.connect
		if err != nil {
			if ctx.Err() != nil {
				return 0, true
			}
			refused := isRefused(err)
			e.log.Warn("connect failed", "generation", c.Generation, "refused", refused, "err", err)
			var ke *keyError
			if errors.As(err, &ke) {
				// the hardware, not the broker: try the next credential
				e.setKeyError(ke.Error(), "check the TPM or PKCS#11 token (device node, tpm2-abrmd/permissions, PIN source); `bootcertctl key info URI` tests a key")
				if c.Generation > 0 {
					why = fmt.Sprintf("operational key (generation %d) unusable: %v; connected with the bootstrap certificate", c.Generation, ke.Err)
				}
				if j := e.journal.Current(); j.Phase == journal.Switched && c.Generation == j.Generation {
					if e.rollback(fmt.Sprintf("the new key is unusable: %v", ke.Err)) {
						return reconnectNow, false
					}
				}
				continue
			}
			keyOnly = false
			if !refused {
				e.setError(fmt.Sprintf("cannot reach %s: %v", e.cfg.Endpoint, err), "check the network, broker.endpoint and broker.port")
				return reconnectLater, false // the network is down: no point trying the next credential now
			}
			if c.Generation > 0 {
				why = fmt.Sprintf("operational certificate (generation %d) refused by the broker: %v; connected with the bootstrap certificate", c.Generation, err)
			}
			if e.onRefused(c, err) {
				return reconnectNow, false // at once with the previous credential
			}
			continue
		}
		e.dropIdleSigners(c.KeyURI)
		if c.Generation == 0 && e.activeGeneration() > 0 {
			if why == "" {
				why = fmt.Sprintf("operational certificate (generation %d) not usable; connected with the bootstrap certificate", e.activeGeneration())
			}
			e.setFallbackError(why, adviceFallback)
			e.noteFallback(why)
		}
		started, before := e.clock.Now(), progress(e.journal.Current())
		err = e.runSession(ctx, conn, c)
		if ctx.Err() != nil {
			conn.Close(e.cfg.ShutdownQuiesce)
			e.setConn("disconnected", nil)
			return 0, true
		}
		keyOnly = false
		if errors.Is(err, errClockWait) {
			// the clock became implausible: wait for it (Run), then
			// reconnect and go on from the journal
			conn.Close(0)
			e.setConn("disconnected", nil)
			return reconnectNow, false
		}
		var ne *notEstablished
		if errors.As(err, &ne) {
			// closed or denied before the session was usable: for the
			// rollback rule this is a refusal ("immediate disconnect")
			conn.Close(0)
			e.setConn("disconnected", nil)
			e.log.Warn("session refused right after connect", "generation", c.Generation, "err", err)
			if e.onRefused(c, err) {
				return reconnectNow, false
			}
			continue
		}
		if err != nil && !errors.Is(err, errSwitch) {
			e.log.Warn("session ended", "err", err)
		}
		conn.Close(0)
		e.setConn("disconnected", nil)
		if errors.Is(err, errSwitch) {
			return reconnectNow, false // with the new credential
		}
		if e.useful(started, before) {
			return resetBackoff, false
		}
		// a session that died before doing anything (a broker that
		// closes it at once, a job that cannot go on) backs off further
		return reconnectLater, false
	}
	if keyOnly {
		return retryKeys, false
	}
	return reconnectLater, false
}

// useful reports whether a session that started at started, with the
// rotation at before, did useful work: it lasted StableAfter, or the
// rotation moved to another phase or job during it. Only useful sessions
// reset the reconnect backoff, so connections that die at once (a policy
// that closes them, a job that cannot go on) back off like refused ones.
func (e *Engine) useful(started time.Time, before string) bool {
	return e.clock.Now().Sub(started) >= e.cfg.StableAfter || progress(e.journal.Current()) != before
}

// progress identifies where a rotation is, for useful.
func progress(j journal.Entry) string {
	return fmt.Sprintf("%s/%s/%d/%s", j.Phase, j.JobID, j.Generation, j.Result)
}

var errSwitch = errors.New("switching credentials")

// BeatInterval is how often an idle engine shows it is alive.
const BeatInterval = 5 * time.Second

// LastBeat is when (on the engine's clock) the engine loop last ran; the
// systemd watchdog is fed only while it is recent, so a hung engine gets the
// daemon restarted. The loop beats at least every BeatInterval when idle and
// after every wait for the network, each bounded by the connect or the reply
// timeout; only a stuck call (hardware, a wait without a deadline) stops it.
func (e *Engine) LastBeat() time.Time { return time.Unix(0, e.beat.Load()) }

func (e *Engine) tick() { e.beat.Store(e.clock.Now().UnixNano()) }

// lap adds the time since the last mark to a named step of the rotation.
func (e *Engine) lap(name string) {
	if e.rot.laps == nil {
		return
	}
	now := e.clock.Now()
	e.rot.laps[name] += now.Sub(e.rot.lapMark)
	e.rot.lapMark = now
}

// notEstablished is a session that ended before its subscriptions were
// in place (the broker closed it or denied them).
type notEstablished struct{ err error }

func (e *notEstablished) Error() string { return "session not established: " + e.err.Error() }
func (e *notEstablished) Unwrap() error { return e.err }

func isRefused(err error) bool {
	var r interface{ Refused() bool }
	return errors.As(err, &r) && r.Refused()
}

func (e *Engine) activeGeneration() int {
	p, _ := e.store.Pointer()
	return p.Active
}

// bootstrapCred is generation 0.
func (e *Engine) bootstrapCred() *Credential {
	return &Credential{Generation: 0, KeyURI: e.cfg.BootstrapKey, Role: credset.RoleBootstrap, Chain: e.cfg.Bootstrap}
}

func (e *Engine) loadCred(gen int) (*Credential, error) {
	if gen == 0 {
		return e.bootstrapCred(), nil
	}
	c, err := e.store.Get(gen)
	if err != nil {
		return nil, err
	}
	return &Credential{Generation: gen, KeyURI: c.KeyURI, Role: c.Meta.KeyRole, Chain: c.Chain, Attested: c.Meta.Attested}, nil
}

// candidates is the recovery rule: the active credential, then (unless
// rotating or forbidden) the bootstrap one. Expired certificates are skipped,
// with the reason.
func (e *Engine) candidates() ([]*Credential, string) {
	ptr, err := e.store.Pointer()
	if err != nil {
		e.log.Error("reading the active pointer", "err", err)
	}
	now := e.clock.Now()
	var out []*Credential
	var why string
	if ptr.Active > 0 {
		c, err := e.loadCred(ptr.Active)
		switch {
		case err != nil:
			why = fmt.Sprintf("operational credential generation %d unreadable: %v; using the bootstrap certificate", ptr.Active, err)
		case !now.Before(c.Leaf().NotAfter):
			why = fmt.Sprintf("operational certificate (generation %d) expired at %s; using the bootstrap certificate", ptr.Active, c.Leaf().NotAfter.UTC().Format(time.RFC3339))
		default:
			out = append(out, c)
		}
		if e.journal.Current().Phase == journal.Switched && len(out) > 0 {
			return out, why // a just-switched credential is tried alone, to count refusals
		}
	}
	if ptr.Active == 0 || e.cfg.FallbackToBoot || len(out) == 0 {
		b := e.bootstrapCred()
		if !now.Before(b.Leaf().NotAfter) && len(out) > 0 {
			return out, why
		}
		out = append(out, b)
	}
	return out, why
}

// onRefused counts refusals of a just-switched credential and rolls back
// after RollbackRefusals within RollbackWindow.
func (e *Engine) onRefused(c *Credential, err error) (rolledBack bool) {
	j := e.journal.Current()
	if j.Phase != journal.Switched || c.Generation != j.Generation {
		switch {
		case c.Generation > 0:
			e.setRefusal(c.Generation, fmt.Sprintf("operational certificate (generation %d) refused: %v", c.Generation, err), adviceOperationalRefused)
		case e.activeGeneration() > 0 || j.Previous > 0 || (j.Result == protocol.JobSucceeded && j.Generation > 0):
			// it had an operational credential (refused, or its key is
			// gone): not the first connect of a new device
			e.setRefusal(0, fmt.Sprintf("bootstrap certificate refused: %v", err), adviceBootstrapRefusedAfterRotation)
		default:
			e.setRefusal(0, fmt.Sprintf("bootstrap certificate refused: %v", err), "first connect of a new device is refused while it is registered (JITR): it retries; if it persists, check that the device is in the allow list and not revoked")
		}
		return false
	}
	// Refusals are journalled: a daemon that crashes (or is restarted) while
	// its new certificate is refused still rolls back.
	now := e.clock.Now()
	var keep []time.Time
	for _, t := range j.Refusals {
		if now.Sub(t) < e.cfg.RollbackWindow {
			keep = append(keep, t)
		}
	}
	j.Refusals = append(keep, now)
	j.UpdatedAt = now
	if err := e.journal.Write(j); err != nil {
		e.log.Error("journalling a refusal", "err", err)
	}
	n := len(j.Refusals)
	e.countRefusal()
	e.setError(fmt.Sprintf("new certificate (generation %d) refused %d/%d: %v", c.Generation, n, e.cfg.RollbackRefusals, err), "")
	if n >= e.cfg.RollbackRefusals {
		return e.rollback(fmt.Sprintf("the broker refused the new certificate %d times within %s: %v", n, e.cfg.RollbackWindow, err))
	}
	return false
}

// rollback makes the previous credential active again (switched ->
// rolled-back). The job is reported FAILED once connected
// (session.finishRollback).
func (e *Engine) rollback(reason string) bool {
	return e.rollbackAs(reason, protocol.JobFailed, false)
}

// rollbackAs makes the previous credential active again and journals
// rolled-back with the result to record: FAILED (reported to the Jobs API
// once connected) or a status the cloud set (CANCELED, REMOVED, TIMED_OUT:
// not reported). abandoned marks a rotation that had not switched.
func (e *Engine) rollbackAs(reason string, result protocol.Result, abandoned bool) bool {
	j := e.journal.Current()
	if err := e.store.SetPointer(credset.Pointer{Active: j.Previous}); err != nil {
		e.log.Error("rollback: restoring the active pointer", "err", err)
		return false
	}
	if j.Phase != journal.RolledBack {
		j.Sessions, j.Denials = 0, 0
	}
	j.Phase = journal.RolledBack
	j.Reason = reason
	j.Result = result
	j.Abandoned = abandoned
	j.UpdatedAt = e.clock.Now()
	if err := e.journal.Write(j); err != nil {
		e.log.Error("rollback: journal", "err", err)
		return false
	}
	e.log.Warn("rolled back", "to", j.Previous, "reason", reason)
	e.refreshStatus()
	return true
}

// removeGeneration deletes a stored generation's files, logging a failure
// (a leftover generation is removed again by the next reconcile).
func (e *Engine) removeGeneration(gen int, why string) {
	if err := e.store.Remove(gen); err != nil {
		e.log.Warn("removing credential generation", "generation", gen, "why", why, "err", err)
	}
}
