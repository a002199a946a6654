package control

import (
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/protocol"
)

// Status is the daemon's state as the control socket carries it (one JSON
// object a line) and `bootcertctl status` shows it. The engine fills it in;
// clients need only this package, not the engine.
type Status struct {
	Thing      string           `json:"thing"`
	Phase      journal.Phase    `json:"phase"`
	Active     ActiveCredential `json:"active"`
	Connection string           `json:"connection"` // connecting, connected, disconnected
	Endpoint   string           `json:"endpoint"`
	// ConnectedWith is the generation of the connected credential (-1: none).
	ConnectedWith int             `json:"connectedWith"`
	PendingJob    string          `json:"pendingJob,omitempty"`
	LastResult    protocol.Result `json:"lastResult,omitempty"`
	LastReason    string          `json:"lastReason,omitempty"`
	LastResultAt  time.Time       `json:"lastResultAt,omitzero"`
	LastError     string          `json:"lastError,omitempty"`
	Advice        string          `json:"advice,omitempty"`
	LastErrorAt   time.Time       `json:"lastErrorAt,omitzero"`
	// LastTimings says where the last rotation's time went, in ms (key,
	// csr+publish, wait-get, verify+store+swap, reconnect, wait-ack, commit).
	LastTimings map[string]float64 `json:"lastTimings,omitempty"`
	// Recovery (issue 10). Every field below is optional on the wire:
	// daemons and clients of earlier versions ignore what they do not know.
	//
	// LastFallback says why the last connect with the bootstrap
	// certificate while an operational one was active happened
	// (Counters.Fallbacks counts them).
	LastFallback   string    `json:"lastFallback,omitempty"`
	LastFallbackAt time.Time `json:"lastFallbackAt,omitzero"`
	// LastRefusal is the last thing the broker refused (a credential at
	// connect, a job's subscription or publish), kept after LastError
	// clears.
	LastRefusal   string    `json:"lastRefusal,omitempty"`
	LastRefusalAt time.Time `json:"lastRefusalAt,omitzero"`
	// RotationRequest is the device's last request for a rotation (the
	// safety net: certificate past its share of life or maximum age with
	// no job) and the cloud's answer.
	RotationRequest *RotationRequest `json:"rotationRequest,omitempty"`
	// ClockWait says why bootcertd is waiting for the system clock (a
	// gateway without a real-time clock boots in 1970): while it is set
	// the daemon neither connects nor judges a certificate's validity,
	// and it goes on by itself once the clock is plausible.
	ClockWait string `json:"clockWait,omitempty"`
	// Summary is the one-line state for systemd's STATUS=.
	Summary string `json:"summary"`
	// Counters are what happened since the daemon started: the figures an
	// operator alerts on (daemon/metrics writes them for Prometheus).
	Counters Counters `json:"counters,omitzero"`
	// Recovery is the fallback path left when the operational credential
	// fails: the bootstrap certificate, if allowed and still valid.
	Recovery Recovery `json:"recovery,omitzero"`
	// Lockout is the TPM's dictionary-attack state behind the active key
	// (absent for keys whose backend cannot report it).
	Lockout *Lockout `json:"lockout,omitempty"`
	// Reload is the outcome of the last configuration reload (SIGHUP,
	// `systemctl reload bootcertd`); absent before the first.
	Reload *Reload `json:"reload,omitempty"`
}

// Results of a configuration reload (Reload.Result).
const (
	// ReloadApplied: the new file is the running configuration.
	ReloadApplied = "applied"
	// ReloadPending: accepted; what the engine uses waits for the
	// rotation in progress to end (the log level and the metrics
	// textfile already changed).
	ReloadPending = "pending"
	// ReloadUnchanged: the file says what the daemon already runs with.
	ReloadUnchanged = "unchanged"
	// ReloadRefused: nothing applied (Error says why); the daemon keeps
	// the configuration it runs with.
	ReloadRefused = "refused"
)

// Reload is the outcome of a configuration reload.
type Reload struct {
	At     time.Time `json:"at"`
	File   string    `json:"file"`
	Result string    `json:"result"`
	// Error names the file, the key and the problem of a refused reload.
	Error string `json:"error,omitempty"`
	// Changed are the keys the file changed (in a refused reload too).
	Changed   []string  `json:"changed,omitempty"`
	AppliedAt time.Time `json:"appliedAt,omitzero"`
}

