package demo

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
)

// event is one narrated line: what was observed, when (the source's own
// timestamp when it has one), by whom.
type event struct {
	at   time.Time
	src  string // "lab", "device", "journal", "demo"
	text string
}

// narrator prints events as "  +1.234s  src      text", in time order: events
// from the lab's log, the daemon's log and the journal arrive on different
// paths, so each is held back a little and the held ones are printed
// sorted.
type narrator struct {
	out   io.Writer
	start time.Time
	now   func() time.Time
	hold  time.Duration

	mu      sync.Mutex
	pending []event
	printed time.Time
	stop    chan struct{}
	done    chan struct{}
}

func newNarrator(out io.Writer, now func() time.Time) *narrator {
	n := &narrator{out: out, start: now(), now: now, hold: 150 * time.Millisecond, stop: make(chan struct{}), done: make(chan struct{})}
	go n.loop()
	return n
}

func (n *narrator) add(at time.Time, src, format string, args ...any) {
	if at.IsZero() {
		at = n.now()
	}
	n.mu.Lock()
	n.pending = append(n.pending, event{at: at, src: src, text: fmt.Sprintf(format, args...)})
	n.mu.Unlock()
}

// say narrates something the demo itself does, now.
func (n *narrator) say(format string, args ...any) { n.add(time.Time{}, "demo", format, args...) }

func (n *narrator) loop() {
	defer close(n.done)
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			n.flush(time.Time{})
			return
		case <-t.C:
			n.flush(n.now().Add(-n.hold))
		}
	}
}

// flush prints the events up to before (all of them when before is zero).
func (n *narrator) flush(before time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.flushLocked(before)
}

func (n *narrator) flushLocked(before time.Time) {
	sort.SliceStable(n.pending, func(i, j int) bool { return n.pending[i].at.Before(n.pending[j].at) })
	k := 0
	for ; k < len(n.pending); k++ {
		e := n.pending[k]
		if !before.IsZero() && e.at.After(before) {
			break
		}
		at := e.at
		if at.Before(n.printed) { // arrived too late to be in order: keep the clock monotonic
			at = n.printed
		}
		n.printed = at
		fmt.Fprintf(n.out, "  %+8.3fs  %-7s  %s\n", at.Sub(n.start).Seconds(), e.src, e.text)
	}
	n.pending = n.pending[k:]
}

// sync prints everything observed so far (before the demo prints a block
// of its own, like the final status).
func (n *narrator) sync() {
	time.Sleep(n.hold)
	n.flush(time.Time{})
}

func (n *narrator) close() {
	close(n.stop)
	<-n.done
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// labWatcher turns the lab's JSON log (its stderr) into narration. It
// keeps the raw log in a file for the failure report.
type labWatcher struct {
	n    *narrator
	boot string // bootstrap certificate ID

	mu       sync.Mutex
	refused  map[string]int // certificate ID -> refusals by fault injection
	deleted  map[string]bool
	statuses map[string]string // certificate ID -> last status seen
	jobs     []string          // job execution statuses seen, in order
	acts     []string          // activator's registry operations since the JITR

	// fleet provisioning
	claim       string // claim certificate ID
	provisioned string // certificate RegisterThing activated
	hookRefused int    // refusals by the pre-provisioning hook
}

func (w *labWatcher) setClaim(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.claim = id
}

func (w *labWatcher) provisionedID() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.provisioned
}

func (w *labWatcher) hookRefusals() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.hookRefused
}

func newLabWatcher(n *narrator) *labWatcher {
	return &labWatcher{n: n, refused: map[string]int{}, deleted: map[string]bool{}, statuses: map[string]string{}}
}

// onLine handles one line of the lab's stderr.
func (w *labWatcher) onLine(line string) {
	var m map[string]any
	if json.Unmarshal([]byte(line), &m) == nil {
		w.line(m)
	}
}

