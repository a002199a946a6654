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
