package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// WithOwner chowns the temporary file, before the file appears under its
// name; a failing chown leaves nothing behind. Seen through the chown seam,
// so it runs without root (ctl's owner tests do it for real as root).
func TestWithOwnerChownsBeforeTheFileAppears(t *testing.T) {
	for _, write := range []struct {
		name string
		fn   func(string, []byte, os.FileMode, ...Option) error
	}{{"WriteFileWith", WriteFileWith}, {"CreateExclusiveWith", CreateExclusiveWith}} {
		t.Run(write.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "key.pem")
			var calls []string
			old := chown
			t.Cleanup(func() { chown = old })
			chown = func(f *os.File, uid, gid int) error {
				if _, err := os.Stat(path); err == nil {
					t.Errorf("chown after %s appeared", path)
				}
				if filepath.Dir(f.Name()) != dir || f.Name() == path {
					t.Errorf("chown of %s, want a temporary file in %s", f.Name(), dir)
				}
				calls = append(calls, f.Name())
				if uid != 4242 || gid != 4343 {
					t.Errorf("chown %d:%d", uid, gid)
				}
				return nil
			}
			if err := write.fn(path, []byte("x"), 0o600, WithOwner(4242, 4343)); err != nil {
				t.Fatal(err)
			}
			if len(calls) != 1 {
				t.Fatalf("chown calls %v, want one", calls)
			}
			// without the option: no chown
			calls = nil
			if err := write.fn(filepath.Join(dir, "other"), []byte("x"), 0o600); err != nil || len(calls) != 0 {
				t.Fatalf("no owner: err %v, chown calls %v", err, calls)
			}

			chown = func(*os.File, int, int) error { return os.ErrPermission }
			bad := filepath.Join(dir, "bad.pem")
			err := write.fn(bad, []byte("x"), 0o600, WithOwner(1, 1))
			if !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "owner 1:1") {
				t.Fatalf("failing chown: %v", err)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "key.pem" && e.Name() != "other" {
					t.Errorf("left behind: %s", e.Name())
				}
			}
		})
	}
}

// MkdirAll gives the directories it creates, and only those, the owner.
func TestMkdirAllOwnsCreatedDirectories(t *testing.T) {
	dir := t.TempDir()
	var got []string
	old := lchown
	t.Cleanup(func() { lchown = old })
	lchown = func(p string, uid, gid int) error { got = append(got, p); return nil }
	if err := MkdirAll(filepath.Join(dir, "a", "b"), 0o700, WithOwner(1, 1)); err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "a"), filepath.Join(dir, "a", "b")}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("chowned %v, want %v", got, want)
	}
}
