package engine

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// lockedBuffer is a log the engine writes from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) count(s string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Count(w.b.String(), s)
}

func (w *lockedBuffer) String() string { w.mu.Lock(); defer w.mu.Unlock(); return w.b.String() }

const (
	logClockWait = "waiting for the system clock before connecting"
	logClockOK   = "system clock plausible; going on"
)

var epoch1970 = time.Unix(0, 0).UTC()

// clockRig is a rig with certificates as in the field: a bootstrap
// certificate the factory issued weeks ago, valid for years, and cloud
// certificates valid for a year (the rig's defaults, a day from now, would
// expire at the first +24 h jump and prove nothing). Its log is kept.
func clockRig(t *testing.T) (*rig, *lockedBuffer) {
	t.Helper()
	r := newRig(t)
	now := time.Now()
	bk, err := keystore.Open(context.Background(), r.cfg.BootstrapKey)
	if err != nil {
		t.Fatal(err)
	}
	boot := r.ca.Issue(t, "gw-1", bk.Public(), testca.Valid(now.Add(-30*24*time.Hour), now.Add(3*365*24*time.Hour)))
	keystore.CloseSigner(bk)
	r.cfg.Bootstrap[0] = boot
	r.cloud.accept(protocol.CertificateID(boot.Raw))
	r.cloud.issueOpts = []testca.Option{testca.Valid(now.Add(-time.Hour), now.Add(365*24*time.Hour))}
	logs := &lockedBuffer{}
	r.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return r, logs
}

// credentialsOnDisk is what the device holds: the pointer, the stored
// generations and whether each one's key file and the bootstrap key exist.
func (r *rig) credentialsOnDisk() string {
	r.t.Helper()
	s, err := credset.Open(r.cfg.StateDir)
	if err != nil {
		r.t.Fatal(err)
	}
	ptr, _ := s.Pointer()
	gens, _ := s.Generations()
	var b strings.Builder
	fmt.Fprintf(&b, "pointer %d/%d", ptr.Active, ptr.Previous)
	for _, g := range gens {
		c, err := s.Get(g)
		fmt.Fprintf(&b, " gen%d", g)
		if err != nil {
			b.WriteString("(unreadable)")
			continue
		}
		if p, ok := strings.CutPrefix(c.KeyURI, "file:"); ok && !fileExists(p) {
			b.WriteString("(key gone)")
		}
	}
	if !fileExists(filepath.Join(r.dir, "keys", "bootstrap.pem")) {
		b.WriteString(" bootstrap key gone")
	}
	return b.String()
}

// beats advances the fake clock by n idle beats, each once the engine waits
// on its beat again (it re-arms it after every one).
func (r *rig) beats(n int) {
	r.t.Helper()
	for i := 0; i < n; i++ {
		if !r.clock.WaitForWaiters(1, 30*time.Second) {
			r.t.Fatalf("engine not waiting on its beat; status %+v", r.eng.Status())
		}
		r.clock.Advance(BeatInterval)
	}
}

// TestRotationWaitsForClockAt1970 (issue 14, done-when: "A rotation with the
// clock at 1970 waits and completes once the clock is set"). A gateway
// without an RTC boots in 1970 with a rotation job pending: bootcertd does
// not connect (the broker's certificate would fail TLS verification and a
// refused connect counts towards a rollback), says why in status and once
// in the log, refuses and deletes nothing, and rotates once NTP sets the
// clock.
func TestRotationWaitsForClockAt1970(t *testing.T) {
	r, logs := clockRig(t)
	r.clock = clock.NewFake(epoch1970)
	r.cloud.queueJob("rot-1")
	before := r.credentialsOnDisk()
	r.start()

	s := r.waitFor("the clock wait", func(s Status) bool { return s.ClockWait != "" })
	if !strings.HasPrefix(s.Summary, "waiting for the system clock: the system clock says 1970-01-01T00:00:00Z, before ") {
		t.Errorf("summary (STATUS=) %q", s.Summary)
	}
	// a minute at 1970: the engine looks again on every beat and stays put
	r.beats(12)
	s = r.eng.Status()
	if s.ClockWait == "" || s.Connection == "connected" {
		t.Fatalf("stopped waiting at 1970: %+v", s)
	}
	if n := r.cloud.dialCount(); n != 0 {
		t.Errorf("%d connects at 1970, want none", n)
	}
	if n := logs.count(logClockWait); n != 1 {
		t.Errorf("%d log lines about the clock in 13 beats, want 1:\n%s", n, logs)
	}
	if got := r.credentialsOnDisk(); got != before {
		t.Errorf("credentials changed while waiting: %q, were %q", got, before)
	}
	if p := r.eng.journal.Current().Phase; p != journal.Idle {
		t.Errorf("journal %s while waiting, want idle (no rotation started)", p)
	}

	// NTP sets the clock
	realStart := time.Now()
	setAt := time.Now()
	r.clock.Set(setAt)
	s = r.waitFor("generation 1", operational(1))
	if s.LastResult != protocol.JobSucceeded || s.ClockWait != "" || strings.HasPrefix(s.Summary, "waiting") {
		t.Errorf("status after the rotation: %+v", s)
	}
	if ups := r.cloud.jobUpdates(); ups[len(ups)-1] != "rot-1 SUCCEEDED committed" {
		t.Errorf("job updates %v", ups)
	}
	if n := logs.count(logClockOK); n != 1 {
		t.Errorf("%d lines %q, want 1", n, logClockOK)
	}
	t.Logf("rotation committed %s (engine clock) / %s (real) after the clock was set",
		s.LastResultAt.Sub(setAt), time.Since(realStart).Round(time.Millisecond))
}

