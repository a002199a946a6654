package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/clock"
)

// The engine never judges a certificate's validity (expiry, not-yet-valid,
// renewal due) on a clock it has reason to disbelieve (issue 14 item 4). A
// gateway without a real-time clock boots in 1970, one whose RTC battery
// died in 2000, and systemd sets an unset clock to its own build date; NTP
// corrects it minutes later, or never when the network to the time servers
// is down. Judged on such a clock every certificate is "not yet valid", and
// the broker's certificate fails TLS verification.
//
// The clock is plausible when it is
//
//   - not before Config.ClockFloor (clock.Floor: a date compiled into the
//     binary, raised to the commit time of a build from a checkout), and
//   - not more than ClockSlack before the notBefore of the bootstrap
//     certificate or of the committed credential (the active one; during a
//     rotation the one active before it). Both were issued before this
//     moment, on the issuer's clock.
//
// While it is not, the engine waits: it does not connect (TLS would refuse
// the broker's certificate as not yet valid, and a refused connect counts
// towards a rollback), ends a session it is in at its next beat or before
// any judgement (a job's start, a delivered certificate, the safety net),
// rotates nothing, and refuses or deletes no credential. Status (ClockWait,
// Summary and so systemd's STATUS=) says why, the log says it once, and the
// engine looks again on every beat (BeatInterval): a clock that NTP steps is
// seen within one beat, and the engine goes on from where its journal is.

// ClockSlack is how far before a held certificate's notBefore the clock may
// be and still count as plausible. It covers the issuer's clock error and
// backdating, and a clock that is a day off (a bad NTP step): such a clock is
// wrong but still tells the expiry of certificates valid for months within
// a day, and a rotation caught by a one-day jump ends committed or rolled
// back (the delivered certificate's own checks use ClockSkew). The clocks
// this rule exists for are off by months or years.
const ClockSlack = 48 * time.Hour

// errClockWait ends a session when the clock is found implausible; the
// connect loop then waits for it (waitForClock).
var errClockWait = errors.New("the system clock is not plausible")

// clockFloor is Config.ClockFloor, else clock.Floor.
func (e *Engine) clockFloor() time.Time {
	if !e.cfg.ClockFloor.IsZero() {
		return e.cfg.ClockFloor
	}
	return clock.Floor()
}

// clockProblem says why the engine's clock is not plausible now ("" when it
// is).
func (e *Engine) clockProblem() string {
	now := e.clock.Now()
	at := now.UTC().Format(time.RFC3339)
	if f := e.clockFloor(); now.Before(f) {
		return fmt.Sprintf("the system clock says %s, before %s, the earliest time this build believes (not set or not synchronised yet)", at, f.UTC().Format("2006-01-02"))
	}
	check := func(what string, nb time.Time) string {
		if now.Before(nb.Add(-ClockSlack)) {
			return fmt.Sprintf("the system clock says %s, more than %s before the %s certificate's notBefore %s (not synchronised yet)", at, fmtSlack(ClockSlack), what, nb.UTC().Format(time.RFC3339))
		}
		return ""
	}
	if why := check("bootstrap", e.cfg.Bootstrap[0].NotBefore); why != "" {
		return why
	}
	if gen := e.committedGeneration(); gen > 0 {
		if c, err := e.loadCred(gen); err == nil {
			return check(fmt.Sprintf("operational (generation %d)", gen), c.Leaf().NotBefore)
		}
	}
	return ""
}

func fmtSlack(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// committedGeneration is the generation the device had committed to: the
// active one, or during a rotation the one active before it.
func (e *Engine) committedGeneration() int {
	if j := e.journal.Current(); j.Phase != journal.Idle {
		return j.Previous
	}
	return e.activeGeneration()
}

// waitForClock waits, before a connect, until the clock is plausible. It
// logs once when it starts waiting and once when it goes on, and reports
// done when ctx ended.
func (e *Engine) waitForClock(ctx context.Context) (done bool) {
	why := e.clockProblem()
	if why == "" {
		return false
	}
	e.log.Warn("waiting for the system clock before connecting or judging certificates", "why", why,
		"fix", "enable time synchronisation (timedatectl set-ntp true) and check the network to the time servers")
	e.setClockWait(why)
	for why != "" {
		e.tick()
		select {
		case <-ctx.Done():
			return true
		case <-e.beatC:
			e.beatC = e.clock.After(BeatInterval)
		case <-e.rotateNow: // a rotation asked for by hand waits too
		}
		if now := e.clockProblem(); now != why {
			why = now
			e.setClockWait(why) // no log line: the status follows the clock
		}
	}
	e.log.Info("system clock plausible; going on", "clock", e.clock.Now().UTC().Format(time.RFC3339))
	return false
}

// setClockWait records why the engine waits for the clock ("" = it does not).
func (e *Engine) setClockWait(why string) {
	e.update(func(s *Status) { s.ClockWait = why })
}

// clockOK ends the session (errClockWait) when the clock has become
// implausible since it started: called on every beat and before every
// judgement of a certificate's validity or of a rotation's start.
func (s *session) clockOK() error {
	if s.e.clockProblem() != "" {
		return errClockWait
	}
	return nil
}
