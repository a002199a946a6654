package engine

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
)

// Tunables are the engine settings a configuration reload (SIGHUP,
// `systemctl reload`; daemon/reload.go) may change while the daemon runs.
// Everything else in Config (the thing, the keys, the state directory)
// needs a restart.
type Tunables struct {
	Endpoint         string
	ReplyTimeout     time.Duration
	Backoff          Backoff
	RollbackRefusals int
	RollbackWindow   time.Duration
	FallbackToBoot   bool
	IssuerSHA256     []string
	ShutdownQuiesce  time.Duration
	PhaseSessions    int
	StableAfter      time.Duration
	RequestAfterLife float64
	MaxAge           time.Duration
	RequestInterval  time.Duration

	// Reconnect ends the session in progress once the change is applied,
	// so that the next one uses what Apply installed (the broker's
	// address, its CA, the proxy, the keepalive). The engine reconnects at
	// once with the same credential: nothing is given up.
	Reconnect bool
	// Apply, if set, runs on the engine's goroutine when the change is
	// applied, before anything uses the new settings: the daemon swaps its
	// dialer's and fetcher's settings there.
	Apply func()
	// Done, if set, is called on the engine's goroutine once the change
	// is applied.
	Done func()
}

// reloadSlot is where Reconfigure leaves settings for the engine's
// goroutine.
type reloadSlot struct {
	mu      sync.Mutex
	pending *Tunables
	wake    chan struct{}
}

func newReloadSlot() reloadSlot { return reloadSlot{wake: make(chan struct{}, 1)} }

// Reconfigure hands the engine new settings; it never blocks. The engine
// applies them on its own goroutine, and only while no rotation is in
// progress (the journal idle): a rotation always ends with the settings it
// began with, and settings given during one wait for its end (committed,
// rolled back or failed). A later call replaces settings not yet applied.
func (e *Engine) Reconfigure(t Tunables) {
	e.reload.mu.Lock()
	if p := e.reload.pending; p != nil && p.Reconnect {
		t.Reconnect = true // the replaced settings' connection change still needs it
	}
	e.reload.pending = &t
	e.reload.mu.Unlock()
	select {
	case e.reload.wake <- struct{}{}:
	default:
	}
}

// ReconfigurePending reports whether settings given to Reconfigure wait
// for the rotation in progress to end.
func (e *Engine) ReconfigurePending() bool {
	e.reload.mu.Lock()
	defer e.reload.mu.Unlock()
	return e.reload.pending != nil
}

// applyReload applies pending settings when no rotation is in progress. It
// runs on the engine's goroutine, between events (never inside a phase
// transition), and reports whether the session should end so that the next
// one uses new connection settings.
func (e *Engine) applyReload() (reconnect bool) {
	if e.journal.Current().Phase != journal.Idle || e.rot.keygenBusy {
		return false
	}
	e.reload.mu.Lock()
	t := e.reload.pending
	e.reload.pending = nil
	e.reload.mu.Unlock()
	if t == nil {
		return false
	}
	if t.Apply != nil {
		t.Apply()
	}
	c := &e.cfg
	c.Endpoint = t.Endpoint
	if t.ReplyTimeout > 0 {
		c.ReplyTimeout = t.ReplyTimeout
	}
	c.Backoff.Initial, c.Backoff.Max = t.Backoff.Initial, t.Backoff.Max
	if t.RollbackRefusals > 0 {
		c.RollbackRefusals = t.RollbackRefusals
	}
	if t.RollbackWindow > 0 {
		c.RollbackWindow = t.RollbackWindow
	}
	c.FallbackToBoot = t.FallbackToBoot
	c.IssuerSHA256 = slices.Clone(t.IssuerSHA256)
	c.ShutdownQuiesce = t.ShutdownQuiesce
	if t.PhaseSessions > 0 {
		c.PhaseSessions = t.PhaseSessions
	}
	if t.StableAfter > 0 {
		c.StableAfter = t.StableAfter
	}
	c.RequestAfterLife, c.MaxAge = t.RequestAfterLife, t.MaxAge
	if t.RequestInterval > 0 {
		c.RequestInterval = t.RequestInterval
	}
	e.update(func(s *Status) { s.Endpoint = t.Endpoint })
	e.refreshStatus() // the recovery path (fallback.bootstrap)
	e.log.Info("configuration reload applied", "endpoint", t.Endpoint, "reconnect", t.Reconnect)
	if t.Done != nil {
		t.Done()
	}
	return t.Reconnect
}

// errReconfigured ends a session after a reload changed the connection
// settings. It wraps errSwitch: the connect loop reconnects at once, with
// the same credential, and does not count it as a failure.
var errReconfigured = fmt.Errorf("configuration reloaded: %w", errSwitch)