func str(m map[string]any, k string) string {
	switch v := m[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case nil:
		return ""
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

func (w *labWatcher) certName(id string) string {
	switch {
	case id == "":
		return "?"
	case id == w.boot:
		return "bootstrap certificate " + short(id)
	case id == w.claim:
		return "claim certificate " + short(id)
	default:
		return "certificate " + short(id)
	}
}

func (w *labWatcher) line(m map[string]any) {
	at, _ := time.Parse(time.RFC3339Nano, str(m, "time"))
	msg, comp, op := str(m, "msg"), str(m, "component"), str(m, "op")
	res, outcome := str(m, "resource"), str(m, "outcome")
	say := func(format string, args ...any) { w.n.add(at, "lab", format, args...) }
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case comp == "registry" && op == "JITR":
		w.acts = []string{}
		say("JITR: unknown %s from a registered CA: registered %s, connection closed", w.certName(res), str(m, "status"))
	case comp == "registry" && w.acts != nil && (op == "CreateThing" || op == "AttachPolicy" || op == "AttachThingPrincipal" || op == "AddThingToThingGroup"):
		w.acts = append(w.acts, op+" "+res)
	case msg == "jitr admitted":
		say("activator: allow list and CRL checked; %s; %s ACTIVE", strings.Join(w.acts, ", "), w.certName(str(m, "certificateId")))
		w.acts = nil
	case comp == "registry" && op == "QueueJobExecution":
		say("job execution %s queued (continuous job, thing in group bootcert-rotation)", res)
	case comp == "broker" && msg == "connected":
		say("broker: %s connected with %s (policy %s)", str(m, "clientId"), w.certName(str(m, "certificateId")), str(m, "policy"))
	case comp == "broker" && msg == "connect refused":
		id := str(m, "certificateId")
		reason := str(m, "reason")
		if reason == "refused by fault injection" {
			w.refused[id]++
			say("broker: CONNECT with %s refused by fault injection (%d)", w.certName(id), w.refused[id])
		} else {
			say("broker: CONNECT with %s refused: %s %s", w.certName(id), reason, str(m, "status"))
		}
	case comp == "broker" && msg == "job execution started":
		say("broker: job %s delivered to the device (start-next accepted, %s)", str(m, "jobId"), str(m, "status"))
	case msg == "certificate issued" && str(m, "function") == "VendorFunction":
		say("vendor: CSR checked, CreateCertificateFromCsr issued %s, operational policy attached, get/accepted published", w.certName(str(m, "certificateId")))
	case msg == "rotation committed" && str(m, "function") == "VendorFunction":
		say("vendor: ack over the new certificate accepted, ack/accepted published (commit point)")
	case comp == "registry" && op == "UpdateCertificate" && outcome == "status changed":
		w.statuses[res] = str(m, "new")
		if str(m, "old") != "PENDING_ACTIVATION" {
			say("%s now %s (was %s)", w.certName(res), str(m, "new"), str(m, "old"))
		}
	case comp == "registry" && op == "DeleteCertificate":
		w.deleted[res] = true
		say("%s deleted", w.certName(res))
	case comp == "registry" && op == "JobExecution" && strings.HasPrefix(outcome, "status ") && str(m, "old") != strings.TrimPrefix(outcome, "status "):
		st := strings.TrimPrefix(outcome, "status ")
		w.jobs = append(w.jobs, st)
		say("job execution %s: %s -> %s", res, str(m, "old"), st)
	case msg == "job execution ended" && str(m, "function") == "ReaperFunction":
		retired := str(m, "retired")
		var ids []string
		if json.Unmarshal([]byte(retired), &ids) == nil && len(ids) > 0 {
			retired = shorts(ids)
		} else if retired == "" || retired == "null" || retired == "[]" {
			retired = "nothing"
		}
		say("reaper: execution %s (committed %s), retired %s", str(m, "status"), str(m, "committed"), retired)
	case comp == "provisioning" && strings.HasPrefix(msg, "CreateCertificateFromCsr: certificate issued"):
		say("fleet provisioning: CreateCertificateFromCsr from the holder of the %s: %s issued PENDING_ACTIVATION, ownership token (valid 1h) in the reply", w.certName(str(m, "claimCertificateId")), w.certName(str(m, "certificateId")))
	case msg == "fleet provisioning refused" && str(m, "function") == "ProvisionHookFunction":
		w.hookRefused++
		say("pre-provisioning hook: serial %s refused (%s): RegisterThing rejected 403 AccessDenied, nothing created", str(m, "serial"), str(m, "reason"))
	case msg == "fleet provisioning allowed" && str(m, "function") == "ProvisionHookFunction":
		say("pre-provisioning hook: serial %s on the allow list, not denied, key bound to it: allowed", str(m, "serial"))
	case comp == "provisioning" && msg == "RegisterThing: thing provisioned":
		w.provisioned = str(m, "certificateId")
		say("RegisterThing (template bootcert-fleet): thing %s (type %s) in groups %s, policy %s on %s, now %s", str(m, "thing"), str(m, "thingType"),
			str(m, "groups"), str(m, "policies"), w.certName(w.provisioned), str(m, "certificateStatus"))
	case comp == "faults" && msg == "faults set":
		say("fault injection: refuseIssuedCertificates=%s", str(m, "refuseIssuedCertificates"))
	case str(m, "level") == "WARN" || str(m, "level") == "ERROR":
		say("%s %s: %s %s", str(m, "level"), msg, str(m, "function"), str(m, "err"))
	}
}

func (w *labWatcher) refusals() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := 0
	for _, c := range w.refused {
		t += c
	}
	return t
}

