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
	// Fallbacks counts the connects made with the bootstrap certificate
	// while an operational one was active, since the daemon started;
	// LastFallback says why the last one happened.
	Fallbacks      int       `json:"fallbacks,omitempty"`
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
	// Summary is the one-line state for systemd's STATUS=.
	Summary string `json:"summary"`
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

// RotationRequest is a device-initiated rotation request
// (protocol.RotateRequest) and what became of it.
type RotationRequest struct {
	Reason        string    `json:"reason"` // age or expiry
	CertificateID string    `json:"certificateId,omitempty"`
	SentAt        time.Time `json:"sentAt,omitzero"`
	// Attempts counts the requests sent for this certificate.
	Attempts int `json:"attempts"`
	// Answer is accepted, rejected, no reply, or refused by the broker
	// (the policy does not grant the request topic); "" while awaited.
	Answer     string    `json:"answer,omitempty"`
	Code       string    `json:"code,omitempty"`
	Message    string    `json:"message,omitempty"`
	JobID      string    `json:"jobId,omitempty"`
	AnsweredAt time.Time `json:"answeredAt,omitzero"`
	// NextAt is when the device asks again if no rotation job comes.
	NextAt time.Time `json:"nextAt,omitzero"`
}
