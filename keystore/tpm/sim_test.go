//go:build cgo && !nosimulator

package tpm

import (
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/bootcert/bootcert/keystore"
)

// The in-process simulator: every algorithm including RSA-3072, a
// persistent key, and the one-command Sign.
const haveSim = true

func TestSimulator(t *testing.T) {
	t.Cleanup(func() { CloseDevice("sim") })
	c := NewCounter()
	if err := OpenDevice("sim", c.Wrap); err != nil {
		t.Fatal(err)
	}
	b, _ := newBackend()
	dir := t.TempDir()
	t.Run("fail/rsa-3072-unsupported", func(t *testing.T) {
		// The reference simulator is built without RSA-3072 (swtpm has it).
		_, err := b.Generate(context.Background(), mustURI(t, blobURI("sim", dir, "rsa3072")), keystore.RSA3072)
		if !errors.Is(err, keystore.ErrUnsupportedAlgorithm) {
			t.Fatalf("err = %v, want ErrUnsupportedAlgorithm", err)
		}
	})
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.RSA2048} {
		t.Run("ok/"+string(alg), func(t *testing.T) {
			s := generate(t, b, blobURI("sim", dir, string(alg)), alg)
			signVerify(t, s)
			c.Reset()
			d := sha256.Sum256([]byte(alg))
			if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
				t.Fatal(err)
			}
			if c.Total() != 1 || c.Count(tpm2.TPMCCSign) != 1 {
				t.Fatalf("Sign after load sent %s, want one TPM2_Sign", c)
			}
			s.Close()
		})
	}
	t.Run("ok/handle", func(t *testing.T) {
		raw := "tpm:device=sim;handle=0x81000150"
		s := generate(t, b, raw, keystore.ECDSAP256)
		signVerify(t, s)
		info, err := b.Describe(context.Background(), mustURI(t, raw))
		if err != nil || !info.Hardware || !info.Attributes["fixedParent"] {
			t.Fatalf("Describe: %+v %v", info, err)
		}
		if err := b.Delete(context.Background(), mustURI(t, raw)); err != nil {
			t.Fatal(err)
		}
	})
	// The simulator's seed is fixed: a key file loads after the simulator
	// restarts (as after a process restart).
	t.Run("ok/reload-after-restart", func(t *testing.T) {
		raw := blobURI("sim", dir, string(keystore.ECDSAP256))
		if err := CloseDevice("sim"); err != nil {
			t.Fatal(err)
		}
		o, err := b.Open(context.Background(), mustURI(t, raw))
		if err != nil {
			t.Fatalf("Open after simulator restart: %v", err)
		}
		defer o.(*Signer).Close()
		signVerify(t, o)
	})
}
