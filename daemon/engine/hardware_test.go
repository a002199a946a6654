package engine

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore"
)

// tpmLikeKeys keeps keys in files but names them with tpm: URIs, so that the
// engine treats them as TPM keys; Open of a blocked URI hangs until release
// is closed, like a command to a stopped swtpm.
type tpmLikeKeys struct {
	mu      sync.Mutex
	block   string // URI whose Open hangs; "" none
	release chan struct{}
	hung    chan struct{} // closed when an Open first hangs
	once    sync.Once
	// fail is what the next failN Opens of the blocked URI return once
	// released (a transport timeout)
	fail  error
	failN int
}

const fakeTPM = "tcp:127.0.0.1:9"

func tpmLike(dir, name string) string {
	return "tpm:device=" + fakeTPM + ";blob=" + filepath.Join(dir, name+".tpmkey")
}

func (k *tpmLikeKeys) file(uri string) (string, error) {
	u, err := keystore.ParseURI(uri)
	if err != nil {
		return "", err
	}
	if u.Scheme != "tpm" {
		return uri, nil
	}
	blob, _ := u.Get("blob")
	return "file:" + strings.TrimSuffix(blob, ".tpmkey") + ".pem", nil
}

func (k *tpmLikeKeys) Open(ctx context.Context, uri string) (crypto.Signer, error) {
	k.mu.Lock()
	blocked := k.block != "" && uri == k.block
	k.mu.Unlock()
	if blocked {
		k.once.Do(func() { close(k.hung) })
		<-k.release
		k.mu.Lock()
		fail := k.failN > 0
		if fail {
			k.failN--
		}
		k.mu.Unlock()
		if fail {
			return nil, k.fail
		}
	}
	f, err := k.file(uri)
	if err != nil {
		return nil, err
	}
	return keystore.Open(ctx, f)
}

func (k *tpmLikeKeys) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error) {
	f, err := k.file(uri)
	if err != nil {
		return nil, err
	}
	return keystore.Generate(ctx, f, alg)
}

func (k *tpmLikeKeys) Delete(ctx context.Context, uri string) error {
	f, err := k.file(uri)
	if err != nil {
		return err
	}
	return keystore.Delete(ctx, f)
}

// TestHungTPMReportedAtOnce: bootcertd starts while the TPM does not answer
// (a stopped swtpm). Status shows the committed generation from the start
// (it showed generation 0 and an empty state until the TPM answered), says
// within HardwareSlow that the TPM is not answering, in LastError and in the
// summary (STATUS=), and recovers when the TPM answers again.
func TestHungTPMReportedAtOnce(t *testing.T) {
	r := newRig(t)
	keys := &tpmLikeKeys{}
	r.keys = keys
	r.cfg.OperationalFn = func(gen int) string { return tpmLike(filepath.Join(r.dir, "keys"), fmt.Sprintf("op-%d", gen)) }
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.stop()

	opKey := tpmLike(filepath.Join(r.dir, "keys"), "op-1")
	keys.block, keys.release, keys.hung = opKey, make(chan struct{}), make(chan struct{})
	// the hung command and the next one time out (start-up check and
	// first connect); no fallback to the bootstrap key: the engine retries
	// the TPM key on its short schedule
	keys.fail, keys.failN = errors.New("swtpm: no answer within 10s: the TPM is not answering"), 2
	r.cfg.FallbackToBoot = false
	var once sync.Once
	answer := func() { once.Do(func() { close(keys.release) }) }
	t.Cleanup(answer) // before the rig's stop (cleanups run last first)
	r.start()
	select {
	case <-keys.hung:
	case <-time.After(30 * time.Second):
		t.Fatal("the engine never opened the operational key")
	}
	s := r.eng.Status()
	if s.Active.Generation != 1 || s.Phase != "idle" {
		t.Errorf("while the TPM hangs, status shows generation %d phase %q, want the committed generation 1, idle", s.Active.Generation, s.Phase)
	}
	if strings.Contains(s.LastError, "not answering") {
		t.Errorf("reported before HardwareSlow: %q", s.LastError)
	}
	// the engine waits on its beat and the hardware watch
	if !r.clock.WaitForWaiters(2, 30*time.Second) {
		t.Fatal("no hardware watch")
	}
	r.clock.Advance(DefaultHardwareSlow)
	s = r.waitFor("the TPM reported", func(s Status) bool { return strings.Contains(s.LastError, "not answering") })
	want := "TPM " + fakeTPM + " is not answering"
	if !strings.HasPrefix(s.LastError, want) || !strings.HasPrefix(s.Summary, want) || !strings.Contains(s.Advice, "TPM") {
		t.Errorf("error %q summary %q advice %q, want both to start with %q", s.LastError, s.Summary, s.Advice, want)
	}
	if s.Active.Generation != 1 || !strings.Contains(s.Summary, "generation 1") {
		t.Errorf("generation %d, summary %q: want the committed generation 1", s.Active.Generation, s.Summary)
	}

	// the hung command times out: the report stays while the engine
	// retries on its key schedule; the retry finds the TPM answering
	answer()
	s = r.waitFor("the timeout reported", func(s Status) bool { return strings.Contains(s.LastError, "no answer within 10s") })
	if !strings.HasPrefix(s.Summary, want) {
		t.Errorf("after the timeout the summary %q no longer says %q", s.Summary, want)
	}
	for r.eng.Status().Connection != "connected" {
		r.clock.WaitForWaiters(2, 100*time.Millisecond)
		r.clock.Advance(time.Second)
	}
	s = r.waitFor("connected with generation 1", operational(1))
	testkit.Eventually(t, 30*time.Second, func() bool {
		s = r.eng.Status()
		return s.LastError == "" && !strings.Contains(s.Summary, "not answering")
	}, "the error stayed after the TPM answered")
}
