package e2e

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/tpm"
	"github.com/bootcert/bootcert/protocol"
)

// TestCrashMatrix SIGKILLs the real bootcertd at observed journal
// transitions and at random instants while it rotates (keys in swtpm), at
// least 50 times, restarting it each time. After every kill the device must
// hold a credential the broker accepts, and in the end it must converge:
// idle, connected with its active credential, the job settled, only the
// active operational key left. A rotation may fail under fire (it is then
// rolled back and asked for again); failures are logged.
//
// The random instants come from a seed the test logs; to replay a run, set
// BOOTCERT_CRASH_SEED to it (and BOOTCERT_CRASH_KILLS to its kill count).
func TestCrashMatrix(t *testing.T) { crashMatrix(t, onTPM, 50) }

// TestCrashMatrixPKCS11 is the same with keys in SoftHSM2 (fewer kills:
// the TPM run is the main one).
func TestCrashMatrixPKCS11(t *testing.T) { crashMatrix(t, onPKCS11, 20) }

func crashMatrix(t *testing.T, kind keyKind, kills int) {
	if testing.Short() {
		kills = 10
	}
	if v := os.Getenv("BOOTCERT_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BOOTCERT_CRASH_KILLS=%q: want a positive number of kills", v)
		}
		kills = n
	}
	c := newCloud(t)
	d := newDevice(t, c, map[keyKind]string{onTPM: "gw-crash", onPKCS11: "gw-crash-p11"}[kind], deviceOpts{kind: kind})
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BOOTCERT_CRASH_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("BOOTCERT_CRASH_SEED=%q: not a decimal seed: %v", v, err)
		}
	}
	t.Logf("crash matrix seed %d, %d kills (replay: BOOTCERT_CRASH_SEED=%d BOOTCERT_CRASH_KILLS=%d)", seed, kills, seed, kills)
	rng := rand.New(rand.NewPCG(seed, 1))
	targets := []journal.Phase{journal.KeyStaged, journal.CertStaged, journal.Switched, journal.Committed, journal.Idle}
	hits := map[string]int{}
	rotations := 0
	var failures []string
	for k := 0; k < kills; k++ {
		d.start()
		var what string
		if k%2 == 0 {
			target := targets[(k/2)%len(targets)]
			what = "at " + string(target)
			if d.waitPhase(target, 3*time.Second) {
				hits[string(target)]++
			} else {
				what = "at timeout (phase " + string(target) + " not seen)"
				hits["missed "+string(target)]++
			}
		} else {
			delay := time.Duration(rng.Int64N(int64(400 * time.Millisecond)))
			what = "at random " + delay.String()
			time.Sleep(delay)
			hits["random"]++
		}
		d.kill()
		if ok, why := d.hasAcceptedCredential(); !ok {
			t.Fatalf("kill %d (%s): no credential the broker accepts: %s\nlog:\n%s", k, what, why, tail(d.Log(), 40))
		}
		// when a rotation finished, ask for another one (as the renewal
		// function does, also after a failed one)
		if e := d.journalEntry(); e.Phase == journal.Idle && e.Result != "" {
			st, _ := c.jobStatus(d.name)
			switch {
			case e.Result == protocol.JobSucceeded && st == types.JobExecutionStatusSucceeded:
				rotations++
				c.addToRotation(d.name)
			case e.Result != protocol.JobSucceeded && st == types.JobExecutionStatusFailed:
				failures = append(failures, string(e.Result)+": "+e.Reason)
				c.addToRotation(d.name)
			}
		}
	}
	t.Logf("%d kills: %v; %d rotations completed under fire, %d failed: %q", kills, hits, rotations, len(failures), failures)
	d.start()
	// converged: no rotation pending in the cloud, and the device idle and
	// connected with its active credential
	d.waitFor("job settled", func(engineStatus) bool {
		s, _ := c.jobStatus(d.name)
		return s == types.JobExecutionStatusSucceeded || s == types.JobExecutionStatusFailed
	})
	st := d.waitFor("convergence", func(s engineStatus) bool {
		return s.Phase == journal.Idle && s.Connection == "connected" && s.ConnectedWith == s.Active.Generation
	})
	if st.Active.Generation == 0 {
		t.Logf("converged on the bootstrap credential (no rotation succeeded): last result %s: %s", st.LastResult, st.LastReason)
	}
	if got := c.certStatus(st.Active.CertificateID); got != types.CertificateStatusActive {
		t.Errorf("active certificate is %s; journal %+v\nlog:\n%s", got, d.journalEntry(), tail(d.Log(), 150))
	}
	// only the active generation's key (and the bootstrap key) remain
	if kind == onTPM {
		keys, _ := filepath.Glob(filepath.Join(d.dir, "keys", "op-*.tpmkey"))
		want := filepath.Join(d.dir, "keys", "op-"+strconv.Itoa(st.Active.Generation)+".tpmkey")
		for _, k := range keys {
			if k != want {
				t.Errorf("leftover operational key %s (active generation %d): a rotation interrupted by a kill did not destroy its key", filepath.Base(k), st.Active.Generation)
			}
		}
	}
	d.stop()
	if kind == onTPM {
		tpm.CloseAll()
	}
	if s, err := keystore.Open(context.Background(), d.bootKey); err != nil {
		t.Errorf("bootstrap key gone: %v", err)
	} else {
		keystore.CloseSigner(s)
	}
	if kind == onTPM {
		tpm.CloseAll()
	}
}

