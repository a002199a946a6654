// Package registry holds all state of the lab's AWS IoT Core stand-in: CA and
// device certificates, things, thing types and groups, policies and their
// attachments, thing principals, jobs and job executions. It implements the
// semantics of the control-plane operations (used by cloud/lab/api) and of
// the Jobs data plane (used by the broker's MQTT Jobs topics), emits events
// for the broker (certificate registered or changed status, job execution
// changed, group membership changed), and persists everything in
// DIR/registry.json (the whole state, written atomically) and
// DIR/registry.journal (the records each later write changed, appended and
// synced; folded into registry.json when it outgrows it: journal.go).
//
// Where the lab mimics an AWS behaviour, the comment cites the AWS page.
package registry

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// Defaults for Config.
const (
	DefaultRegion    = "us-east-1"
	DefaultAccountID = "123456789012"
	FileName         = "registry.json"
)

// Config configures a Registry.
type Config struct {
	// Dir is where registry.json lives; "" keeps the state in memory only.
	Dir       string
	Region    string // default us-east-1
	AccountID string // default 123456789012
	Clock     clock.Clock
	Logger    *slog.Logger
	// Issuer signs certificates for CreateCertificateFromCsr (the lab's
	// issuing CA, cloud/lab/pki). Without it that operation fails.
	Issuer Issuer
	// WriteBehind makes mutations return before registry.json is written:
	// a background writer saves the latest state, coalescing the changes
	// made while it writes (one write per burst instead of one per
	// mutation). A crash loses at most the changes of the write in flight;
	// Close and Flush write synchronously. Without it (the default) every
	// call returns after its change is on disk, concurrent callers sharing
	// one write. Use it for fleets: with 1000 devices registered a write
	// takes ~27 ms, six per JITR+activation
	// (go test -bench JITRFlow ./cloud/lab/registry).
	WriteBehind bool
	// WriteBehindInterval is the least time between two write-behind
	// writes (default 200ms): a change reaches the disk at most this plus
	// one write's duration after it is made. The pause lets a burst of
	// changes share one write, and the marshalling that holds the lock
	// happens at most once per interval instead of back to back.
	WriteBehindInterval time.Duration
}

// DefaultWriteBehindInterval is Config.WriteBehindInterval's default.
const DefaultWriteBehindInterval = 200 * time.Millisecond

// Issuer signs a device certificate for a CSR, like AWS IoT's own issuer.
type Issuer interface {
	IssueFromCSR(csrDER []byte) (certDER []byte, err error)
}

// Event is one of CertificateRegistered, CertificateStatusChanged,
// JobExecutionChanged, ThingGroupMembershipChanged.
type Event interface{ event() }

// CertificateRegistered: a certificate was registered (JITR, Register*,
// CreateCertificateFromCsr). CAID is empty for certificates without a
// registered CA.
type CertificateRegistered struct {
	CAID, CertID, Status string
	Time                 time.Time
	JITR                 bool // registered by RegisterPendingCertificate
}

// CertificateStatusChanged: a certificate's status changed (UpdateCertificate,
// or deleted: New == ""). The broker ends live sessions of certificates that
// are no longer ACTIVE.
type CertificateStatusChanged struct {
	ID, Old, New string
	Time         time.Time
}

// JobExecutionChanged: an execution was created (OldStatus == "") or changed
// status or details. Job is the job it belongs to.
type JobExecutionChanged struct {
	Exec      JobExecution
	Job       Job
	OldStatus protocol.JobStatus
}

// ThingGroupMembershipChanged: a thing joined (Added) or left a group.
type ThingGroupMembershipChanged struct {
	Group, Thing string
	Added        bool
}

func (CertificateRegistered) event()       {}
func (CertificateStatusChanged) event()    {}
func (JobExecutionChanged) event()         {}
func (ThingGroupMembershipChanged) event() {}

// Listener receives events after the change is made and persisted (in
// WriteBehind mode: queued for writing), synchronously on the goroutine of
// the call that made the change, outside the registry's lock, so it may
// call back into the registry. Events of one call arrive in order; events
// of concurrent calls may interleave, so a listener that publishes "what is
// next" should read the current state rather than trust the event order.
type Listener func(Event)

