// Package journal records where a credential rotation is, so that a crash at
// any instant can be resumed: one small JSON file, every transition one
// atomic write (temp file, fsync, rename, fsync the directory).
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/protocol"
)

// Phase is a rotation phase (DESIGN.md, "Journal and crash consistency").
type Phase string

// Phases.
const (
	Idle       Phase = "idle"
	KeyStaged  Phase = "key-staged"
	CertStaged Phase = "cert-staged"
	Switched   Phase = "switched"
	Committed  Phase = "committed"
	RolledBack Phase = "rolled-back"
)

// FileName is the journal's name in the state directory.
const FileName = "journal.json"

// ErrCorrupt is wrapped when the journal cannot be decoded.
var ErrCorrupt = errors.New("journal corrupt")

// ErrTransition is wrapped for a transition the state machine forbids.
var ErrTransition = errors.New("invalid journal transition")

// Entry is the journal's content.
type Entry struct {
	Phase       Phase  `json:"phase"`
	JobID       string `json:"jobId,omitempty"`
	ClientToken string `json:"clientToken,omitempty"`
	// Generation is the staged (or, once switched, active) credential
	// generation of the rotation in progress.
	Generation int `json:"generation,omitempty"`
	// Previous is the generation active before the rotation.
	Previous int `json:"previous,omitempty"`
	// KeyURI is the staged key's URI (never a PIN: pin-source only).
	KeyURI string `json:"keyUri,omitempty"`
	// KeyRole is KeyURI's role (credset.RoleStaged while a rotation runs).
	// Mode is where the staged key comes from: made on demand (a CSR is
	// sent, the key is destroyed if the rotation fails) or pre-provisioned
	// by the factory (no CSR, never destroyed). Journals written before
	// these were recorded lack both; the engine fills them in from its
	// configuration when it opens such a journal (Legacy).
	KeyRole credset.KeyRole `json:"keyRole,omitempty"`
	Mode    credset.Mode    `json:"mode,omitempty"`
	// Doc is the job document of the rotation in progress.
	Doc           *protocol.JobDocument `json:"doc,omitempty"`
	CertificateID string                `json:"certificateId,omitempty"`
	// CSR is the staged key's request (PEM), sent again unchanged on retries.
	CSR string `json:"csr,omitempty"`
	// Refusals are when the broker refused the just-switched credential.
	Refusals []time.Time `json:"refusals,omitempty"`
	// Sessions counts the MQTT sessions the rotation started in its
	// current phase, Denials the connections the broker closed right after
	// a publish to a job document topic in it (AWS IoT's answer to a
	// publish its policies do not grant). Both start from 0 in each phase;
	// the engine fails the rotation when either passes its bound, so a job
	// can never hold a device in a reconnect loop, not across restarts.
	Sessions int `json:"sessions,omitempty"`
	Denials  int `json:"denials,omitempty"`
	// Abandoned marks a rotation rolled back before its switch (nothing
	// was switched): it ends FAILED, not ROLLED_BACK.
	Abandoned bool      `json:"abandoned,omitempty"`
	StartedAt time.Time `json:"startedAt,omitzero"`
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
	// Result and Reason describe the last finished rotation.
	Result     protocol.Result `json:"result,omitempty"`
	Reason     string          `json:"reason,omitempty"`
	FinishedAt time.Time       `json:"finishedAt,omitzero"`
}

// allowed lists the transitions of the rotation state machine. A phase may
// always be rewritten with itself (refusals, the CSR, the mode of a legacy
// entry).
var allowed = map[Phase][]Phase{
	Idle:       {KeyStaged},
	KeyStaged:  {CertStaged, RolledBack, Idle},
	CertStaged: {Switched, RolledBack, Idle},
	Switched:   {Committed, RolledBack},
	Committed:  {Idle, KeyStaged},
	RolledBack: {Idle, KeyStaged},
}

// CanMove reports whether from -> to is a valid transition.
func CanMove(from, to Phase) bool {
	if from == to {
		return true
	}
	for _, p := range allowed[from] {
		if p == to {
			return true
		}
	}
	return false
}

// Valid reports whether p is a known phase.
func (p Phase) Valid() bool {
	_, ok := allowed[p]
	return ok
}

// Journal is the journal file of a state directory.
type Journal struct {
	path string
	cur  Entry
	// write is atomicfile.WriteFile; tests inject faults.
	write func(string, []byte, os.FileMode) error
}

// Open reads the journal in dir; a missing journal is an idle one.
func Open(dir string) (*Journal, error) {
	j := &Journal{path: filepath.Join(dir, FileName), write: atomicfile.WriteFile, cur: Entry{Phase: Idle}}
	data, err := os.ReadFile(j.path)
	if errors.Is(err, fs.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading journal %s: %w", j.path, err)
	}
	e, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w (it is only ever replaced atomically, so this is outside damage; move it away to start idle)", j.path, err)
	}
	j.cur = e
	return j, nil
}

// Decode parses a journal file.
func Decode(data []byte) (Entry, error) {
	var e Entry
	if len(data) > 64<<10 {
		return e, fmt.Errorf("%w: larger than 64 KiB", ErrCorrupt)
	}
	if err := json.Unmarshal(data, &e); err != nil {
		return e, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if !e.Phase.Valid() {
		return e, fmt.Errorf("%w: unknown phase %q", ErrCorrupt, e.Phase)
	}
	if e.Generation < 0 || e.Previous < 0 || e.Sessions < 0 || e.Denials < 0 {
		return e, fmt.Errorf("%w: negative counter", ErrCorrupt)
	}
	return e, nil
}

// Legacy reports whether e is a rotation in progress journalled before the
// key's role and the mode were recorded.
func (e Entry) Legacy() bool {
	return e.KeyURI != "" && e.Phase != Idle && (e.KeyRole == "" || e.Mode == "")
}

// Path is the journal file.
func (j *Journal) Path() string { return j.path }

// Current returns the last written entry.
func (j *Journal) Current() Entry { return j.cur }

// Write records e, which must be a valid transition from the current phase.
// On error the journal on disk and in memory are unchanged.
func (j *Journal) Write(e Entry) error {
	if !e.Phase.Valid() {
		return fmt.Errorf("%w: unknown phase %q", ErrTransition, e.Phase)
	}
	if !CanMove(j.cur.Phase, e.Phase) {
		return fmt.Errorf("%w: %s -> %s", ErrTransition, j.cur.Phase, e.Phase)
	}
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding journal: %w", err)
	}
	if err := j.write(j.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing journal %s: %w", j.path, err)
	}
	j.cur = e
	return nil
}

// SetWriter replaces the file writer (fault injection in tests).
func (j *Journal) SetWriter(w func(string, []byte, os.FileMode) error) { j.write = w }
