package control

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
)

type fakeEngine struct {
	mu      sync.Mutex
	st      Status
	rotates int
	ch      chan Status
}

func (f *fakeEngine) Status() Status { f.mu.Lock(); defer f.mu.Unlock(); return f.st }
func (f *fakeEngine) RotateNow()     { f.mu.Lock(); f.rotates++; f.mu.Unlock() }
func (f *fakeEngine) Watch() (<-chan Status, func()) {
	return f.ch, func() {}
}

func TestSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "control.sock")
	fe := &fakeEngine{st: Status{Thing: "gw-1", Phase: journal.Idle, Summary: "connecting with bootstrap certificate"}, ch: make(chan Status, 4)}
	srv, err := Listen(path, fe, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v %v, want 0660", fi.Mode(), err)
	}
	c := &Client{Path: path}
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || st.Thing != "gw-1" || st.Summary != "connecting with bootstrap certificate" {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	if err := c.Rotate(ctx); err != nil || fe.rotates != 1 {
		t.Fatalf("Rotate: %v, rotates %d", err, fe.rotates)
	}
	// watch: the current status, then changes
	fe.ch <- Status{Thing: "gw-1", Phase: journal.KeyStaged, Summary: "rotating: key staged"}
	wctx, cancel := context.WithCancel(ctx)
	var got []string
	err = c.Watch(wctx, func(s Status) error {
		got = append(got, s.Summary)
		if len(got) == 2 {
			cancel()
		}
		return nil
	})
	if err != nil || len(got) != 2 || got[1] != "rotating: key staged" {
		t.Fatalf("Watch: %v %v", got, err)
	}
	// bad requests get an error line, not a hang or a crash
	conn, _ := net.Dial("unix", path)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	conn.Write([]byte("{\"op\":\"explode\"}\nnot json\n"))
	buf := make([]byte, 512)
	n, _ := conn.Read(buf)
	if !strings.Contains(string(buf[:n]), "unknown op") {
		t.Errorf("reply to a bad op: %q", buf[:n])
	}
	conn.Close()
	// a second daemon on the same socket is refused
	if _, err := Listen(path, fe, nil); err == nil {
		t.Error("second Listen on a live socket succeeded")
	}
}

func TestClientNoDaemon(t *testing.T) {
	c := &Client{Path: filepath.Join(t.TempDir(), "none.sock")}
	_, err := c.Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is bootcertd running") {
		t.Fatalf("Status without a daemon: %v", err)
	}
	var ne *net.OpError
	if !errors.As(err, &ne) {
		t.Errorf("error does not wrap the dial error: %v", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	ln, _ := net.Listen("unix", path)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // leaves a stale socket file
	srv, err := Listen(path, &fakeEngine{ch: make(chan Status)}, nil)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	srv.Close()
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := Listen(path, &fakeEngine{}, nil); err == nil {
		t.Error("Listen replaced a regular file")
	}
}
