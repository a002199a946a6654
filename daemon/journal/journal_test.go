package journal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
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
