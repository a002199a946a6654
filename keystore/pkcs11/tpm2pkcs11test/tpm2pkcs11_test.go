//go:build cgo

package tpm2pkcs11test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

// Module is Debian's tpm2-pkcs11 module.
const Module = testenv.TPM2PKCS11Module

const (
	tokenLabel = "bootcert-tpm"
	userPIN    = "Tpm-User-2468"
	soPIN      = "Tpm-SO-1357"
)

// env is a tpm2-pkcs11 token on a fresh swtpm.
type env struct{ *testenv.TPM2PKCS11 }

// setup makes the token and points this process's tpm2-pkcs11 at it.
func setup(tb testing.TB) *env {
	tb.Helper()
	e := &env{testenv.SetupTPM2PKCS11(tb, tokenLabel, userPIN, soPIN)}
	tb.Cleanup(func() { pkcs11.CloseAll() }) // runs before swtpm stops
	return e
}

// run runs a tool (see testenv.TPM2PKCS11.Run).
func (e *env) run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	return e.Run(tb, name, args...)
}

func uri(object string) string {
	return "pkcs11:token=" + tokenLabel + ";object=" + object + "?module-path=" + Module + "&pin-value=" + userPIN
}

func TestTPM2PKCS11(t *testing.T) {
	e := setup(t)
	ctx := context.Background()

	s, err := keystore.Generate(ctx, uri("op-1"), keystore.ECDSAP256)
	if err != nil {
		t.Fatalf("Generate on tpm2-pkcs11: %v", err)
	}
	d := sha256.Sum256([]byte("bootcert on a TPM"))
	sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}

	info, err := keystore.Describe(ctx, uri("op-1"))
	if err != nil {
		t.Fatalf("Describe: %v", err)
	}
	if !info.Hardware || info.Algorithm != keystore.ECDSAP256 || info.Attributes["extractable"] || !info.Attributes["sensitive"] || !info.Attributes["neverExtractable"] {
		t.Fatalf("Describe = %+v", info)
	}

	der, err := csr.Create(s, "gw-tpm-0001")
	if err != nil {
		t.Fatalf("csr.Create: %v", err)
	}
	testenv.Require(t, "openssl")
	p := filepath.Join(t.TempDir(), "req.pem")
	os.WriteFile(p, csr.EncodePEM(der), 0o600)
	if out, err := exec.Command("openssl", "req", "-verify", "-noout", "-in", p).CombinedOutput(); err != nil || !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}

	if _, err := keystore.Generate(ctx, uri("op-1"), keystore.ECDSAP256); !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("second Generate: %v, want ErrExists", err)
	}

	// The key lives in the store: after the module is unloaded it opens
	// again and signs.
	if err := pkcs11.CloseAll(); err != nil {
		t.Fatal(err)
	}
	listing := e.run(t, "pkcs11-tool", "--module", Module, "--token-label", tokenLabel, "--login", "--pin", userPIN, "--list-objects")
	if !strings.Contains(listing, "label:      op-1") || !strings.Contains(listing, "never extractable") {
		t.Fatalf("pkcs11-tool --list-objects:\n%s", listing)
	}
	o, err := keystore.Open(ctx, uri("op-1"))
	if err != nil {
		t.Fatalf("Open after reload: %v", err)
	}
	if !o.Public().(*ecdsa.PublicKey).Equal(s.Public()) {
		t.Fatal("reopened key differs")
	}
	sig, err = o.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(o.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("Sign after reload: %v", err)
	}

	// Rotation without C_CopyObject (tpm2-pkcs11 lacks it): a new label,
	// then the old key is deleted.
	if _, err := keystore.Generate(ctx, uri("op-2"), keystore.ECDSAP256); err != nil {
		t.Fatalf("Generate op-2: %v", err)
	}
	if err := keystore.Delete(ctx, uri("op-1")); err != nil {
		t.Fatalf("Delete op-1: %v", err)
	}
	if _, err := keystore.Open(ctx, uri("op-1")); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Open after Delete: %v", err)
	}
	if _, err := keystore.Open(ctx, uri("op-2")); err != nil {
		t.Fatalf("Open op-2: %v", err)
	}
}