// state is what registry.json holds.
type state struct {
	Version int `json:"version"`
	// Seq is the last journal batch this file holds (journal.go).
	Seq              uint64                     `json:"journalSeq,omitempty"`
	RegistrationCode string                     `json:"registrationCode"`
	CAs              map[string]*CACertificate  `json:"caCertificates"`
	Certs            map[string]*Certificate    `json:"certificates"`
	Things           map[string]*Thing          `json:"things"`
	ThingTypes       map[string]*ThingType      `json:"thingTypes"`
	Groups           map[string]*ThingGroup     `json:"thingGroups"`
	Members          map[string]map[string]bool `json:"groupMembers"`    // group -> things
	Policies         map[string]*Policy         `json:"policies"`        // name -> policy
	PolicyTargets    map[string]map[string]bool `json:"policyTargets"`   // policy -> target ARNs
	ThingPrincipals  map[string]map[string]bool `json:"thingPrincipals"` // thing -> principal ARNs
	// Exclusive holds the principals attached with EXCLUSIVE_THING:
	// principal ARN -> its only thing.
	Exclusive map[string]string                     `json:"exclusivePrincipals,omitempty"`
	Jobs      map[string]*Job                       `json:"jobs"`
	Execs     map[string]map[string][]*JobExecution `json:"jobExecutions"`       // thing -> job -> executions, oldest first
	Events    map[string]bool                       `json:"eventConfigurations"` // event type -> enabled
}

func newState() *state {
	return &state{
		Version:         1,
		CAs:             map[string]*CACertificate{},
		Certs:           map[string]*Certificate{},
		Things:          map[string]*Thing{},
		ThingTypes:      map[string]*ThingType{},
		Groups:          map[string]*ThingGroup{},
		Members:         map[string]map[string]bool{},
		Policies:        map[string]*Policy{},
		PolicyTargets:   map[string]map[string]bool{},
		ThingPrincipals: map[string]map[string]bool{},
		Exclusive:       map[string]string{},
		Jobs:            map[string]*Job{},
		Execs:           map[string]map[string][]*JobExecution{},
		Events:          map[string]bool{},
	}
}

// fill makes nil maps of a loaded state usable.
func (s *state) fill() {
	n := newState()
	if s.CAs == nil {
		s.CAs = n.CAs
	}
	if s.Certs == nil {
		s.Certs = n.Certs
	}
	if s.Things == nil {
		s.Things = n.Things
	}
	if s.ThingTypes == nil {
		s.ThingTypes = n.ThingTypes
	}
	if s.Groups == nil {
		s.Groups = n.Groups
	}
	if s.Members == nil {
		s.Members = n.Members
	}
	if s.Policies == nil {
		s.Policies = n.Policies
	}
	if s.PolicyTargets == nil {
		s.PolicyTargets = n.PolicyTargets
	}
	if s.ThingPrincipals == nil {
		s.ThingPrincipals = n.ThingPrincipals
	}
	if s.Exclusive == nil {
		s.Exclusive = map[string]string{}
	}
	if s.Jobs == nil {
		s.Jobs = n.Jobs
	}
	if s.Execs == nil {
		s.Execs = n.Execs
	}
	if s.Events == nil {
		s.Events = n.Events
	}
}

// Registry is the lab's state. Safe for concurrent use.
type Registry struct {
	region, account string
	clock           clock.Clock
	log             *slog.Logger
	issuer          Issuer
	path            string

	mu        sync.Mutex
	st        *state
	timed     map[*JobExecution]bool     // IN_PROGRESS executions with a timeout
	byPrinc   map[string]map[string]bool // principal ARN -> things (index of st.ThingPrincipals)
	changed   bool
	dirty     map[recKey]bool // records changed since the last write (journal.go)
	dirtyAll  bool            // a change no record describes: rewrite registry.json
	events    []Event
	seq       uint64 // mutations so far
	listeners []Listener

	writeMu   sync.Mutex
	persisted uint64 // mutations persisted
	writes    uint64
	writeErr  error // last write-behind error

	journal     *os.File // registry.journal, appended (journal.go)
	journalSize int64
	snapSize    int64 // bytes of registry.json when last written
	jseq        uint64

	kick     chan struct{} // write-behind: there is something to write
	pause    time.Duration // write-behind: least time between writes
	stopWait chan struct{} // closed by Close: the writer stops pausing
	closed   bool          // Close was called (under mu)
	stopped  chan struct{} // write-behind writer has exited
	closeMu  sync.Once
}

