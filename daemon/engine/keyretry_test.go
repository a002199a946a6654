package engine

import (
	"context"
	"crypto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// openTimes records when (engine clock) the engine tried to open a key.
type openTimes struct {
	KeystoreKeys
	clock interface{ Now() time.Time }
	mu    sync.Mutex
	at    []time.Time
}

func (k *openTimes) Open(ctx context.Context, uri string) (crypto.Signer, error) {
	k.mu.Lock()
	k.at = append(k.at, k.clock.Now())
	k.mu.Unlock()
	return k.KeystoreKeys.Open(ctx, uri)
}

func (k *openTimes) times() []time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]time.Time(nil), k.at...)
}

// TestKeyProblemRetriedOnShortSchedule: a key the daemon cannot use (here
// the bootstrap key file is missing, as after a factory run that left it
// elsewhere; unreadable, a missing PIN file or an unanswering TPM fail the
// same way) is retried 1 s, 2 s, 4 s ... at most 30 s apart, however long it
// lasts, and not on the network backoff (which had grown to minutes: the
// operator's fix took that long to be noticed). Once the file is back the
// engine connects within the short schedule's cap.
func TestKeyProblemRetriedOnShortSchedule(t *testing.T) {
	r := newRig(t)
	// the network backoff as deployed (1s..5min), jitter at its ceiling
	r.cfg.Backoff = Backoff{Initial: time.Second, Max: 5 * time.Minute, Rand: func() float64 { return 0.999 }}
	keys := &openTimes{clock: r.clock}
	r.keys = keys
	bootKey := filepath.Join(r.dir, "keys", "bootstrap.pem")
	aside := bootKey + ".aside"
	if err := os.Rename(bootKey, aside); err != nil {
		t.Fatal(err)
	}
	r.start()

	const step = time.Second
	// advance one second at a time, each time once the engine waits on its
	// beat and its retry timer: 15 minutes of a broken key
	for elapsed := time.Duration(0); elapsed < 15*time.Minute; elapsed += step {
		if !r.clock.WaitForWaiters(2, 30*time.Second) {
			t.Fatalf("engine not waiting after %s; status %+v", elapsed, r.eng.Status())
		}
		r.clock.Advance(step)
	}
	at := keys.times()
	if len(at) < 10 {
		t.Fatalf("%d attempts in 15 minutes of a broken key, want one at least every 30s", len(at))
	}
	for i := 1; i < len(at); i++ {
		gap := at[i].Sub(at[i-1])
		if gap > DefaultKeyRetryMax+step {
			t.Fatalf("attempt %d came %s after the previous one, want at most %s (the key schedule's cap); gaps %v", i, gap, DefaultKeyRetryMax, gaps(at))
		}
	}
	// it starts short and grows: 1s, 2s, 4s (to the step)
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if g := at[i+1].Sub(at[i]); g < want || g > want+step {
			t.Errorf("gap %d is %s, want %s; gaps %v", i, g, want, gaps(at))
		}
	}
	s := r.eng.Status()
	if !strings.Contains(s.LastError, "key of credential generation 0 unusable") || !strings.Contains(s.Advice, "TPM") {
		t.Errorf("status while broken: error %q advice %q", s.LastError, s.Advice)
	}

	// the operator puts the key back: noticed within the cap
	if err := os.Rename(aside, bootKey); err != nil {
		t.Fatal(err)
	}
	fixed := r.clock.Now()
	for r.eng.Status().Connection != "connected" {
		if r.clock.Now().Sub(fixed) > DefaultKeyRetryMax+step {
			t.Fatalf("not connected %s after the key came back; status %+v; attempts %v", r.clock.Now().Sub(fixed), r.eng.Status(), gaps(keys.times()))
		}
		r.clock.WaitForWaiters(2, 100*time.Millisecond)
		r.clock.Advance(step)
	}
	if r.eng.Status().ConnectedWith != 0 {
		t.Errorf("connected with %d", r.eng.Status().ConnectedWith)
	}
}

func gaps(at []time.Time) []time.Duration {
	var g []time.Duration
	for i := 1; i < len(at); i++ {
		g = append(g, at[i].Sub(at[i-1]))
	}
	return g
}

// The key schedule is 1s doubling to its 30s cap.
func TestKeyRetryDelay(t *testing.T) {
	e := &Engine{cfg: Config{KeyRetryInitial: time.Second, KeyRetryMax: 30 * time.Second}}
	want := []time.Duration{1, 2, 4, 8, 16, 30, 30}
	for n, w := range want {
		if d := e.keyRetryDelay(n); d != w*time.Second {
			t.Errorf("keyRetryDelay(%d) = %s, want %s", n, d, w*time.Second)
		}
	}
	if d := e.keyRetryDelay(1000); d != 30*time.Second {
		t.Errorf("keyRetryDelay(1000) = %s", d)
	}
}
