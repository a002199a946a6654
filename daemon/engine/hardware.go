package engine

import (
	"context"
	"crypto"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/bootcert/bootcert/keystore"
)

// DefaultHardwareSlow is Config.HardwareSlow's default.
const DefaultHardwareSlow = 3 * time.Second

// hardwareAdvice is the status advice while key hardware does not answer.
const hardwareAdvice = "the TPM or PKCS#11 token does not answer: is the TPM (tpm2-abrmd, swtpm) running and not stopped? bootcertd keeps the committed credential and tries again; `bootcertctl key info URI` tests a key"

// hardwareName names the hardware behind a key URI for status and logs
// ("TPM tcp:127.0.0.1:2321", "PKCS#11 token bootcert"); ok is false for keys
// that are not in hardware (file:), which cannot hang.
func hardwareName(uri string) (name string, ok bool) {
	u, err := keystore.ParseURI(uri)
	if err != nil {
		return "", false
	}
	switch u.Scheme {
	case "tpm":
		dev, _ := u.Get("device")
		return "TPM " + dev, true
	case "pkcs11":
		tok, _ := u.Get("token")
		return "PKCS#11 token " + tok, true
	}
	return "", false
}

// watchHardware watches one key operation (op, on the key uri) the engine
// is about to make: when it has not returned after HardwareSlow, the status
// (LastError, the STATUS= summary) and the log say that the hardware is not
// answering, at once, while the operation still waits for the transport's
// own timeout (keystore/tpm: 10 s a command). The returned function ends
// the watch with the operation's error: a success clears the report (and
// logs that the hardware answered); a failure leaves it, so that STATUS=
// keeps saying the hardware does not answer between retries.
func (e *Engine) watchHardware(uri, op string) (done func(error)) {
	name, ok := hardwareName(uri)
	if !ok {
		return func(error) {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reported bool
	started := e.clock.Now()
	slow := e.clock.After(e.cfg.HardwareSlow) // armed before the operation starts
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-slow:
			reported = true
			msg := fmt.Sprintf("%s is not answering: %s has had no answer for %s", name, op, e.cfg.HardwareSlow)
			e.log.Warn("key hardware not answering", "hardware", name, "op", op, "waited", e.cfg.HardwareSlow.String())
			now := e.clock.Now()
			e.update(func(s *Status) {
				s.LastError, s.Advice, s.LastErrorAt, e.refusedGen = msg, hardwareAdvice, now, 0
				e.stall, e.keyErr = msg, true
			})
		case <-stop:
		}
	}()
	return func(err error) {
		close(stop)
		wg.Wait()
		if err != nil {
			return
		}
		if reported {
			e.log.Info("key hardware answered", "hardware", name, "op", op, "after", e.clock.Now().Sub(started).Round(time.Millisecond).String())
		}
		e.mu.Lock()
		stalled := e.stall != ""
		e.mu.Unlock()
		if stalled {
			e.update(func(*Status) { e.stall = "" })
		}
	}
}

// openKey is keys.Open under watchHardware.
func (e *Engine) openKey(ctx context.Context, uri string) (crypto.Signer, error) {
	done := e.watchHardware(uri, "opening key "+redactURI(uri))
	s, err := e.keys.Open(ctx, uri)
	done(err)
	return s, err
}

// watchedSigner watches each signature (the TLS handshake's) and keeps the
// last signing error, so that a handshake that failed because the key's
// hardware did not sign is a key problem, not the network's.
type watchedSigner struct {
	crypto.Signer
	e   *Engine
	uri string

	mu  sync.Mutex
	err error
}

func (w *watchedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	done := w.e.watchHardware(w.uri, "signing the TLS handshake")
	sig, err := w.Signer.Sign(r, digest, opts)
	done(err)
	if err != nil {
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
	}
	return sig, err
}

func (w *watchedSigner) signErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}
