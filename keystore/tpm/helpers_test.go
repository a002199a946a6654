package tpm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
)

// startTPM runs a private swtpm for one test and closes the Go side before
// swtpm stops.
func startTPM(t testing.TB) *testenv.SWTPM {
	t.Helper()
	sw := testenv.StartSWTPM(t)
	t.Cleanup(func() {
		if err := CloseDevice(sw.Device()); err != nil {
			t.Errorf("CloseDevice: %v", err)
		}
	})
	return sw
}

// fakeSleep records the backoff instead of sleeping.
type fakeSleep struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (f *fakeSleep) Sleep(d time.Duration) {
	f.mu.Lock()
	f.waits = append(f.waits, d)
	f.mu.Unlock()
}

func (f *fakeSleep) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waits)
}

func newBackend() (*Backend, *fakeSleep) {
	fs := &fakeSleep{}
	return &Backend{Sleep: fs.Sleep}, fs
}

func mustURI(t testing.TB, raw string) *keystore.URI {
	t.Helper()
	u, err := keystore.ParseURI(raw)
	if err != nil {
		t.Fatalf("ParseURI(%q): %v", raw, err)
	}
	return u
}

func blobURI(device, dir, name string) string {
	return fmt.Sprintf("tpm:device=%s;blob=%s", device, filepath.Join(dir, name))
}

func generate(t testing.TB, b *Backend, raw string, alg keystore.Algorithm) *Signer {
	t.Helper()
	s, err := b.Generate(context.Background(), mustURI(t, raw), alg)
	if err != nil {
		t.Fatalf("Generate(%s, %s): %v", raw, alg, err)
	}
	t.Cleanup(func() { s.(*Signer).Close() })
	return s.(*Signer)
}

// signVerify signs a message with every scheme the key supports and checks
// the signatures with the standard library.
func signVerify(t testing.TB, s crypto.Signer) {
	t.Helper()
	msg := []byte("bootcert " + time.Now().String())
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
		var digest []byte
		if h == crypto.SHA256 {
			d := sha256.Sum256(msg)
			digest = d[:]
		} else {
			d := sha512.Sum384(msg)
			digest = d[:]
		}
		switch pub := s.Public().(type) {
		case *ecdsa.PublicKey:
			sig, err := s.Sign(rand.Reader, digest, h)
			if err != nil {
				t.Fatalf("Sign ECDSA %v: %v", h, err)
			}
			if !ecdsa.VerifyASN1(pub, digest, sig) {
				t.Fatalf("ECDSA %v signature does not verify", h)
			}
		case *rsa.PublicKey:
			sig, err := s.Sign(rand.Reader, digest, h)
			if err != nil {
				t.Fatalf("Sign PKCS1v15 %v: %v", h, err)
			}
			if err := rsa.VerifyPKCS1v15(pub, h, digest, sig); err != nil {
				t.Fatalf("PKCS1v15 %v signature: %v", h, err)
			}
			opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
			sig, err = s.Sign(rand.Reader, digest, opts)
			if err != nil {
				t.Fatalf("Sign PSS %v: %v", h, err)
			}
			if err := rsa.VerifyPSS(pub, h, digest, sig, opts); err != nil {
				t.Fatalf("PSS %v signature (salt = hash length, as TLS 1.3 wants): %v", h, err)
			}
		default:
			t.Fatalf("unexpected public key %T", pub)
		}
	}
}

func verify(pub crypto.PublicKey, digest, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *rsa.PublicKey:
		h := crypto.SHA256
		if len(digest) == 48 {
			h = crypto.SHA384
		}
		return rsa.VerifyPKCS1v15(k, h, digest, sig) == nil
	}
	return false
}

func itoa(i int) string { return strconv.Itoa(i) }

// openDeviceNoFlush is a raw connection to a tcp: device, as another
// client would make: no stale-object flush.
func openDeviceNoFlush(device string) (transport.TPMCloser, error) {
	cmd, plat, err := tcpAddrs(device)
	if err != nil {
		return nil, err
	}
	return tcp.Open(tcp.Config{CommandAddress: cmd, PlatformAddress: plat})
}

func TestMain(m *testing.M) {
	// Tests and benchmarks count TPM commands: keep devices open between
	// operations (TestIdleRelease turns the release on for itself).
	TCPIdleRelease = 0
	os.Exit(m.Run())
}
