package metrics

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/protocol"
)

// Parse reads a textfile with the parser node_exporter's textfile
// collector uses (prometheus/common expfmt): a file it rejects is dropped
// whole by the collector.
func Parse(t *testing.T, data []byte) map[string]*dto.MetricFamily {
	t.Helper()
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not valid Prometheus text: %v\n%s", err, data)
	}
	return fams
}

// Value is the value of name's sample with the given label (or the only
// sample when label is "").
func Value(t *testing.T, fams map[string]*dto.MetricFamily, name, labelName, labelValue string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
	for _, m := range f.Metric {
		if labelName == "" {
			return value(m)
		}
		for _, l := range m.Label {
			if l.GetName() == labelName && l.GetValue() == labelValue {
				return value(m)
			}
		}
	}
	t.Fatalf("metric %s has no sample with %s=%q", name, labelName, labelValue)
	return 0
}

func value(m *dto.Metric) float64 {
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

var t0 = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

func status() control.Status {
	return control.Status{
		Thing: `gw-"odd"\1`, Phase: journal.Idle, Connection: "connected", ConnectedWith: 2, Endpoint: "iot.example:8883",
		Active:   control.ActiveCredential{Generation: 2, CertificateID: "abc", NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(90 * 24 * time.Hour), Backend: "tpm"},
		Counters: control.Counters{Since: t0.Add(-2 * time.Hour), Connects: 3, Refusals: 1, Fallbacks: 1, LastSuccess: t0.Add(-time.Hour)},
		Recovery: control.Recovery{Bootstrap: true, BootstrapNotAfter: t0.Add(365 * 24 * time.Hour)},
		Lockout:  &control.Lockout{Counter: 2, MaxTries: 32},
	}
}

func TestRenderParses(t *testing.T) {
	s := status()
	s.Counters.AddRotation(protocol.JobSucceeded)
	s.Counters.AddRotation(protocol.JobSucceeded)
	s.Counters.AddRotation("REJECTED")
	var b bytes.Buffer
	if err := Render(&b, s, t0); err != nil {
		t.Fatal(err)
	}
	fams := Parse(t, b.Bytes())
	for _, c := range []struct {
		name, ln, lv string
		want         float64
	}{
		{"bootcert_info", "thing", `gw-"odd"\1`, 1},
		{"bootcert_info", "backend", "tpm", 1},
		{"bootcert_active_generation", "", "", 2},
		{"bootcert_certificate_not_after_seconds", "", "", float64(t0.Add(90 * 24 * time.Hour).Unix())},
		{"bootcert_certificate_not_before_seconds", "", "", float64(t0.Add(-time.Hour).Unix())},
		{"bootcert_rotations_total", "outcome", "SUCCEEDED", 2},
		{"bootcert_rotations_total", "outcome", "FAILED", 0},
		{"bootcert_rotations_total", "outcome", "ROLLED_BACK", 0},
		{"bootcert_rotations_total", "outcome", "REJECTED", 1},
		{"bootcert_last_successful_rotation_timestamp_seconds", "", "", float64(t0.Add(-time.Hour).Unix())},
		{"bootcert_connects_total", "", "", 3},
		{"bootcert_refusals_total", "", "", 1},
		{"bootcert_fallbacks_total", "", "", 1},
		{"bootcert_recoveries_left", "", "", 1},
		{"bootcert_connected", "", "", 1},
		{"bootcert_connected_generation", "", "", 2},
		{"bootcert_tpm_lockout_counter", "", "", 2},
		{"bootcert_tpm_lockout_max_tries", "", "", 32},
	} {
		if got := Value(t, fams, c.name, c.ln, c.lv); got != c.want {
			t.Errorf("%s{%s=%q} = %v, want %v", c.name, c.ln, c.lv, got, c.want)
		}
	}
	if fams["bootcert_rotations_total"].GetType() != dto.MetricType_COUNTER {
		t.Errorf("rotations_total is %v", fams["bootcert_rotations_total"].GetType())
	}
	// the bootstrap certificate expired: no recovery left; no lockout
	// reading: no lockout figures (absent, not a made-up 0)
	s.Recovery.BootstrapNotAfter = t0.Add(-time.Minute)
	s.Lockout = nil
	b.Reset()
	Render(&b, s, t0)
	fams = Parse(t, b.Bytes())
	if got := Value(t, fams, "bootcert_recoveries_left", "", ""); got != 0 {
		t.Errorf("recoveries left %v with the bootstrap certificate expired", got)
	}
	if _, ok := fams["bootcert_tpm_lockout_counter"]; ok {
		t.Error("lockout figures written without a reading")
	}
}

// The file is replaced atomically, only when a figure changes, and a
// directory that cannot be written is an error (logged by the daemon),
// never a panic or a partial file.
func TestTextfile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bootcert.prom")
	tf := NewTextfile(path, func() time.Time { return t0 }, nil)
	s := status()
	if err := tf.Update(s); err != nil {
		t.Fatal(err)
	}
	fi1, _ := os.Stat(path)
	if fi1.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 (node_exporter runs as another user)", fi1.Mode().Perm())
	}
	ino := func() uint64 { fi, _ := os.Stat(path); return inode(fi) }
	i1 := ino()
	tf.Update(s) // nothing changed: not rewritten
	if ino() != i1 {
		t.Error("file rewritten without a change")
	}
	s.Counters.Refusals++
	tf.Update(s)
	if ino() == i1 {
		t.Error("file not replaced (rename) after a change")
	}
	data, _ := os.ReadFile(path)
	if got := Value(t, Parse(t, data), "bootcert_refusals_total", "", ""); got != 2 {
		t.Errorf("refusals %v after the change", got)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "bootcert.prom" {
			t.Errorf("left behind: %s", e.Name())
		}
		if strings.HasSuffix(e.Name(), ".prom") && e.Name() != "bootcert.prom" {
			t.Errorf("a temp file the collector would read: %s", e.Name())
		}
	}
	bad := NewTextfile(filepath.Join(dir, "missing", "bootcert.prom"), nil, nil)
	if err := bad.Update(s); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}
