package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/internal/clock"
)

// A broken configuration made the unit restart every 5 s for ever (issue 14
// item 6: ~70,000 journal lines a day). systemd 254 paces such restarts
// itself (RestartSteps=, RestartMaxDelaySec=), but Debian 12 has systemd
// 252, Debian 11 247 and RHEL 8 239. So the unit's ExecStartPre,
// `bootcertd --check-config FILE --failure-state DIR`, paces them: it
// records consecutive failures in DIR (the state directory), logs one line
// per attempt naming the file, the key and the problem, and before it exits
// waits a delay that grows with them (none the first time, so that a
// `systemctl start` by hand fails at once; then FailureDelay doubling to
// FailureDelayMax), plus the unit's RestartSec. It stops waiting as soon as
// the file changes (an operator's fix is used within a second), and the
// count starts again when the file or the problem changes, at a new boot,
// and after a check that passes.

// Defaults of the pacing (the unit's TimeoutStartSec must exceed the
// maximum: systemd kills an ExecStartPre that outlasts it).
const (
	DefaultFailureDelay    = 10 * time.Second
	DefaultFailureDelayMax = 5 * time.Minute
)

// failureFile is the record in the state directory.
const failureFile = "config-failures.json"

// Pacer paces the restarts of a unit whose configuration is broken.
type Pacer struct {
	StateDir string // where the record is kept
	// Delay and DelayMax: the wait after the second consecutive failure,
	// doubling to DelayMax (zero: the defaults)
	Delay, DelayMax time.Duration
	Clock           clock.Clock  // nil: the real one
	Log             *slog.Logger // the one line per attempt
	// Poll is how often the file is looked at while waiting (default 1s).
	Poll time.Duration
	// BootID names the boot (default /proc/sys/kernel/random/boot_id).
	BootID func() string
	// check is the check paced (tests replace it); nil is checkFile.
	check func(path string) error
}

// failureRecord is what one failure leaves for the next attempt.
type failureRecord struct {
	Count int    `json:"count"`
	Boot  string `json:"boot"`
	// What is the file's fingerprint and the problem: either changing
	// starts the count again.
	What string    `json:"what"`
	Last time.Time `json:"last"`
}

// delay is the wait after the n-th consecutive failure (n from 1).
func (p *Pacer) delay(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := p.Delay
	for i := 2; i < n && d < p.DelayMax; i++ {
		d *= 2
	}
	return min(d, p.DelayMax)
}

func (p *Pacer) defaults() {
	if p.Delay <= 0 {
		p.Delay = DefaultFailureDelay
	}
	if p.DelayMax < p.Delay {
		p.DelayMax = max(DefaultFailureDelayMax, p.Delay)
	}
	if p.Clock == nil {
		p.Clock = clock.Real{}
	}
	if p.Log == nil {
		p.Log = slog.New(slog.DiscardHandler)
	}
	if p.Poll <= 0 {
		p.Poll = time.Second
	}
	if p.BootID == nil {
		p.BootID = func() string {
			b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
			return strings.TrimSpace(string(b))
		}
	}
}

// CheckConfig is `bootcertd --check-config path` paced: it checks the file
// (config.Load and Check); on success it clears the record and returns nil,
// on failure it records it, logs one line and waits its delay (less if ctx
// ends or the file changes), then returns the error.
func (p *Pacer) CheckConfig(ctx context.Context, path string) error {
	p.defaults()
	check := p.check
	if check == nil {
		check = checkFile
	}
	err := check(path)
	rec := filepath.Join(p.StateDir, failureFile)
	if err == nil {
		if rerr := os.Remove(rec); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			p.Log.Warn("clearing the record of configuration failures", "file", rec, "err", rerr)
		}
		return nil
	}
	r := failureRecord{Boot: p.BootID(), What: fingerprint(path) + " " + err.Error()}
	if old, rerr := readRecord(rec); rerr == nil && old.Boot == r.Boot && old.What == r.What {
		r.Count = old.Count
	}
	r.Count++
	r.Last = p.Clock.Now()
	d := p.delay(r.Count)
	attrs := []any{"file", path}
	var ce *config.Error
	if errors.As(err, &ce) {
		attrs = append(attrs, "key", ce.Key, "problem", ce.Reason)
	} else {
		attrs = append(attrs, "problem", err.Error())
	}
	attrs = append(attrs, "attempt", r.Count, "next_in", d.String()+" + the unit's RestartSec, at once when the file changes")
	if werr := writeRecord(rec, r); werr != nil {
		// unpaced: every attempt is the first one
		d = 0
		attrs = append(attrs, "pacing", fmt.Sprintf("off: %v", werr))
	}
	p.Log.Error("configuration invalid; fix the file, bootcertd starts by itself", attrs...)
	p.wait(ctx, path, d)
	return err
}

// checkFile is --check-config: the file and the files it names.
func checkFile(path string) error {
	c, err := config.Load(path)
	if err != nil {
		return err
	}
	_, err = Check(c)
	return err
}

// wait waits d, less when ctx ends or the file changes.
func (p *Pacer) wait(ctx context.Context, path string, d time.Duration) {
	if d <= 0 {
		return
	}
	before := fingerprint(path)
	done := p.Clock.After(d)
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-p.Clock.After(p.Poll):
			if fingerprint(path) != before {
				return
			}
		}
	}
}

// fingerprint identifies a file's content ("missing" when unreadable).
func fingerprint(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unreadable"
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

func readRecord(path string) (failureRecord, error) {
	var r failureRecord
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}

func writeRecord(path string, r failureRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}
