package engine

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/keystore"
)

// keyError is a credential whose key cannot be used (hardware absent,
// key gone, wrong PIN).
type keyError struct {
	Generation int
	Err        error
}

func (e *keyError) Error() string {
	return fmt.Sprintf("key of credential generation %d unusable: %v", e.Generation, e.Err)
}

func (e *keyError) Unwrap() error { return e.Err }

func (e *Engine) dialOne(ctx context.Context, c *Credential) (Conn, error) {
	if c.Signer == nil {
		s, err := e.signer(ctx, c.KeyURI)
		if err != nil {
			return nil, &keyError{Generation: c.Generation, Err: err}
		}
		c.Signer = s
	}
	if _, hw := hardwareName(c.KeyURI); !hw {
		return e.dial.Dial(ctx, c)
	}
	// the handshake's signature is made by the hardware: watched, and a
	// handshake that failed because it did not sign is a key problem
	w := &watchedSigner{Signer: c.Signer, e: e, uri: c.KeyURI}
	dc := *c
	dc.Signer = w
	conn, err := e.dial.Dial(ctx, &dc)
	if err != nil {
		if serr := w.signErr(); serr != nil {
			return nil, &keyError{Generation: c.Generation, Err: serr}
		}
	}
	return conn, err
}

// signer opens a key once and keeps it: reconnects do not open it again
// (each open signer may hold a TPM object slot or a PKCS#11 session).
func (e *Engine) signer(ctx context.Context, uri string) (crypto.Signer, error) {
	if s, ok := e.signers[uri]; ok {
		return s, nil
	}
	s, err := e.openKey(ctx, uri)
	if err != nil {
		return nil, err
	}
	e.signers[uri] = s
	return s, nil
}

// keepSigner caches a signer made elsewhere (the staged key).
func (e *Engine) keepSigner(uri string, s crypto.Signer) {
	if old, ok := e.signers[uri]; ok && old != s {
		keystore.CloseSigner(old)
	}
	e.signers[uri] = s
}

// dropSigner closes a key's signer before the key is destroyed.
func (e *Engine) dropSigner(uri string) {
	if s, ok := e.signers[uri]; ok {
		keystore.CloseSigner(s)
		delete(e.signers, uri)
	}
}

// dropIdleSigners closes every open key but the connected one and the
// staged one: without a resource manager (swtpm, some tokens) every open key
// holds one of very few object slots.
func (e *Engine) dropIdleSigners(connected string) {
	j := e.journal.Current()
	for uri := range e.signers {
		if uri == connected || (j.Phase == journal.KeyStaged && uri == j.KeyURI) {
			continue
		}
		e.dropSigner(uri)
	}
}

func (e *Engine) closeSigners() {
	for uri := range e.signers {
		e.dropSigner(uri)
	}
}

type keygenResult struct {
	gen    int
	uri    string
	mode   credset.Mode
	signer crypto.Signer
	err    error
}

// startKeygen makes (or, after a crash, finds) the staged key off the MQTT
// path: hardware time never delays keep-alives or message handling. A
// pre-provisioned key is only opened.
func (e *Engine) startKeygen(gen int, uri string, mode credset.Mode) {
	e.rot.keygenBusy = true
	ch := e.keygenDone
	alg := e.cfg.Algorithm
	e.bg.Add(1)
	go func() {
		defer e.bg.Done()
		ctx := context.Background()
		if mode == credset.ModePreProvisioned {
			signer, err := e.keys.Open(ctx, uri)
			ch <- keygenResult{gen: gen, uri: uri, mode: mode, signer: signer, err: err}
			return
		}
		signer, err := e.keys.Generate(ctx, uri, alg)
		if errors.Is(err, keystore.ErrExists) {
			// made before a crash, under this generation's name: ours
			signer, err = e.keys.Open(ctx, uri)
		}
		ch <- keygenResult{gen: gen, uri: uri, mode: mode, signer: signer, err: err}
	}()
}

// destroyable says whether bootcertd may destroy a key of this role and
// mode: a committed generation's key once replaced, a staged key it made
// itself; never the bootstrap key nor a factory-made staged key.
func destroyable(role credset.KeyRole, mode credset.Mode) bool {
	switch role {
	case credset.RoleOperational:
		return true
	case credset.RoleStaged:
		return mode != credset.ModePreProvisioned
	}
	return false
}

// destroyKey closes and deletes a key its role allows to be destroyed.
func (e *Engine) destroyKey(ctx context.Context, uri string, role credset.KeyRole, mode credset.Mode) {
	e.dropSigner(uri)
	// the bootstrap key's URI is checked as well, whatever the records
	// say: losing it would leave the device without a way back
	if uri == "" || !destroyable(role, mode) || uri == e.cfg.BootstrapKey {
		return
	}
	if err := e.keys.Delete(ctx, uri); err != nil && !errors.Is(err, keystore.ErrNotFound) {
		e.log.Warn("deleting a key", "key", redactURI(uri), "role", role, "err", err)
	}
}

func redactURI(raw string) string {
	u, err := keystore.ParseURI(raw)
	if err != nil {
		return "(invalid key URI)"
	}
	return u.Redacted()
}