// deviceWatcher turns bootcertd's log (slog text on stderr) into narration.
type deviceWatcher struct {
	n *narrator
}

// onLine handles one line of bootcertd's output.
func (w deviceWatcher) onLine(line string) { w.line(parseLogfmt(line)) }

func (w deviceWatcher) line(m map[string]string) {
	at, _ := time.Parse(time.RFC3339Nano, m["time"])
	say := func(format string, args ...any) { w.n.add(at, "device", format, args...) }
	cred := func(g string) string {
		if g == "0" {
			return "the bootstrap credential"
		}
		return "generation " + g
	}
	switch msg := m["msg"]; msg {
	case "bootcertd started":
		say("bootcertd started: thing %s, broker %s", m["thing"], m["endpoint"])
	case "connect failed":
		say("connect with %s failed (refused=%s): %s", cred(m["generation"]), m["refused"], m["err"])
	case "connected":
		say("connected with %s (certificate %s)", cred(m["generation"]), short(m["certificateId"]))
	case "rotation started":
		say("job %s received: rotation to generation %s started", m["job"], m["generation"])
	case "switched credentials":
		say("certificate verified (key match, validity, CN); swapped to generation %s, reconnecting", m["generation"])
	case "rotation committed":
		say("ack accepted: generation %s committed, job reported SUCCEEDED", m["generation"])
	case "generating the operational key in hardware":
		say("onboarding by claim: operational key generated in the TPM (the claim key is never the operational key)")
	case "CreateCertificateFromCsr accepted: certificate staged as generation 1":
		say("CreateCertificateFromCsr accepted over the claim connection: certificate %s staged as generation 1", short(m["certificateId"]))
	case "RegisterThing accepted":
		say("RegisterThing accepted: thing %s", m["thing"])
	case "onboarded by claim: connected with generation 1":
		say("onboarded by claim: connected with generation 1 (certificate %s); from now on an ordinary device", short(m["certificateId"]))
	case "starting over from the same key":
		say("starting over from the same key: %s", m["reason"])
	case "onboarding by claim: step failed; retrying":
		say("onboarding step failed at %s, retrying in %s: %s", m["phase"], m["retryIn"], m["err"])
	case "rolled back", "rotation failed", "session refused right after connect", "session ended", "job refused":
		var kv []string
		for _, k := range []string{"generation", "job", "reason", "err"} {
			if m[k] != "" {
				kv = append(kv, k+"="+m[k])
			}
		}
		say("%s %s", msg, strings.Join(kv, " "))
	default:
		if m["level"] == "ERROR" {
			say("ERROR %s %s", msg, m["err"])
		}
	}
}

