package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/protocol"
)

// TestFleetProvisioningCrashMatrix SIGKILLs the real bootcertd while it
// onboards by claim (keys in swtpm): at the journal transitions of the flow
// (key staged, certificate staged, switched) and at random instants, over
// several devices sharing one claim, at least 20 kills. After every kill the
// device is either not onboarded yet (pointer at 0, the claim still ACTIVE:
// it can start over) or holds an active generation the broker accepts; in
// the end every device finishes onboarding.
//
// Random instants come from a seed the test logs; replay with
// BOOTCERT_CRASH_SEED (and BOOTCERT_CRASH_KILLS for the kills per device).
func TestFleetProvisioningCrashMatrix(t *testing.T) {
	const devices = 5
	perDevice := 4
	if v := os.Getenv("BOOTCERT_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BOOTCERT_CRASH_KILLS=%q: want a positive number of kills", v)
		}
		perDevice = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BOOTCERT_CRASH_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("BOOTCERT_CRASH_SEED=%q: not a decimal seed: %v", v, err)
		}
	}
	t.Logf("fleet provisioning crash matrix seed %d, %d devices x %d kills (replay: BOOTCERT_CRASH_SEED=%d BOOTCERT_CRASH_KILLS=%d)", seed, devices, perDevice, seed, perDevice)
	rng := rand.New(rand.NewPCG(seed, 2))
	c := newCloud(t)
	cl := c.claim(t)
	targets := []journal.Phase{journal.KeyStaged, journal.CertStaged, journal.Switched}
	hits := map[string]int{}
	kills := 0
	for i := 0; i < devices; i++ {
		d := claimDevice(t, c, cl, fmt.Sprintf("gw-fpk-%d", i), onTPM)
		for k := 0; k < perDevice; k++ {
			d.start()
			var what string
			if (k+i)%2 == 0 {
				target := targets[(k/2+i)%len(targets)]
				what = "at " + string(target)
				if d.waitPhase(target, 5*time.Second) {
					hits[string(target)]++
				} else {
					hits["missed "+string(target)]++
				}
			} else {
				delay := time.Duration(rng.Int64N(int64(600 * time.Millisecond)))
				what = "at random " + delay.String()
				time.Sleep(delay)
				hits["random"]++
			}
			d.kill()
			kills++
			if ok, why := d.canFinish(cl); !ok {
				t.Fatalf("%s kill %d (%s): %s\nlog:\n%s", d.name, k, what, why, tail(d.Log(), 40))
			}
		}
		d.start()
		st := d.waitFor("onboarded", func(s engineStatus) bool {
			return s.Connection == "connected" && s.Active.Generation >= 1 && s.ConnectedWith == s.Active.Generation
		})
		if got := c.certStatus(st.Active.CertificateID); got != types.CertificateStatusActive {
			t.Errorf("%s: active certificate %s", d.name, got)
		}
		d.stop()
	}
	if kills < 20 {
		t.Errorf("only %d kills", kills)
	}
	if got := c.certStatus(cl.id); got != types.CertificateStatusActive {
		t.Errorf("claim certificate %s after the matrix", got)
	}
	t.Logf("%d kills: %v", kills, hits)
}

// canFinish: not onboarded yet (pointer at 0; the claim still works), or the
// active generation is ACTIVE in the registry.
func (d *device) canFinish(cl claim) (bool, string) {
	store, err := credset.Open(d.state)
	if err != nil {
		return false, err.Error()
	}
	ptr, err := store.Pointer()
	if err != nil {
		return false, err.Error()
	}
	if ptr.Active == 0 {
		if s := d.cloud.certStatus(cl.id); s != types.CertificateStatusActive {
			return false, "not onboarded and the claim certificate is " + string(s)
		}
		return true, ""
	}
	cr, err := store.Get(ptr.Active)
	if err != nil {
		return false, "active generation unreadable: " + err.Error()
	}
	id := protocol.CertificateID(cr.Leaf().Raw)
	if s := d.cloud.certStatus(id); s == types.CertificateStatusActive {
		return true, ""
	}
	// switched before a crash, RegisterThing not confirmed: the flow
	// resumes at switched and rolls back if the broker refuses
	if e := d.journalEntry(); e.Phase == journal.Switched || e.Phase == journal.CertStaged {
		return true, ""
	}
	return false, fmt.Sprintf("active generation %d certificate %s is %s; journal %+v", ptr.Active, id, d.cloud.certStatus(id), d.journalEntry())
}
