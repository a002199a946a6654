package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/internal/clock"
)

type paceLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *paceLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *paceLog) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.b.String()), "\n")
}

func TestFailureDelaySchedule(t *testing.T) {
	p := &Pacer{}
	p.defaults()
	want := []time.Duration{0, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		if got := p.delay(i + 1); got != w {
			t.Errorf("delay after failure %d = %s, want %s", i+1, got, w)
		}
	}
}

// attempt runs one paced check on the fake clock, advancing it a poll at a
// time while the check waits, and returns how long (fake time) it waited.
func attempt(t *testing.T, p *Pacer, clk *clock.Fake, path string, during func(waited time.Duration)) (time.Duration, error) {
	t.Helper()
	// a clock of its own, at the shared time: waiters an earlier attempt
	// left behind (its delay, when a file change ended it) do not count
	clk = clock.NewFake(clk.Now())
	p.Clock = clk
	done := make(chan error, 1)
	start := clk.Now()
	go func() { done <- p.CheckConfig(context.Background(), path) }()
	for {
		select {
		case err := <-done:
			return clk.Now().Sub(start), err
		default:
		}
		if clk.WaitForWaiters(2, 20*time.Millisecond) { // the delay and the poll
			if during != nil {
				during(clk.Now().Sub(start))
			}
			clk.Advance(p.Poll)
		}
		if clk.Now().Sub(start) > time.Hour {
			t.Fatal("the paced check did not return")
		}
	}
}

// TestPacedConfigCheck: a broken file's consecutive failures wait 0, 10 s,
// 20 s ... each with one log line naming file, key and problem; an edit of
// the file ends the wait at the next poll and starts the count again, as do
// a new boot and a check that passes.
func TestPacedConfigCheck(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bootcertd.toml")
	os.WriteFile(cfg, []byte("port = 99999\n"), 0o600)
	clk := clock.NewFake(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
	logs := &paceLog{}
	boot := "boot-1"
	broken := true
	p := &Pacer{StateDir: dir, Clock: clk, Log: slog.New(slog.NewTextHandler(logs, nil)), BootID: func() string { return boot },
		check: func(path string) error {
			if broken {
				return &config.Error{File: path, Key: "broker.port", Reason: "99999 is not a TCP port"}
			}
			return nil
		}}
	for i, want := range []time.Duration{0, 10 * time.Second, 20 * time.Second, 40 * time.Second} {
		waited, err := attempt(t, p, clk, cfg, nil)
		if err == nil || waited != want {
			t.Fatalf("attempt %d: waited %s (want %s), err %v", i+1, waited, want, err)
		}
	}
	lines := logs.lines()
	if len(lines) != 4 {
		t.Fatalf("%d log lines for 4 attempts:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{"level=ERROR", "file=" + cfg, "key=broker.port", `problem="99999 is not a TCP port"`, "attempt=4", `next_in="40s + `} {
		if !strings.Contains(lines[3], want) {
			t.Errorf("line %q lacks %q", lines[3], want)
		}
	}
	// the operator edits the file during the 80 s wait: it ends at the next
	// poll, and the next attempt (a new problem: a changed file) waits nothing
	waited, _ := attempt(t, p, clk, cfg, func(w time.Duration) {
		if w == 3*time.Second {
			os.WriteFile(cfg, []byte("port = 8883\n"), 0o600)
		}
	})
	if waited != 4*time.Second {
		t.Errorf("wait after the edit lasted %s, want 4s (80s without it)", waited)
	}
	if waited, _ = attempt(t, p, clk, cfg, nil); waited != 0 {
		t.Errorf("first attempt on the edited file waited %s", waited)
	}
	if waited, _ = attempt(t, p, clk, cfg, nil); waited != 10*time.Second {
		t.Errorf("second attempt on the edited file waited %s", waited)
	}
	// a reboot starts again
	boot = "boot-2"
	if waited, _ = attempt(t, p, clk, cfg, nil); waited != 0 {
		t.Errorf("first attempt after a reboot waited %s", waited)
	}
	// a check that passes clears the record
	broken = false
	if _, err := attempt(t, p, clk, cfg, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, failureFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record left after a good check: %v", err)
	}
	broken = true
	if waited, _ = attempt(t, p, clk, cfg, nil); waited != 0 {
		t.Errorf("first failure after a good check waited %s", waited)
	}
}
