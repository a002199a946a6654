package registry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/internal/clock"
)

// jitrDevice runs the registry side of one device's JITR and activation.
func jitrDevice(t testing.TB, r *Registry, ca testCA, caID, name string) {
	t.Helper()
	der, _ := ca.issue(t, name)
	c, _, err := r.RegisterPendingCertificate(der, caID)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		r.UpdateCertificate(c.ID, StatusActive),
		func() error { _, err := r.CreateThing(name, "bootcert-gateway", nil); return err }(),
		r.AttachThingPrincipal(name, c.ARN),
		r.AttachPolicy("bootcert-bootstrap", c.ARN),
		r.AddThingToThingGroup("bootcert-rotation", name),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func snapJSON(r *Registry) string {
	b, _ := json.Marshal(r.Snapshot())
	return string(b)
}

// TestJournalPerRecord: a device's JITR and activation are written as the
// records they change (registry.json is not rewritten), survive a crash
// (reopen without Close), a torn last line is dropped, a bad line in the
// middle is an error naming the journal.
func TestJournalPerRecord(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(t0)
	r := open(t, dir, clk)
	ca := newCA(t, "factory")
	cac := registerCA(t, r, ca)
	setupRotation(t, r)
	if _, err := r.CreatePolicy("bootcert-bootstrap", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}`); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, FileName)
	jpath := filepath.Join(dir, JournalName)
	before, _ := os.ReadFile(snap)
	for i := range 5 {
		jitrDevice(t, r, ca, cac.ID, fmt.Sprintf("gw-%d", i))
	}
	// Start and finish the continuous job's execution of one device.
	if _, _, ok, err := r.StartNextPendingJobExecution("gw-0", nil, nil); err != nil || !ok {
		t.Fatalf("start: %v %v", ok, err)
	}
	if after, _ := os.ReadFile(snap); !bytes.Equal(before, after) {
		t.Fatalf("registry.json rewritten by record changes")
	}
	j, _ := os.ReadFile(jpath)
	if n := bytes.Count(j, []byte("\n")); n < 5*6 {
		t.Fatalf("journal has %d lines, want one per change (>= 30)", n)
	}
	want := snapJSON(r)
	if got := snapJSON(open(t, dir, clk)); got != want { // no Close: a crash
		t.Fatalf("state changed across a crash:\nbefore %s\nafter  %s", want, got)
	}
	// A write torn by a crash: dropped, and cut off the file.
	if err := os.WriteFile(jpath, append(j, []byte(`{"seq":999999,"recs":[{"k":"thing","id":"gw-0","v":nu`)...), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := snapJSON(open(t, dir, clk)); got != want {
		t.Fatalf("torn line changed the state")
	}
	if cut, _ := os.ReadFile(jpath); !bytes.Equal(cut, j) {
		t.Errorf("torn line not cut off (%d bytes, want %d)", len(cut), len(j))
	}
	// A bad complete line is corruption: refused, nothing rewritten.
	bad := append([]byte("{not json}\n"), j...)
	if err := os.WriteFile(jpath, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), JournalName) || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("corrupt journal: %v", err)
	}
	if got, _ := os.ReadFile(jpath); !bytes.Equal(got, bad) {
		t.Errorf("corrupt journal changed")
	}
}

// TestJournalCompacts: past its threshold the journal is folded into
// registry.json and emptied; a change no record describes (DeleteThing)
// rewrites registry.json at once. Both keep the state across a crash.
func TestJournalCompacts(t *testing.T) {
	old := compactMin
	compactMin = 4 << 10
	defer func() { compactMin = old }()
	dir := t.TempDir()
	clk := clock.NewFake(t0)
	r := open(t, dir, clk)
	ca := newCA(t, "factory")
	cac := registerCA(t, r, ca)
	setupRotation(t, r)
	if _, err := r.CreatePolicy("bootcert-bootstrap", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}`); err != nil {
		t.Fatal(err)
	}
	jpath := filepath.Join(dir, JournalName)
	maxJ := int64(0)
	for i := range 30 {
		jitrDevice(t, r, ca, cac.ID, fmt.Sprintf("gw-%d", i))
		fi, err := os.Stat(jpath)
		if err != nil {
			t.Fatal(err)
		}
		maxJ = max(maxJ, fi.Size())
	}
	snapFi, _ := os.Stat(filepath.Join(dir, FileName))
	if limit := max(compactMin, snapFi.Size()) + 8<<10; maxJ > limit {
		t.Errorf("journal grew to %d bytes, past the compaction threshold (%d)", maxJ, limit)
	}
	if err := r.DeleteThing("gw-29", nil); err == nil {
		t.Log("deleted gw-29")
	}
	want := snapJSON(r)
	if got := snapJSON(open(t, dir, clk)); got != want {
		t.Fatalf("state changed across a crash after compactions")
	}
	if !strings.Contains(want, `"gw-28"`) {
		t.Fatalf("things missing: %s", want[:200])
	}
}