// Counters count events since Since (the daemon's start). They only grow;
// a restart begins again at zero (a Prometheus counter reset).
type Counters struct {
	Since time.Time `json:"since"`
	// Connects are MQTT sessions established (CONNACK accepted).
	Connects int `json:"connects"`
	// Refusals are connects the broker refused, or closed before the
	// session was usable.
	Refusals int `json:"refusals"`
	// Fallbacks are connects with the bootstrap certificate while an
	// operational one was active (expired, refused or its key unusable).
	Fallbacks int `json:"fallbacks"`
	// Rotations counts finished rotations by outcome (SUCCEEDED, FAILED,
	// ROLLED_BACK, ...). Treat it as read-only: it is shared by copies.
	Rotations map[protocol.Result]int `json:"rotations,omitempty"`
	// LastSuccess is when the last rotation committed (also one before
	// the daemon's start, from the journal).
	LastSuccess time.Time `json:"lastSuccess,omitzero"`

	// the last journal result counted: its job and finish time
	journalledJob string
	journalledAt  time.Time
}

// AddJournalled counts the rotation of job that the journal says finished
// at at: once, and only when it did not finish before Since (one from
// before the daemon's start is not counted).
func (c *Counters) AddJournalled(r protocol.Result, job string, at time.Time) {
	if at.Before(c.Since) || at.Equal(c.journalledAt) && job == c.journalledJob {
		return
	}
	c.journalledJob, c.journalledAt = job, at
	c.AddRotation(r)
}

// AddRotation counts a finished rotation. It copies the map, so that
// status snapshots handed out earlier never change.
func (c *Counters) AddRotation(r protocol.Result) {
	m := make(map[protocol.Result]int, len(c.Rotations)+1)
	for k, v := range c.Rotations {
		m[k] = v
	}
	m[r]++
	c.Rotations = m
}

// Recovery describes the bootstrap fallback.
type Recovery struct {
	// Bootstrap is true when fallback.bootstrap allows it.
	Bootstrap         bool      `json:"bootstrap"`
	BootstrapNotAfter time.Time `json:"bootstrapNotAfter,omitzero"`
}

// Left is how many fallback credentials remain usable at now (0 or 1).
func (r Recovery) Left(now time.Time) int {
	if r.Bootstrap && now.Before(r.BootstrapNotAfter) {
		return 1
	}
	return 0
}

// Lockout is a TPM's dictionary-attack state (keystore.Lockout).
type Lockout struct {
	Counter   uint32    `json:"counter"`
	MaxTries  uint32    `json:"maxTries"`
	InLockout bool      `json:"inLockout"`
	ReadAt    time.Time `json:"readAt"`
}

// ActiveCredential describes the active credential set.
type ActiveCredential struct {
	Generation    int       `json:"generation"`
	CertificateID string    `json:"certificateId"`
	Issuer        string    `json:"issuer"`
	NotBefore     time.Time `json:"notBefore,omitzero"`
	NotAfter      time.Time `json:"notAfter"`
	KeyURI        string    `json:"keyUri"` // redacted
	Backend       string    `json:"backend"`
	// Attested is true when the cloud verified the key's TPM attestation
	// before it issued the certificate (docs/attestation.md).
	Attested bool `json:"attested,omitempty"`
}

// RotationRequest is a device-initiated rotation request
// (protocol.RotateRequest) and what became of it.
type RotationRequest struct {
	Reason        string    `json:"reason"` // age or expiry
	CertificateID string    `json:"certificateId,omitempty"`
	SentAt        time.Time `json:"sentAt,omitzero"`
	// Attempts counts the requests sent for this certificate.
	Attempts int `json:"attempts"`
	// Answer is accepted, rejected, no reply, refused by the broker (the
	// policy does not grant the request topic), or job arrived (the
	// rotation job came before the reply); "" while awaited.
	Answer     string    `json:"answer,omitempty"`
	Code       string    `json:"code,omitempty"`
	Message    string    `json:"message,omitempty"`
	JobID      string    `json:"jobId,omitempty"`
	AnsweredAt time.Time `json:"answeredAt,omitzero"`
	// NextAt is when the device asks again if no rotation job comes.
	NextAt time.Time `json:"nextAt,omitzero"`
}
