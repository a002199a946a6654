// Package atomicfile writes files so that a reader, or a crash at any
// instant, sees either the old content or the new one, never a mix: temp file
// in the same directory, fsync, rename, fsync the directory.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Option changes how a file is written.
type Option func(*options)

type options struct {
	owner    bool
	uid, gid int
}

// WithOwner gives the new file (and directories MkdirAll creates) the owner
// uid:gid. The temporary file is chowned before it is renamed or linked into
// place, so the file never appears under path with another owner: a crash
// leaves either no file or the file with its final owner and mode.
func WithOwner(uid, gid int) Option {
	return func(o *options) { o.owner, o.uid, o.gid = true, uid, gid }
}

// chown is (*os.File).Chown; tests replace it to see the calls without root.
var chown = func(f *os.File, uid, gid int) error { return f.Chown(uid, gid) }

// lchown is os.Lchown, for directories; tests replace it.
var lchown = os.Lchown

func apply(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// prepare sets the temporary file's owner and mode, before any data is in it.
func (o options) prepare(f *os.File, mode os.FileMode) error {
	if o.owner {
		if err := chown(f, o.uid, o.gid); err != nil {
			return fmt.Errorf("setting owner %d:%d: %w", o.uid, o.gid, err)
		}
	}
	// After chown: chown clears the set-id bits, and the mode is what the
	// caller asked for whoever owns the file.
	return f.Chmod(mode)
}

// WriteFile atomically replaces path with data, with the given mode.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return WriteFileWith(path, data, mode)
}

// WriteFileWith is WriteFile with options (WithOwner).
func WriteFileWith(path string, data []byte, mode os.FileMode, opts ...Option) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = apply(opts).prepare(f, mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("writing %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return SyncDir(dir)
}

// CreateExclusive writes a new file atomically and fails with an error
// wrapping os.ErrExist when path already exists; an existing file is never
// replaced.
func CreateExclusive(path string, data []byte, mode os.FileMode) error {
	return CreateExclusiveWith(path, data, mode)
}

// CreateExclusiveWith is CreateExclusive with options (WithOwner).
func CreateExclusiveWith(path string, data []byte, mode os.FileMode, opts ...Option) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err = apply(opts).prepare(f, mode); err == nil {
		if _, err = f.Write(data); err == nil {
			err = f.Sync()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	// link(2) fails with EEXIST instead of replacing: no window where a
	// concurrent writer's file is overwritten.
	if err = os.Link(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so that a rename in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// MkdirAll is os.MkdirAll that gives the directories it creates the owner of
// WithOwner (existing directories keep theirs), so that a key written into a
// new directory is reachable by its owner.
func MkdirAll(path string, mode os.FileMode, opts ...Option) error {
	o := apply(opts)
	var created []string
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		created = append(created, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(path, mode); err != nil {
		return err
	}
	if !o.owner {
		return nil
	}
	for i := len(created) - 1; i >= 0; i-- {
		if err := lchown(created[i], o.uid, o.gid); err != nil {
			return fmt.Errorf("setting owner %d:%d of %s: %w", o.uid, o.gid, created[i], err)
		}
	}
	return nil
}
