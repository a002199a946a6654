package journal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/credset"
)

func TestTransitions(t *testing.T) {
	tests := []struct {
		name     string
		from, to Phase
	}{
		{"ok/idle-keystaged", Idle, KeyStaged},
		{"ok/keystaged-certstaged", KeyStaged, CertStaged},
		{"ok/certstaged-switched", CertStaged, Switched},
		{"ok/switched-committed", Switched, Committed},
		{"ok/switched-rolledback", Switched, RolledBack},
		{"ok/committed-idle", Committed, Idle},
		{"ok/same", KeyStaged, KeyStaged},
		{"fail/idle-switched", Idle, Switched},
		{"fail/idle-committed", Idle, Committed},
		{"fail/keystaged-committed", KeyStaged, Committed},
		{"fail/committed-switched", Committed, Switched},
		{"fail/unknown", Idle, Phase("nope")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			j, _ := Open(dir)
			// walk to "from" along valid transitions
			path := map[Phase][]Phase{Idle: nil, KeyStaged: {KeyStaged}, CertStaged: {KeyStaged, CertStaged}, Switched: {KeyStaged, CertStaged, Switched}, Committed: {KeyStaged, CertStaged, Switched, Committed}}
			for _, p := range path[tt.from] {
				if err := j.Write(Entry{Phase: p}); err != nil {
					t.Fatal(err)
				}
			}
			err := j.Write(Entry{Phase: tt.to, JobID: "job"})
			if (err == nil) != (tt.name[:3] == "ok/") {
				t.Fatalf("Write %s -> %s: %v", tt.from, tt.to, err)
			}
			j2, err2 := Open(dir)
			if err2 != nil {
				t.Fatal(err2)
			}
			want := tt.to
			if err != nil {
				want = tt.from
				if !errors.Is(err, ErrTransition) {
					t.Errorf("error %v is not ErrTransition", err)
				}
			}
			if j2.Current().Phase != want {
				t.Errorf("on disk phase %s, want %s", j2.Current().Phase, want)
			}
		})
	}
}

func TestWriteFailureKeepsOldState(t *testing.T) {
	dir := t.TempDir()
	j, _ := Open(dir)
	now := time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)
	if err := j.Write(Entry{Phase: KeyStaged, JobID: "j1", Generation: 1, StartedAt: now}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(j.Path())
	boom := errors.New("disk full")
	j.SetWriter(func(string, []byte, os.FileMode) error { return boom })
	if err := j.Write(Entry{Phase: CertStaged, JobID: "j1", Generation: 1}); !errors.Is(err, boom) {
		t.Fatalf("Write: %v, want the writer's error", err)
	}
	if j.Current().Phase != KeyStaged {
		t.Errorf("in-memory phase moved to %s after a failed write", j.Current().Phase)
	}
	after, _ := os.ReadFile(j.Path())
	if string(before) != string(after) {
		t.Errorf("journal file changed after a failed write")
	}
	j2, _ := Open(dir)
	if e := j2.Current(); e.Phase != KeyStaged || !e.StartedAt.Equal(now) || e.Generation != 1 {
		t.Errorf("reopened: %+v", e)
	}
}

func TestOpenCorrupt(t *testing.T) {
	for name, body := range map[string]string{
		"fail/garbage":   "{not json",
		"fail/phase":     `{"phase":"dancing"}`,
		"fail/negative":  `{"phase":"idle","generation":-1}`,
		"fail/truncated": `{"phase":"key-st`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, FileName), []byte(body), 0o600)
			if _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v, want ErrCorrupt", err)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"phase":"switched","jobId":"j","generation":3,"previous":2}`))
	f.Add([]byte(`{"phase":"idle"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Decode(data)
		if err == nil && !e.Phase.Valid() {
			t.Fatalf("accepted phase %q", e.Phase)
		}
	})
}

// TestOpenLegacyJournal: a journal written before the key's role and the
// mode were recorded (exactly what the previous release wrote) still opens,
// and says it is legacy so the engine fills them in.
func TestOpenLegacyJournal(t *testing.T) {
	dir := t.TempDir()
	legacy := `{
  "phase": "key-staged",
  "jobId": "rot-1",
  "clientToken": "0123456789abcdef01234567",
  "generation": 1,
  "keyUri": "file:/var/lib/bootcert/keys/op-1.pem",
  "doc": {"operation": "bootcert.rotate", "version": "1"},
  "startedAt": "2026-01-01T00:00:00Z",
  "updatedAt": "2026-01-01T00:00:01Z"
}
`
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := Open(dir)
	if err != nil {
		t.Fatalf("Open of a legacy journal: %v", err)
	}
	e := j.Current()
	if e.Phase != KeyStaged || e.Generation != 1 || e.JobID != "rot-1" || !e.Legacy() {
		t.Fatalf("legacy journal read as %+v (Legacy %v)", e, e.Legacy())
	}
	e.KeyRole, e.Mode = credset.RoleStaged, credset.ModeOnDemand
	if e.Legacy() {
		t.Error("an entry with role and mode is still legacy")
	}
	if err := j.Write(e); err != nil {
		t.Fatal(err)
	}
	j2, err := Open(dir)
	if err != nil || j2.Current().Mode != credset.ModeOnDemand || j2.Current().KeyRole != credset.RoleStaged {
		t.Fatalf("reopened: %+v, %v", j2.Current(), err)
	}
}