// TestClockStepSeenWithinOneBeat: NTP steps the clock without waking any
// timer (Go's timers run on the monotonic clock: clock.Fake.Jump); the
// waiting engine sees it at its next beat, at most BeatInterval later.
func TestClockStepSeenWithinOneBeat(t *testing.T) {
	r, _ := clockRig(t)
	r.clock = clock.NewFake(epoch1970)
	r.start()
	r.waitFor("the clock wait", func(s Status) bool { return s.ClockWait != "" })
	r.beats(3)
	if !r.clock.WaitForWaiters(1, 30*time.Second) {
		t.Fatal("engine not waiting on its beat")
	}
	r.clock.Jump(time.Since(epoch1970))
	r.clock.Advance(BeatInterval) // the beat armed before the step fires within this
	r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" && s.ClockWait == "" })
}

// TestClockBeforeCertificate: a clock past the build's floor but long
// before the notBefore of the certificate the device holds (a stale saved
// clock, systemd's build-date epoch) is as implausible as 1970.
func TestClockBeforeCertificate(t *testing.T) {
	r, _ := clockRig(t)
	r.cfg.ClockFloor = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	r.clock = clock.NewFake(r.cfg.Bootstrap[0].NotBefore.Add(-ClockSlack - time.Minute))
	r.start()
	s := r.waitFor("the clock wait", func(s Status) bool { return s.ClockWait != "" })
	if !strings.Contains(s.ClockWait, "before the bootstrap certificate's notBefore") {
		t.Errorf("clock wait %q", s.ClockWait)
	}
	// within the slack it is plausible: a clock a day behind still connects
	r.clock.Set(r.cfg.Bootstrap[0].NotBefore.Add(-24 * time.Hour))
	r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" && s.ClockWait == "" })
}

// jumpKeys steps the clock while the staged key is being made.
type jumpKeys struct {
	KeystoreKeys
	jump func()
}

func (k jumpKeys) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error) {
	s, err := k.KeystoreKeys.Generate(ctx, uri, alg)
	k.jump()
	return s, err
}

// rotationPoints are the moments of a rotation a clock step is tested at.
var rotationPoints = []string{"key-staged", "get-awaited", "cert-staged", "switched", "ack-awaited"}

// jumpAt arranges for jump to run once, at the named moment of the first
// rotation.
func (r *rig) jumpAt(point string, jump func()) {
	var once sync.Once
	do := func() { once.Do(jump) }
	if point == "key-staged" {
		r.keys = jumpKeys{jump: do}
		return
	}
	r.cloud.onPublish = func(topic string, payload []byte) {
		p := string(payload)
		switch {
		case point == "get-awaited" && topic == "certificates/gw-1/get",
			point == "ack-awaited" && topic == "certificates/gw-1/ack",
			(point == "cert-staged" || point == "switched") && strings.HasSuffix(topic, "/update") && strings.Contains(p, `"progress":"`+point+`"`):
			do()
		}
	}
}

// settledAfter is a device idle and connected with its active credential
// after job: the rotation ended one way or the other.
func settledAfter(job string) func(Status) bool {
	return func(s Status) bool {
		return s.Phase == journal.Idle && s.PendingJob == "" && s.LastResult != "" && s.Connection == "connected" &&
			s.ConnectedWith == s.Active.Generation && s.ClockWait == ""
	}
}