// parseLogfmt parses one slog text line: key=value or key="quoted value".
func parseLogfmt(line string) map[string]string {
	m := map[string]string{}
	for line != "" {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq <= 0 {
			break
		}
		k := line[:eq]
		line = line[eq+1:]
		var v string
		if strings.HasPrefix(line, `"`) {
			end := 1
			for end < len(line) && line[end] != '"' {
				if line[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(line) {
				end = len(line) - 1
			}
			q := line[:end+1]
			line = line[end+1:]
			if u, err := strconv.Unquote(q); err == nil {
				v = u
			} else {
				v = strings.Trim(q, `"`)
			}
		} else {
			sp := strings.IndexByte(line, ' ')
			if sp < 0 {
				sp = len(line)
			}
			v, line = line[:sp], line[sp:]
		}
		m[k] = v
	}
	return m
}

// journalWatcher polls the daemon's journal file and narrates each phase it
// sees (a phase shorter than the poll interval can be missed; the daemon's
// log and the lab's log still tell the story).
type journalWatcher struct {
	n    *narrator
	path string

	mu     sync.Mutex
	last   journal.Entry
	phases []journal.Phase
}

func (w *journalWatcher) read() (journal.Entry, bool) {
	b, err := os.ReadFile(w.path)
	if err != nil {
		return journal.Entry{}, false
	}
	e, err := journal.Decode(b)
	return e, err == nil
}

func (w *journalWatcher) run(stop <-chan struct{}) {
	t := time.NewTicker(500 * time.Microsecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		e, ok := w.read()
		if !ok {
			continue
		}
		w.mu.Lock()
		changed := e.Phase != w.last.Phase || e.Generation != w.last.Generation || e.Result != w.last.Result
		if changed {
			w.last = e
			w.phases = append(w.phases, e.Phase)
		}
		w.mu.Unlock()
		if changed {
			// the time it was seen (the entry's updatedAt can be older: a
			// restarted daemon completes an unjournalled swap)
			w.n.add(time.Time{}, "journal", "%s", describeEntry(e))
		}
	}
}

func describeEntry(e journal.Entry) string {
	switch e.Phase {
	case journal.KeyStaged:
		return fmt.Sprintf("key-staged: new key for generation %d generated in the TPM (%s), CSR made", e.Generation, keyFile(e.KeyURI))
	case journal.CertStaged:
		return fmt.Sprintf("cert-staged: certificate %s for generation %d stored", short(e.CertificateID), e.Generation)
	case journal.Switched:
		return fmt.Sprintf("switched: generation %d is the active credential (previous %d kept until the ack)", e.Generation, e.Previous)
	case journal.Committed:
		return fmt.Sprintf("committed: generation %d, previous credential being removed", e.Generation)
	case journal.RolledBack:
		return fmt.Sprintf("rolled-back: generation %d abandoned: %s", e.Generation, e.Reason)
	case journal.Idle:
		if e.Result == "" {
			return "idle"
		}
		s := fmt.Sprintf("idle: last rotation %s", e.Result)
		if e.Reason != "" {
			s += ": " + e.Reason
		}
		return s
	}
	return string(e.Phase)
}

// keyFile is the blob file of a tpm: key URI (no PIN can be in one).
func keyFile(uri string) string {
	if i := strings.Index(uri, "blob="); i >= 0 {
		return filepath.Base(strings.SplitN(uri[i+5:], ";", 2)[0])
	}
	return uri
}

// block prints everything observed so far, then text as it is.
func (n *narrator) block(text string) {
	time.Sleep(n.hold)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.flushLocked(time.Time{})
	io.WriteString(n.out, text)
}

func (w *labWatcher) refusedIDs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Sorted(maps.Keys(w.refused))
}
