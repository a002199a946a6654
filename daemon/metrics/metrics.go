// Package metrics writes the figures an operator alerts on in the
// Prometheus text exposition format, for node_exporter's textfile collector
// (the gateway convention: no listening port on the device). The file is
// rewritten atomically (internal/atomicfile: temp file ".NAME.tmp-*", which
// the collector's *.prom glob never matches, then rename) whenever a figure
// changes. The figures come from the engine's status (control.Status),
// which `bootcertctl status --json` shows too.
//
// Times are exported as Unix timestamps, not durations (certificate age =
// time() - bootcert_certificate_not_before_seconds): a textfile is read
// long after it is written, and a timestamp stays true.
package metrics

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/protocol"
)

// DefaultTextfile is where Debian's prometheus-node-exporter package points
// its textfile collector (--collector.textfile.directory).
const DefaultTextfile = "/var/lib/prometheus/node-exporter/bootcert.prom"

// outcomes are always written, so that a rate() over them starts at zero.
var outcomes = []protocol.Result{protocol.JobSucceeded, protocol.JobFailed, protocol.ResultRolledBack}

// Render writes s in the Prometheus text format (version 0.0.4). now is the
// time used for figures that depend on it (recoveries left).
func Render(w io.Writer, s control.Status, now time.Time) error {
	var b bytes.Buffer
	metric := func(name, typ, help string, samples ...string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, x := range samples {
			fmt.Fprintf(&b, "%s%s\n", name, x)
		}
	}
	num := func(v any) string { return fmt.Sprintf(" %v", v) }
	ts := func(t time.Time) string {
		if t.IsZero() {
			return " 0"
		}
		return fmt.Sprintf(" %d", t.Unix())
	}
	thing := label("thing", s.Thing)
	metric("bootcert_info", "gauge", "Identity of this gateway (value always 1): thing name, key backend of the active credential, endpoint.",
		fmt.Sprintf("{%s,%s,%s} 1", thing, label("backend", orNone(s.Active.Backend)), label("endpoint", s.Endpoint)))
	metric("bootcert_active_generation", "gauge", "Active credential generation (0: the bootstrap certificate).", num(s.Active.Generation))
	metric("bootcert_certificate_not_after_seconds", "gauge", "Unix time the active certificate expires (0: none).", ts(s.Active.NotAfter))
	metric("bootcert_certificate_not_before_seconds", "gauge", "Unix time the active certificate became valid; its age is time() minus this.", ts(s.Active.NotBefore))
	metric("bootcert_connected", "gauge", "1 while an MQTT session is up.", num(b2i(s.Connection == "connected")))
	metric("bootcert_connected_generation", "gauge", "Generation of the credential the session uses (-1: not connected).", num(connectedGen(s)))
	metric("bootcert_rotation_in_progress", "gauge", "1 while a rotation is between key-staged and its commit or rollback.", num(b2i(rotating(s.Phase))))
	var rot []string
	for _, o := range mergeOutcomes(s.Counters.Rotations) {
		rot = append(rot, fmt.Sprintf("{%s} %d", label("outcome", string(o)), s.Counters.Rotations[o]))
	}
	metric("bootcert_rotations_total", "counter", "Rotations finished since the daemon started, by outcome (SUCCEEDED, FAILED, ROLLED_BACK).", rot...)
	metric("bootcert_last_successful_rotation_timestamp_seconds", "gauge", "Unix time the last rotation committed (0: never).", ts(s.Counters.LastSuccess))
	metric("bootcert_connects_total", "counter", "MQTT sessions established since the daemon started.", num(s.Counters.Connects))
	metric("bootcert_refusals_total", "counter", "Connects the broker refused (or closed before the session was usable) since the daemon started.", num(s.Counters.Refusals))
	metric("bootcert_fallbacks_total", "counter", "Connects with the bootstrap certificate while an operational one was active, since the daemon started.", num(s.Counters.Fallbacks))
	metric("bootcert_recoveries_left", "gauge", "Fallback credentials still usable if the active one fails (1: the bootstrap certificate is allowed and valid; 0: none).", num(s.Recovery.Left(now)))
	metric("bootcert_bootstrap_not_after_seconds", "gauge", "Unix time the bootstrap (recovery) certificate expires.", ts(s.Recovery.BootstrapNotAfter))
	metric("bootcert_start_time_seconds", "gauge", "Unix time the daemon started (the counters' origin).", ts(s.Counters.Since))
	metric("bootcert_last_error_timestamp_seconds", "gauge", "Unix time of the last error status shows (0: none).", ts(errorAt(s)))
	if l := s.Lockout; l != nil {
		metric("bootcert_tpm_lockout_counter", "gauge", "The TPM's dictionary-attack failure counter (TPM_PT_LOCKOUT_COUNTER).", num(l.Counter))
		metric("bootcert_tpm_lockout_max_tries", "gauge", "Failures before the TPM locks out (TPM_PT_MAX_AUTH_FAIL).", num(l.MaxTries))
		metric("bootcert_tpm_in_lockout", "gauge", "1 while the TPM refuses authorizations (TPMA_PERMANENT inLockout).", num(b2i(l.InLockout)))
	}
	_, err := w.Write(b.Bytes())
	return err
}

func errorAt(s control.Status) time.Time {
	if s.LastError == "" {
		return time.Time{}
	}
	return s.LastErrorAt
}

func connectedGen(s control.Status) int {
	if s.Connection != "connected" {
		return -1
	}
	return s.ConnectedWith
}

func rotating(p journal.Phase) bool {
	return p == journal.KeyStaged || p == journal.CertStaged || p == journal.Switched
}

func mergeOutcomes(m map[protocol.Result]int) []protocol.Result {
	out := slices.Clone(outcomes)
	for k := range m {
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	slices.Sort(out[len(outcomes):])
	return out
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// label is name="value" with the text format's escapes (\\, \", \n).
func label(name, v string) string {
	v = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
	return name + `="` + v + `"`
}

// Textfile keeps a .prom file up to date.
type Textfile struct {
	path string
	now  func() time.Time
	log  *slog.Logger

	mu     sync.Mutex
	last   []byte
	failed bool
}

// NewTextfile writes to path (a *.prom file in the collector's directory).
// now is the clock (nil: time.Now).
func NewTextfile(path string, now func() time.Time, log *slog.Logger) *Textfile {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Textfile{path: path, now: now, log: log}
}

// Update renders s and replaces the file when its content changed. A
// failure is logged once (until a write works again) and returned; it never
// stops the daemon.
func (t *Textfile) Update(s control.Status) error {
	var b bytes.Buffer
	if err := Render(&b, s, t.now()); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if bytes.Equal(b.Bytes(), t.last) {
		return nil
	}
	// 0644: node_exporter runs as another user
	if err := atomicfile.WriteFile(t.path, b.Bytes(), 0o644); err != nil {
		if !t.failed {
			t.log.Warn("writing the metrics textfile (metrics.textfile)", "path", t.path, "err", err,
				"fix", fmt.Sprintf("the directory must exist and be writable by bootcertd: add ReadWritePaths=%s to the unit with systemctl edit bootcertd", filepath.Dir(t.path)))
		}
		t.failed = true
		return err
	}
	t.failed = false
	t.last = b.Bytes()
	return nil
}

// Remove deletes the file (at a clean stop, so that stale figures do not
// linger: node_exporter then shows no bootcert metrics, an absent() alert).
func (t *Textfile) Remove() error {
	err := os.Remove(t.path)
	if os.IsNotExist(err) {
		return nil
	}
	return err
}
