package engine

import (
	"fmt"
	"strings"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/keystore"
)

// Status is what `bootcertctl status` shows.
type Status struct {
	Thing      string           `json:"thing"`
	Phase      journal.Phase    `json:"phase"`
	Active     ActiveCredential `json:"active"`
	Connection string           `json:"connection"` // connecting, connected, disconnected
	Endpoint   string           `json:"endpoint"`
	// ConnectedWith is the generation of the connected credential (-1: none).
	ConnectedWith int       `json:"connectedWith"`
	PendingJob    string    `json:"pendingJob,omitempty"`
	LastResult    string    `json:"lastResult,omitempty"`
	LastReason    string    `json:"lastReason,omitempty"`
	LastResultAt  time.Time `json:"lastResultAt,omitzero"`
	LastError     string    `json:"lastError,omitempty"`
	Advice        string    `json:"advice,omitempty"`
	LastErrorAt   time.Time `json:"lastErrorAt,omitzero"`
	// LastTimings says where the last rotation's time went, in ms (key,
	// csr+publish, wait-get, verify+store+swap, reconnect, wait-ack, commit).
	LastTimings map[string]float64 `json:"lastTimings,omitempty"`
	// Summary is the one-line state for systemd's STATUS=.
	Summary string `json:"summary"`

	// refusedGen is 1 + the generation whose refused connect is LastError
	// (0: LastError is not a refusal); a later connect with that
	// generation resolves it.
	refusedGen int
}

// ActiveCredential describes the active credential set.
type ActiveCredential struct {
	Generation    int       `json:"generation"`
	CertificateID string    `json:"certificateId"`
	Issuer        string    `json:"issuer"`
	NotAfter      time.Time `json:"notAfter"`
	KeyURI        string    `json:"keyUri"` // redacted
	Backend       string    `json:"backend"`
}

// Status returns a snapshot.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}

// Watch returns a channel receiving every status change until cancel.
func (e *Engine) Watch() (<-chan Status, func()) {
	ch := make(chan Status, 8)
	e.mu.Lock()
	e.watchers[ch] = struct{}{}
	e.mu.Unlock()
	return ch, func() {
		e.mu.Lock()
		delete(e.watchers, ch)
		e.mu.Unlock()
	}
}

// OnStatus sets a function called (without locks held... from the engine
// goroutine) on every change; sd_notify STATUS= uses it.
func (e *Engine) OnStatus(f func(Status)) { e.onStatus = f }

func (e *Engine) update(f func(s *Status)) {
	e.mu.Lock()
	f(&e.status)
	e.status.Summary = summary(e.status)
	s := e.status
	for ch := range e.watchers {
		select {
		case ch <- s:
		default:
		}
	}
	e.mu.Unlock()
	if e.onStatus != nil {
		e.onStatus(s)
	}
}

func (e *Engine) refreshStatus() {
	j := e.journal.Current()
	ptr, _ := e.store.Pointer()
	var a ActiveCredential
	if c, err := e.loadCred(ptr.Active); err == nil {
		leaf := c.Leaf()
		a = ActiveCredential{Generation: c.Generation, CertificateID: c.CertificateID(), Issuer: leaf.Issuer.String(), NotAfter: leaf.NotAfter, KeyURI: redactURI(c.KeyURI)}
		if u, err := keystore.ParseURI(c.KeyURI); err == nil {
			a.Backend = u.Scheme
		}
	}
	e.update(func(s *Status) {
		s.Phase = j.Phase
		s.Active = a
		if !idle(j.Phase) {
			s.PendingJob = j.JobID
		}
		if j.Result != "" {
			s.LastResult, s.LastReason, s.LastResultAt = j.Result, j.Reason, j.FinishedAt
		}
	})
}

func (e *Engine) setConn(state string, c *Credential) {
	e.update(func(s *Status) {
		s.Connection = state
		s.ConnectedWith = -1
		if c != nil {
			s.ConnectedWith = c.Generation
		}
		// a connect that now works resolves an earlier "cannot reach" or
		// refusal of the same credential (e.g. the JITR refusal of a new
		// device): status then shows no stale error on a healthy device
		if state == "connected" && c != nil && (strings.HasPrefix(s.LastError, "cannot reach") || s.refusedGen == c.Generation+1) {
			s.LastError, s.Advice, s.refusedGen = "", "", 0
		}
	})
}

func (e *Engine) setError(msg, advice string) {
	now := e.clock.Now()
	e.update(func(s *Status) { s.LastError, s.Advice, s.LastErrorAt, s.refusedGen = msg, advice, now, 0 })
}

// setRefusal records that the broker refused credential generation gen.
func (e *Engine) setRefusal(gen int, msg, advice string) {
	now := e.clock.Now()
	e.update(func(s *Status) { s.LastError, s.Advice, s.LastErrorAt, s.refusedGen = msg, advice, now, gen+1 })
}

func (e *Engine) setResult(result, reason string) {
	now := e.clock.Now()
	e.update(func(s *Status) { s.LastResult, s.LastReason, s.LastResultAt = result, reason, now })
}

func (e *Engine) setPending(job string) {
	e.update(func(s *Status) { s.PendingJob = job })
}

func summary(s Status) string {
	switch s.Phase {
	case journal.KeyStaged:
		return "rotating: key staged"
	case journal.CertStaged:
		return "rotating: certificate staged"
	case journal.Switched:
		return "rotating: switched, waiting for acknowledgement"
	case journal.Committed:
		return "rotating: committed"
	case journal.RolledBack:
		return "rotating: rolled back"
	}
	if s.Connection != "connected" {
		if s.ConnectedWith == 0 || s.Active.Generation == 0 {
			return s.Connection + " with bootstrap certificate"
		}
		return fmt.Sprintf("%s with operational certificate (generation %d)", s.Connection, s.Active.Generation)
	}
	if s.ConnectedWith == 0 {
		return "connected with bootstrap certificate"
	}
	return "operational, certificate expires " + s.Active.NotAfter.UTC().Format("2006-01-02")
}
