package manifest

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/bootcert/bootcert/internal/atomicfile"
)

// ReadFile parses the manifest at path. A missing file is an error wrapping
// fs.ErrNotExist.
func ReadFile(path string) (*List, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading manifest %s: %w", path, err)
	}
	defer f.Close()
	l, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("reading manifest %s: %w", path, err)
	}
	return l, nil
}

// Append adds e to the manifest at path, creating the file (header first)
// when it does not exist. It refuses, with an error wrapping ErrDuplicate, a
// device that is already listed, and leaves the file untouched on any error.
//
// Appends are safe when several processes (stations on a shared file system
// with working flock) or goroutines share the manifest: each holds an
// exclusive flock on path+".lock" while it reads the manifest and replaces it
// atomically, so no line is lost and the header is written once.
func Append(path string, e Entry) error { return put(path, e, false) }

// Replace is Append that replaces the line of a device already listed
// (provision --force) instead of refusing it.
func Replace(path string, e Entry) error { return put(path, e, true) }

func put(path string, e Entry, replace bool) error {
	if err := ValidDeviceID(e.DeviceID); err != nil {
		return fmt.Errorf("adding to manifest %s: %w", path, err)
	}
	if fp := e.BootstrapSHA256; fp != "" && (len(fp) != 64 || strings.ToLower(fp) != fp || strings.Trim(fp, "0123456789abcdef") != "") {
		return fmt.Errorf("adding %s to manifest %s: bootstrap_sha256 %q is not 64 lower-hex digits", e.DeviceID, path, fp)
	}
	unlock, err := lock(path + ".lock")
	if err != nil {
		return fmt.Errorf("adding %s to manifest %s: %w", e.DeviceID, path, err)
	}
	defer unlock()

	old, err := os.ReadFile(path)
	mode := os.FileMode(0o644)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	case err != nil:
		return fmt.Errorf("adding %s to manifest %s: %w", e.DeviceID, path, err)
	default:
		if st, err := os.Stat(path); err == nil {
			mode = st.Mode().Perm()
		}
	}
	var list *List
	if len(bytes.TrimSpace(old)) > 0 {
		list, err = Parse(bytes.NewReader(old))
		if err != nil {
			return fmt.Errorf("adding %s to manifest %s: the manifest is invalid, fix it first: %w", e.DeviceID, path, err)
		}
	} else {
		old = nil
	}
	var out bytes.Buffer
	if prev, dup := lookupList(list, e.DeviceID); dup {
		if !replace {
			return fmt.Errorf("adding %s to manifest %s: %w (bootstrap_sha256 %s); to re-provision it use --force", e.DeviceID, path, ErrDuplicate, orNone(prev.BootstrapSHA256))
		}
		// Rewrite every line, the device's in place.
		w := csv.NewWriter(&out)
		w.Write(header(list.Attested() || e.Attestation != nil))
		for _, x := range list.Entries() {
			if x.DeviceID == e.DeviceID {
				x = e
			}
			w.Write(x.Record())
		}
		w.Flush()
		if err := w.Error(); err != nil {
			return fmt.Errorf("adding %s to manifest %s: %w", e.DeviceID, path, err)
		}
	} else {
		if old == nil {
			out.WriteString(strings.Join(header(e.Attestation != nil), ",") + "\n")
		} else {
			if e.Attestation != nil && !list.Attested() {
				// Widen the header; the other lines stay as they are.
				if i := bytes.IndexByte(old, '\n'); i >= 0 {
					old = append([]byte(strings.Join(Header, ",")), old[i:]...)
				}
			}
			out.Write(old)
			if !bytes.HasSuffix(old, []byte("\n")) {
				out.WriteByte('\n')
			}
		}
		w := csv.NewWriter(&out)
		w.Write(e.Record())
		w.Flush()
		if err := w.Error(); err != nil {
			return fmt.Errorf("adding %s to manifest %s: %w", e.DeviceID, path, err)
		}
	}
	if err := atomicfile.WriteFile(path, out.Bytes(), mode); err != nil {
		return fmt.Errorf("adding %s to manifest: %w", e.DeviceID, err)
	}
	return nil
}

// header is the header line's fields: with the attestation columns or
// without (the three-column header older readers know).
func header(attested bool) []string {
	if attested {
		return Header
	}
	return Header[:baseColumns]
}

func lookupList(l *List, id string) (Entry, bool) {
	if l == nil {
		return Entry{}, false
	}
	return l.Lookup(id)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// lock takes an exclusive flock on the lock file, creating it.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock file %s: %w", path, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