func TestTPM2PKCS11WrongPIN(t *testing.T) {
	setup(t)
	u := "pkcs11:token=" + tokenLabel + ";object=x?module-path=" + Module + "&pin-value=Wrong-PIN-0000"
	_, err := keystore.Open(context.Background(), u)
	if !errors.Is(err, pkcs11.ErrPINRejected) {
		t.Fatalf("err = %v, want ErrPINRejected", err)
	}
	if strings.Contains(err.Error(), "Wrong-PIN-0000") || !strings.Contains(err.Error(), tokenLabel) {
		t.Fatalf("err = %q", err)
	}
}

// tpm2-pkcs11 keeps every key it creates or uses loaded in the TPM, and
// swtpm without a resource manager has three object slots: the benchmarks
// unload the module (pkcs11.CloseAll) between generations, outside the
// timer. With /dev/tpmrm0 the kernel resource manager swaps objects instead.
func BenchmarkTPM2PKCS11(b *testing.B) {
	setup(b)
	ctx := context.Background()
	if _, err := keystore.Generate(ctx, uri("bench-warm"), keystore.ECDSAP256); err != nil {
		b.Fatal(err)
	}
	b.Run("Generate/ecdsa-p256", func(b *testing.B) {
		i := 0
		for b.Loop() {
			b.StopTimer()
			pkcs11.CloseAll()
			// log in again (C_Initialize, C_Login) outside the timer
			if _, err := keystore.Open(ctx, uri("bench-warm")); err != nil {
				b.Fatal(err)
			}
			i++
			b.StartTimer()
			if _, err := keystore.Generate(ctx, uri(fmt.Sprintf("bench-gen-%d", i)), keystore.ECDSAP256); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Sign/ecdsa-p256", func(b *testing.B) {
		pkcs11.CloseAll()
		s, err := keystore.Open(ctx, uri("bench-warm"))
		if err != nil {
			b.Fatal(err)
		}
		d := sha256.Sum256([]byte("bench"))
		for b.Loop() {
			if _, err := s.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestTPM2PKCS11Renewals: rotation after rotation in one process on swtpm
// (3 transient object slots, no resource manager). tpm2-pkcs11 keeps every
// key it used loaded until C_Logout; the backend logs out and in before
// Generate and Delete, so a bootstrap key that keeps signing and a new key
// per round fit, a signer opened before still signs, and nothing stays
// loaded in the TPM after CloseAll.
func TestTPM2PKCS11Renewals(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	d := sha256.Sum256([]byte("renewal"))
	sign := func(what string, s crypto.Signer) {
		t.Helper()
		sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
		if err != nil || !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
			t.Fatalf("Sign with %s: %v", what, err)
		}
	}
	boot, err := keystore.Generate(ctx, uri("bootstrap"), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	sign("bootstrap", boot)
	var prev crypto.Signer
	for g := 1; g <= 5; g++ {
		op, err := keystore.Generate(ctx, uri(fmt.Sprintf("op-%d", g)), keystore.ECDSAP256)
		if err != nil {
			t.Fatalf("generation %d: Generate: %v", g, err)
		}
		sign(fmt.Sprintf("op-%d", g), op) // the CSR
		if g > 1 {
			sign(fmt.Sprintf("op-%d", g-1), prev) // a rollback to the key it replaces
		}
		keystore.CloseSigner(prev) // the daemon closes idle keys on connect
		sign("bootstrap", boot)    // opened before the logouts
		if g > 1 {
			if err := keystore.Delete(ctx, uri(fmt.Sprintf("op-%d", g-1))); err != nil {
				t.Fatalf("generation %d: Delete op-%d: %v", g, g-1, err)
			}
		}
		sign(fmt.Sprintf("op-%d", g), op)
		prev = op
	}
	if err := pkcs11.CloseAll(); err != nil {
		t.Fatal(err)
	}
	if out := e.run(t, "tpm2_getcap", "handles-transient"); strings.TrimSpace(out) != "" {
		t.Errorf("transient objects left in the TPM after CloseAll:\n%s", out)
	}
}