// Open loads DIR/registry.json if it exists, or starts empty.
func Open(cfg Config) (*Registry, error) {
	r := &Registry{region: cfg.Region, account: cfg.AccountID, clock: cfg.Clock, log: cfg.Logger, issuer: cfg.Issuer}
	if r.region == "" {
		r.region = DefaultRegion
	}
	if r.account == "" {
		r.account = DefaultAccountID
	}
	if r.clock == nil {
		r.clock = clock.Real{}
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.st = newState()
	if cfg.Dir != "" {
		r.path = filepath.Join(cfg.Dir, FileName)
		data, err := os.ReadFile(r.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("loading lab registry: %w", err)
		default:
			st := newState()
			if err := json.Unmarshal(data, st); err != nil {
				return nil, fmt.Errorf("loading lab registry %s: %w (move the file away to start empty)", r.path, err)
			}
			st.fill()
			r.st = st
			r.snapSize = int64(len(data))
		}
		size, err := replayJournal(filepath.Join(cfg.Dir, JournalName), r.st)
		if err != nil {
			return nil, err
		}
		r.journalSize, r.jseq = size, r.st.Seq
		if err := r.openJournal(cfg.Dir); err != nil {
			return nil, err
		}
	}
	r.timed = map[*JobExecution]bool{}
	r.byPrinc = map[string]map[string]bool{}
	for thing, ps := range r.st.ThingPrincipals {
		for p := range ps {
			addToSet(r.byPrinc, p, thing)
		}
	}
	for _, byJob := range r.st.Execs {
		for _, execs := range byJob {
			for _, e := range execs {
				r.trackTimeout(e)
			}
		}
	}
	if r.st.RegistrationCode == "" {
		r.st.RegistrationCode = randHex(32)
		if err := r.write(); err != nil {
			return nil, err
		}
	}
	if cfg.WriteBehind && r.path != "" {
		r.kick = make(chan struct{}, 1)
		r.stopped = make(chan struct{})
		r.stopWait = make(chan struct{})
		r.pause = cfg.WriteBehindInterval
		if r.pause <= 0 {
			r.pause = DefaultWriteBehindInterval
		}
		go r.writer()
	}
	return r, nil
}

func (r *Registry) writer() {
	defer close(r.stopped)
	for range r.kick {
		r.mu.Lock()
		seq := r.seq
		r.mu.Unlock()
		if err := r.persist(seq); err != nil {
			r.log.Error("registry write-behind failed", "err", err)
			r.writeMu.Lock()
			r.writeErr = err
			r.writeMu.Unlock()
		}
		// Changes made meanwhile wait in r.kick for the next write.
		t := time.NewTimer(r.pause)
		select {
		case <-t.C:
		case <-r.stopWait:
			t.Stop()
		}
	}
}

// Flush writes registry.json now if it lags behind (write-behind mode).
func (r *Registry) Flush() error {
	r.mu.Lock()
	seq := r.seq
	r.mu.Unlock()
	return r.persist(seq)
}

// Close stops the write-behind writer and flushes. Changes made after
// Close are written synchronously.
func (r *Registry) Close() error {
	r.closeMu.Do(func() {
		if r.kick != nil {
			r.mu.Lock()
			r.closed = true // later changes are written synchronously
			close(r.kick)
			r.mu.Unlock()
			close(r.stopWait)
			<-r.stopped
		}
	})
	return r.Flush()
}

// Region and AccountID the registry builds ARNs with.
func (r *Registry) Region() string    { return r.region }
func (r *Registry) AccountID() string { return r.account }

// Now is the registry's clock.
func (r *Registry) Now() time.Time { return r.clock.Now() }

// AddListener registers l for all future events.
func (r *Registry) AddListener(l Listener) {
	r.mu.Lock()
	r.listeners = append(r.listeners, l)
	r.mu.Unlock()
}

// Writes returns how many times registry.json was written (for benchmarks).
func (r *Registry) Writes() uint64 {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	return r.writes
}

// do runs fn under the lock after expiring timed-out executions. fn must
// validate before it mutates: on error it must have changed nothing. Changes
// are persisted (group commit: concurrent callers share one write) before
// do returns, then events go to the listeners.
func (r *Registry) do(fn func(now time.Time) error) error {
	r.mu.Lock()
	now := r.clock.Now().UTC()
	r.expireLocked(now)
	r.rolloutLocked(now)
	var err error
	if fn != nil {
		err = fn(now)
	}
	evs := r.events
	r.events = nil
	changed := r.changed
	r.changed = false
	if changed {
		r.seq++
	}
	seq := r.seq
	ls := r.listeners
	behind := false
	if changed && r.kick != nil && !r.closed {
		behind = true
		select { // under r.mu, so Close cannot close the channel meanwhile
		case r.kick <- struct{}{}:
		default: // a write is already due; it will include this change
		}
	}
	r.mu.Unlock()
	if changed && !behind {
		if perr := r.persist(seq); perr != nil && err == nil {
			err = perr
		}
	}
	for _, e := range evs {
		for _, l := range ls {
			l(e)
		}
	}
	return err
}

func (r *Registry) emit(e Event) { r.events = append(r.events, e) }

// touch marks a change that no record key describes: the next write is
// the whole registry.json. Hot paths use touchRec (journal.go).
func (r *Registry) touch() { r.changed, r.dirtyAll = true, true }

// persist writes the state if mutation seq is not on disk yet.
func (r *Registry) persist(seq uint64) error {
	if r.path == "" {
		return nil
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if r.persisted >= seq {
		return nil // a concurrent caller's write included this change
	}
	r.mu.Lock()
	cur := r.seq
	r.jseq++
	jseq := r.jseq
	if !r.dirtyAll && r.journal != nil && r.journalSize < max(compactMin, r.snapSize) {
		// Only the records that changed, appended to the journal.
		b := journalBatch{Seq: jseq}
		var err error
		for k := range r.dirty {
			var v json.RawMessage
			if v, err = r.recValueLocked(k); err != nil {
				break
			}
			b.Recs = append(b.Recs, journalRec{Kind: k.kind, Key: k.key, Value: v})
		}
		r.dirty = nil
		if err != nil {
			r.dirtyAll = true
			r.mu.Unlock()
			return fmt.Errorf("saving lab registry: %w", err)
		}
		r.mu.Unlock()
		if err := r.appendJournal(b); err != nil {
			r.mu.Lock()
			r.dirtyAll = true // the next write is registry.json
			r.mu.Unlock()
			return fmt.Errorf("saving lab registry journal: %w", err)
		}
		r.persisted = cur
		r.writes++
		return nil
	}
	r.st.Seq = jseq
	data, err := json.Marshal(r.st)
	r.dirty, r.dirtyAll = nil, false
	r.mu.Unlock()
	fail := func(err error) error {
		r.mu.Lock()
		r.dirtyAll = true
		r.mu.Unlock()
		return fmt.Errorf("saving lab registry: %w", err)
	}
	if err != nil {
		return fail(err)
	}
	if err := atomicfile.WriteFile(r.path, data, 0o600); err != nil {
		return fail(err)
	}
	// registry.json now holds every journalled batch (Seq): a crash
	// before the journal is emptied replays none of them.
	r.snapSize = int64(len(data))
	if err := r.resetJournal(); err != nil {
		return fail(err)
	}
	r.persisted = cur
	r.writes++
	return nil
}

func (r *Registry) write() error {
	if r.path == "" {
		return nil
	}
	r.jseq++
	r.st.Seq = r.jseq
	data, err := json.Marshal(r.st)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(r.path, data, 0o600); err != nil {
		return fmt.Errorf("saving lab registry: %w", err)
	}
	r.snapSize = int64(len(data))
	if err := r.resetJournal(); err != nil {
		return fmt.Errorf("saving lab registry: %w", err)
	}
	r.writes++
	return nil
}

func (r *Registry) logDecision(op, resource, outcome string, args ...any) {
	r.log.Info("registry", append([]any{"op", op, "resource", resource, "outcome", outcome}, args...)...)
}

// ARN builders.
func (r *Registry) arn(kind, name string) string {
	return "arn:aws:iot:" + r.region + ":" + r.account + ":" + kind + "/" + name
}

// CertificateARN returns arn:aws:iot:REGION:ACCOUNT:cert/ID.
func (r *Registry) CertificateARN(id string) string { return r.arn("cert", id) }

// ThingARN returns the thing's ARN.
func (r *Registry) ThingARN(name string) string { return r.arn("thing", name) }

// ThingGroupARN returns the group's ARN.
func (r *Registry) ThingGroupARN(name string) string { return r.arn("thinggroup", name) }

// RegistrationCode is the account's CA registration code (GetRegistrationCode).
func (r *Registry) RegistrationCode() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.RegistrationCode
}

// Snapshot returns a deep copy of the state, sorted, for GET /lab/state.
func (r *Registry) Snapshot() Snapshot {
	var s Snapshot
	_ = r.do(func(time.Time) error {
		st := r.st
		s = Snapshot{Region: r.region, AccountID: r.account, RegistrationCode: st.RegistrationCode,
			GroupMembers: setsToLists(st.Members), PolicyTargets: setsToLists(st.PolicyTargets),
			ThingPrincipals: setsToLists(st.ThingPrincipals), Counts: map[string]int{}}
		for _, k := range slices.Sorted(maps.Keys(st.CAs)) {
			s.CACertificates = append(s.CACertificates, *st.CAs[k])
		}
		for _, k := range slices.Sorted(maps.Keys(st.Certs)) {
			s.Certificates = append(s.Certificates, *st.Certs[k])
		}
		for _, k := range slices.Sorted(maps.Keys(st.Things)) {
			s.Things = append(s.Things, copyThing(st.Things[k]))
		}
		for _, k := range slices.Sorted(maps.Keys(st.ThingTypes)) {
			s.ThingTypes = append(s.ThingTypes, *st.ThingTypes[k])
		}
		for _, k := range slices.Sorted(maps.Keys(st.Groups)) {
			s.ThingGroups = append(s.ThingGroups, *st.Groups[k])
		}
		for _, k := range slices.Sorted(maps.Keys(st.Policies)) {
			s.Policies = append(s.Policies, *st.Policies[k])
		}
		for _, k := range slices.Sorted(maps.Keys(st.Jobs)) {
			s.Jobs = append(s.Jobs, *st.Jobs[k])
		}
		for _, t := range slices.Sorted(maps.Keys(st.Execs)) {
			for _, j := range slices.Sorted(maps.Keys(st.Execs[t])) {
				for _, e := range st.Execs[t][j] {
					s.JobExecutions = append(s.JobExecutions, copyExec(e))
				}
			}
		}
		s.EventConfigurations = map[string]bool{}
		for k, v := range st.Events {
			s.EventConfigurations[k] = v
		}
		s.Counts["caCertificates"] = len(s.CACertificates)
		s.Counts["certificates"] = len(s.Certificates)
		s.Counts["things"] = len(s.Things)
		s.Counts["thingGroups"] = len(s.ThingGroups)
		s.Counts["policies"] = len(s.Policies)
		s.Counts["jobs"] = len(s.Jobs)
		s.Counts["jobExecutions"] = len(s.JobExecutions)
		for _, c := range s.Certificates {
			s.Counts["certificates."+c.Status]++
		}
		for _, e := range s.JobExecutions {
			s.Counts["jobExecutions."+string(e.Status)]++
		}
		return nil
	})
	return s
}

func setsToLists(m map[string]map[string]bool) map[string][]string {
	out := make(map[string][]string, len(m))
	for k, set := range m {
		if len(set) > 0 { // never an empty set: slices.Sorted of one is nil, which marshals as null
			out[k] = slices.Sorted(maps.Keys(set))
		}
	}
	return out
}

func addToSet(m map[string]map[string]bool, k, v string) bool {
	set := m[k]
	if set == nil {
		set = map[string]bool{}
		m[k] = set
	}
	if set[v] {
		return false
	}
	set[v] = true
	return true
}

func removeFromSet(m map[string]map[string]bool, k, v string) bool {
	set := m[k]
	if !set[v] {
		return false
	}
	delete(set, v)
	if len(set) == 0 {
		delete(m, k)
	}
	return true
}

// describe returns a copy (by cp; nil: a shallow one) of the resource m
// holds under key, or ResourceNotFound naming kind. m must be a map of r.st.
func describe[T any](r *Registry, m map[string]*T, kind, key string, cp func(*T) T) (T, error) {
	var out T
	err := r.do(func(time.Time) error {
		v, ok := m[key]
		if !ok {
			return notFound(kind, key)
		}
		if cp != nil {
			out = cp(v)
		} else {
			out = *v
		}
		return nil
	})
	return out, err
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func copyThing(t *Thing) Thing {
	c := *t
	c.Attributes = copyMap(t.Attributes)
	return c
}

func copyExec(e *JobExecution) JobExecution {
	c := *e
	c.StatusDetails = copyMap(e.StatusDetails)
	return c
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