// waitPhase polls the journal file until it shows phase p.
func (d *device) waitPhase(p journal.Phase, max time.Duration) bool {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if d.journalEntry().Phase == p {
			return true
		}
		time.Sleep(200 * time.Microsecond)
	}
	return false
}

func (d *device) journalEntry() journal.Entry {
	data, err := os.ReadFile(filepath.Join(d.state, journal.FileName))
	if err != nil {
		return journal.Entry{Phase: journal.Idle}
	}
	e, _ := journal.Decode(data)
	return e
}

// hasAcceptedCredential: the credential the daemon will try first (the
// active one), or the bootstrap one it falls back to, is ACTIVE in the
// registry.
func (d *device) hasAcceptedCredential() (bool, string) {
	store, err := credset.Open(d.state)
	if err != nil {
		return false, err.Error()
	}
	ptr, err := store.Pointer()
	if err != nil {
		return false, err.Error()
	}
	ids := map[string]string{}
	if ptr.Active > 0 {
		cr, err := store.Get(ptr.Active)
		if err != nil {
			return false, "active generation unreadable: " + err.Error()
		}
		ids["active"] = protocol.CertificateID(cr.Leaf().Raw)
		if d.cloud.certStatus(ids["active"]) == types.CertificateStatusActive {
			return true, ""
		}
	}
	ids["bootstrap"] = d.bootID
	if d.cloud.certStatus(d.bootID) == types.CertificateStatusActive {
		return true, ""
	}
	b, _ := json.Marshal(map[string]any{"pointer": ptr, "ids": ids, "journal": d.journalEntry(),
		"activeStatus": d.cloud.certStatus(ids["active"]), "bootStatus": d.cloud.certStatus(d.bootID)})
	return false, string(b)
}

// TestCrashWedge SIGKILLs bootcertd at the transitions a wedging job (a
// get topic whose publish the lab disconnects) goes through: after the
// first journalled denial, at the abandoned rolled-back entry, and at
// random instants. The counts survive the kills (no loop starts again), the
// device always holds a credential the broker accepts, and it converges:
// the job FAILED with its reason, idle on the bootstrap credential, no
// staged key left.
func TestCrashWedge(t *testing.T) {
	c := newCloudWith(t, cloudOpts{doc: docWithGet("certificates/{thingName}/get/x")})
	d := newDevice(t, c, "gw-crash-wedge", deviceOpts{kind: onTPM})
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BOOTCERT_CRASH_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("BOOTCERT_CRASH_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay: BOOTCERT_CRASH_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	targets := []struct {
		name string
		at   func(journal.Entry) bool
	}{
		{"denial 1", func(e journal.Entry) bool { return e.Phase == journal.KeyStaged && e.Denials == 1 }},
		{"abandoned", func(e journal.Entry) bool { return e.Phase == journal.RolledBack && e.Abandoned }},
	}
	hits := map[string]int{}
	for k := 0; k < 6; k++ {
		d.start()
		if k < len(targets) {
			tg := targets[k]
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) && !tg.at(d.journalEntry()) {
				time.Sleep(200 * time.Microsecond)
			}
			if tg.at(d.journalEntry()) {
				hits[tg.name]++
			} else {
				hits["missed "+tg.name]++
			}
		} else {
			time.Sleep(time.Duration(rng.Int64N(int64(300 * time.Millisecond))))
			hits["random"]++
		}
		d.kill()
		if ok, why := d.hasAcceptedCredential(); !ok {
			t.Fatalf("kill %d: no credential the broker accepts: %s\nlog:\n%s", k, why, tail(d.Log(), 40))
		}
		if e := d.journalEntry(); e.Denials > 2 || e.Sessions > 6 {
			t.Fatalf("kill %d: journal %+v: counts beyond their bounds", k, e)
		}
	}
	t.Logf("kills: %v", hits)
	if hits["denial 1"] == 0 {
		t.Errorf("the first denial was never seen: %v", hits)
	}
	d.start()
	d.waitFor("job FAILED", func(engineStatus) bool { s, _ := c.jobStatus(d.name); return s == types.JobExecutionStatusFailed })
	st := d.waitFor("idle on the bootstrap credential", func(s engineStatus) bool {
		return s.Phase == journal.Idle && s.Connection == "connected" && s.ConnectedWith == 0
	})
	if st.Active.Generation != 0 || st.LastResult != protocol.JobFailed || !strings.Contains(st.LastReason, "closed the connection") {
		t.Errorf("status %+v", st)
	}
	if keys, _ := filepath.Glob(filepath.Join(d.dir, "keys", "op-*.tpmkey")); len(keys) != 0 {
		t.Errorf("staged keys left: %v", keys)
	}
	d.stop()
	tpm.CloseAll()
}