// TestClockJumpMidRotation (issue 14, done-when: "a ±24 h jump mid-rotation
// ends committed or rolled back"): the wall clock steps a day forward or
// back at each moment of a rotation. The rotation ends (SUCCEEDED, or
// FAILED with nothing switched when the delivered certificate is not yet
// valid on a clock a day behind), the device stays connected with a usable
// credential, and once the clock is right again the next rotation commits.
func TestClockJumpMidRotation(t *testing.T) {
	for _, point := range rotationPoints {
		for _, d := range []time.Duration{24 * time.Hour, -24 * time.Hour} {
			name := point + "/" + map[bool]string{true: "forward", false: "back"}[d > 0]
			t.Run(name, func(t *testing.T) {
				r, logs := clockRig(t)
				r.jumpAt(point, func() { r.clock.Jump(d) })
				r.start()
				r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
				r.cloud.queueJob("rot-1")
				s := r.waitFor("the rotation's end", settledAfter("rot-1"))
				// a day back before the certificate is verified: the cloud's
				// certificate (notBefore an hour ago) is not yet valid on
				// the device's clock; everything else commits
				wantFail := d < 0 && (point == "key-staged" || point == "get-awaited")
				// the journal records the result before the update is
				// published: wait for the cloud to have the final one
				var ups []string
				var last string
				testkit.Poll(30*time.Second, func() bool {
					ups = r.cloud.jobUpdates()
					last = ups[len(ups)-1]
					return strings.HasPrefix(last, "rot-1 FAILED") || strings.HasPrefix(last, "rot-1 SUCCEEDED")
				})
				if wantFail {
					if s.LastResult != protocol.JobFailed || !strings.Contains(s.LastReason, "not valid before") || s.Active.Generation != 0 || !strings.HasPrefix(last, "rot-1 FAILED") {
						t.Fatalf("want FAILED with nothing switched; status %+v, updates %v", s, ups)
					}
				} else if s.LastResult != protocol.JobSucceeded || s.Active.Generation != 1 || last != "rot-1 SUCCEEDED committed" {
					t.Fatalf("want committed generation 1; status %+v, updates %v", s, ups)
				}
				if disk := r.credentialsOnDisk(); strings.Contains(disk, "gone") || strings.Contains(disk, "unreadable") {
					t.Fatalf("credentials lost: %s", disk)
				}
				if n := logs.count(logClockWait); n != 0 {
					t.Errorf("a clock a day off is not implausible, but the engine waited:\n%s", logs)
				}
				// the clock is right again: the next rotation commits
				r.clock.Jump(-d)
				gen := s.Active.Generation
				r.cloud.queueJob("rot-2")
				s = r.waitFor("rot-2", func(s Status) bool { return settledAfter("rot-2")(s) && s.Active.Generation > gen })
				if s.LastResult != protocol.JobSucceeded {
					t.Fatalf("rot-2: %+v", s)
				}
				t.Logf("%s: rot-1 %s %s", name, ups[len(ups)-1], s.Summary)
			})
		}
	}
}

// TestClockTo1970MidRotation: the clock falls back to 1970 (an RTC read
// over a synchronised clock) at each moment of a rotation. The engine stops
// at its next judgement (a delivered certificate, the safety net) or switch
// and waits, with the rotation's journal, keys and credentials kept and no
// connect; once the clock is set again it resumes and commits.
func TestClockTo1970MidRotation(t *testing.T) {
	for _, point := range rotationPoints {
		t.Run(point, func(t *testing.T) {
			r, logs := clockRig(t)
			var back time.Duration
			r.jumpAt(point, func() {
				back = r.clock.Now().Sub(epoch1970)
				r.clock.Jump(-back)
			})
			r.start()
			r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
			r.cloud.queueJob("rot-1")
			s := r.waitFor("the clock wait", func(s Status) bool { return s.ClockWait != "" && s.Connection != "connected" })
			phase, disk, dials := s.Phase, r.credentialsOnDisk(), r.cloud.dialCount()
			r.beats(6)
			if got := r.credentialsOnDisk(); got != disk {
				t.Errorf("credentials changed while waiting: %q, were %q", got, disk)
			}
			if n := r.cloud.dialCount(); n != dials {
				t.Errorf("%d connects at 1970", n-dials)
			}
			if st := r.eng.Status(); st.Phase != phase || st.ClockWait == "" {
				t.Errorf("while waiting: %+v (phase was %s)", st, phase)
			}
			r.clock.Jump(back)
			r.beats(1)
			s = r.waitFor("generation 1", operational(1))
			if s.LastResult != protocol.JobSucceeded {
				t.Fatalf("status %+v", s)
			}
			if ups := r.cloud.jobUpdates(); ups[len(ups)-1] != "rot-1 SUCCEEDED committed" {
				t.Errorf("job updates %v", ups)
			}
			if n := logs.count(logClockWait); n != 1 {
				t.Errorf("%d clock lines, want 1", n)
			}
			if !fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) {
				t.Error("generation 1's key is gone")
			}
			t.Logf("%s: waited in phase %q (%s)", point, phase, r.cloud.jobUpdates())
		})
	}
}
