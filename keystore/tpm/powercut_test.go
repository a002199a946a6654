package tpm

import (
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
)

// TestPowerCutAttestation is a power-cut matrix of swtpm itself: at random
// instants of enrolment (EK, CreateAK, credential activation), Certify, or
// key generation followed by Certify, swtpm is SIGKILLed and restarted on
// its state, as after a power cut. After every cut: the dictionary-attack
// lockout counter has not moved (every key bootcert makes is noDA with an
// empty authorization), the enrolled key and AK still certify, every key
// file on disk loads (writes are atomic: no half-made key), and no
// transient object is left once bootcert's signers are closed.
//
// The instants come from a seed the test logs; replay with
// BOOTCERT_CRASH_SEED (and BOOTCERT_CRASH_KILLS), as the daemon's crash
// matrix does.
func TestPowerCutAttestation(t *testing.T) {
	kills := 50
	if testing.Short() {
		kills = 10
	}
	if v := os.Getenv("BOOTCERT_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("BOOTCERT_CRASH_KILLS=%q: not a positive count", v)
		}
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("BOOTCERT_CRASH_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("BOOTCERT_CRASH_SEED=%q: not a decimal seed: %v", v, err)
		}
	}
	t.Logf("power-cut matrix seed %d, %d kills (replay: BOOTCERT_CRASH_SEED=%d BOOTCERT_CRASH_KILLS=%d)", seed, kills, seed, kills)
	rng := rand.New(rand.NewPCG(seed, 2))

	state, dir := t.TempDir(), t.TempDir()
	sw := testenv.StartSWTPMState(t, state)
	b, _ := newBackend()
	ctx := context.Background()
	uri := func(name string) *keystore.URI { return mustURI(t, blobURI(sw.Device(), dir, name)) }
	generate(t, b, blobURI(sw.Device(), dir, "base.tpmkey"), keystore.ECDSAP256).Close()
	if _, err := b.CreateAK(ctx, uri("ak-base.tpmkey")); err != nil {
		t.Fatal(err)
	}
	lo0, err := b.Lockout(ctx, uri("base.tpmkey"))
	if err != nil {
		t.Fatal(err)
	}
	qd := sha256.Sum256([]byte("power cut"))
	ops := []string{"enrol", "certify", "keygen+certify"}
	cut := map[string]int{}
	for k := 0; k < kills; k++ {
		dev := sw.Device()
		op := ops[k%len(ops)]
		done := make(chan struct{})
		go func() {
			defer close(done)
			switch op {
			case "enrol":
				ek, err := b.Endorsement(ctx, uri("base.tpmkey"))
				if err != nil {
					return
				}
				akName := "ak-" + strconv.Itoa(k) + ".tpmkey"
				ak, err := b.CreateAK(ctx, uri(akName))
				if err != nil {
					return
				}
				ch, err := attest.NewChallenge(ek.Public, ak.Name)
				if err != nil {
					return
				}
				b.ActivateCredential(ctx, uri(akName), ek, ch.CredentialBlob, ch.EncryptedSecret)
			case "certify":
				b.Certify(ctx, uri("base.tpmkey"), uri("ak-base.tpmkey"), qd[:])
			default:
				name := "op-" + strconv.Itoa(k) + ".tpmkey"
				s, err := b.Generate(ctx, uri(name), keystore.ECDSAP256)
				if err != nil {
					return
				}
				s.(*Signer).Close()
				b.Certify(ctx, uri(name), uri("ak-base.tpmkey"), qd[:])
			}
		}()
		// The cut: a random instant within the operation (a real
		// interval: swtpm is another process doing real work).
		select {
		case <-done:
		case <-time.After(time.Duration(rng.IntN(20_000)) * time.Microsecond):
			cut[op]++
		}
		sw.Stop() // SIGKILL
		<-done
		CloseDevice(dev)
		sw = testenv.StartSWTPMState(t, state)

		lo, err := b.Lockout(ctx, uri("base.tpmkey"))
		if err != nil {
			t.Fatalf("cut %d (%s): reading the lockout state: %v", k, op, err)
		}
		if lo.Counter != lo0.Counter || lo.InLockout {
			t.Fatalf("cut %d (%s): lockout counter %d (in lockout %v), was %d", k, op, lo.Counter, lo.InLockout, lo0.Counter)
		}
		c, err := b.Certify(ctx, uri("base.tpmkey"), uri("ak-base.tpmkey"), qd[:])
		if err != nil {
			t.Fatalf("cut %d (%s): the enrolled key no longer certifies: %v", k, op, err)
		}
		s, err := b.Open(ctx, uri("base.tpmkey"))
		if err != nil {
			t.Fatalf("cut %d (%s): base key: %v", k, op, err)
		}
		if err := attest.CheckCertification(&attest.Evidence{Attest: c.Attest, Signature: c.Signature, Public: c.Public}, qd[:], s.Public()); err != nil {
			t.Fatalf("cut %d (%s): %v", k, op, err)
		}
		s.(*Signer).Close()
		files, _ := filepath.Glob(filepath.Join(dir, "*.tpmkey"))
		for _, f := range files {
			name := filepath.Base(f)
			if strings.HasPrefix(name, "ak-") {
				_, err = b.Certify(ctx, uri("base.tpmkey"), uri(name), qd[:])
			} else {
				var s2 any
				s2, err = b.Open(ctx, uri(name))
				if err == nil {
					s2.(*Signer).Close()
				}
			}
			if err != nil {
				t.Fatalf("cut %d (%s): key file %s left unusable: %v", k, op, name, err)
			}
		}
		if n := transientCount(t, sw.Device()); n != 0 {
			t.Fatalf("cut %d (%s): %d transient objects after every signer closed", k, op, n)
		}
		CloseDevice(sw.Device())
	}
	t.Logf("cut during: %v (others completed before the kill)", cut)
}
