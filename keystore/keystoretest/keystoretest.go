// Package keystoretest is the conformance suite every keystore backend runs,
// the way go-tpm's backends share one test helper: each backend's test
// package calls Run with a Config that says how to name a fresh key and what
// the backend promises (algorithms, hardware protection, attributes), and
// the suite checks the same behaviour for all of them through the keystore
// registry (keystore.Generate, Open, Describe, Delete), as bootcert uses
// them:
//
//   - generate: every algorithm the backend offers makes a key of that
//     algorithm that signs (ECDSA with SHA-256 and SHA-384; RSA PKCS#1 v1.5
//     and PSS with the salt length TLS 1.3 wants) and verifies with the
//     standard library; the algorithms it lacks fail with
//     ErrUnsupportedAlgorithm and leave nothing behind.
//   - never-overwrite: Generate on an existing key fails with ErrExists, for
//     the same and for another algorithm, and the key is untouched: same
//     public key, same fingerprint, and it still signs.
//   - reopen: Open returns the same public key every time, also after
//     Config.Reopen (a process restart: devices and modules closed), and the
//     reopened signer's signatures verify with the generated public key.
//   - csr: keystore/csr.Create with the key makes a request that
//     keystore/csr.Parse (and openssl req -verify) accept, for that key and
//     common name.
//   - describe: Describe reports the backend, algorithm, fingerprint, the
//     hardware flag and the protection attributes the backend promises
//     (never-extractable, fixedTPM...), and a URI without secrets.
//   - delete: after Delete, Open, Describe and Delete fail with ErrNotFound,
//     and the name can hold a new, different key.
//   - missing: Open and Describe of a key never made fail with ErrNotFound.
//   - bad-uri: an unknown attribute, and each backend-specific bad URI, fail
//     Open and Generate with a *keystore.URIError naming the attribute,
//     without a secret in the message, and create nothing.
//   - concurrent: goroutines sign at once with shared and with separately
//     opened signers of two keys, every signature verifies; concurrent
//     Generates of one name: exactly one wins, the others get ErrExists.
package keystoretest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
)

// Config describes a backend under test.
type Config struct {
	// Scheme is the URI scheme and the Info.Backend the backend reports.
	Scheme string
	// NewURI returns the URI of a key that does not exist yet, different on
	// every call. name is a short label for it (letters, digits, '-').
	NewURI func(t *testing.T, name string) string
	// Algorithms the backend generates; empty means ECDSA P-256 only.
	Algorithms []keystore.Algorithm
	// Unsupported algorithms Generate must refuse with
	// keystore.ErrUnsupportedAlgorithm.
	Unsupported []keystore.Algorithm
	// Hardware is the Info.Hardware Describe must report.
	Hardware bool
	// Attributes are protection attributes Describe must report with the
	// given value, e.g. {"neverExtractable": true} or {"fixedTPM": true}.
	Attributes map[string]bool
	// BadURIs are malformed URIs with the attribute (as named in
	// keystore.URIError.Part, e.g. "attribute handle") the error must name.
	BadURIs []BadURI
	// Secret, when set, must never appear in an error or in Describe's URI
	// (a PIN in the URIs NewURI makes).
	Secret string
	// Reopen, when set, simulates a process restart between Generate and
	// Open: it closes what the backend keeps open (TPM devices, PKCS#11
	// modules). Signers opened before must not be used after it.
	Reopen func(t *testing.T)
	// Goroutines and Signatures size the concurrency check (8 and 10 when 0).
	Goroutines, Signatures int
	// SeparateSigners opens one signer per goroutine in the concurrency
	// check besides the shared one. Backends with few object slots (swtpm
	// under tpm2-pkcs11 has three) turn it off.
	SeparateSigners bool
}

// BadURI is a URI the backend must reject, naming Part.
type BadURI struct {
	URI  string
	Part string // e.g. "attribute handle"; matched against URIError.Part
}

func (c *Config) algorithms() []keystore.Algorithm {
	if len(c.Algorithms) == 0 {
		return []keystore.Algorithm{keystore.ECDSAP256}
	}
	return c.Algorithms
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, c Config) {
	t.Helper()
	if c.Scheme == "" || c.NewURI == nil {
		t.Fatal("keystoretest: Config needs Scheme and NewURI")
	}
	if c.Goroutines == 0 {
		c.Goroutines = 8
	}
	if c.Signatures == 0 {
		c.Signatures = 10
	}
	s := &suite{Config: c}
	t.Run("generate", s.generate)
	t.Run("never-overwrite", s.neverOverwrite)
	t.Run("reopen", s.reopen)
	t.Run("csr", s.csr)
	t.Run("describe", s.describe)
	t.Run("delete", s.delete)
	t.Run("missing", s.missing)
	t.Run("bad-uri", s.badURI)
	t.Run("concurrent", s.concurrent)
}

type suite struct{ Config }

var ctx = context.Background()

// newKey makes a key and registers its deletion and the signer's close.
func (s *suite) newKey(t *testing.T, name string, alg keystore.Algorithm) (string, crypto.Signer) {
	t.Helper()
	uri := s.NewURI(t, name)
	sg, err := keystore.Generate(ctx, uri, alg)
	if err != nil {
		t.Fatalf("Generate(%s, %s): %v", s.redact(uri), alg, err)
	}
	t.Cleanup(func() { s.cleanup(t, uri, sg) })
	return uri, sg
}

// open opens a key and registers the signer's close.
func (s *suite) open(t *testing.T, uri string) crypto.Signer {
	t.Helper()
	sg, err := keystore.Open(ctx, uri)
	if err != nil {
		t.Fatalf("Open(%s): %v", s.redact(uri), err)
	}
	t.Cleanup(func() { keystore.CloseSigner(sg) })
	return sg
}

func (s *suite) cleanup(t *testing.T, uri string, sg crypto.Signer) {
	keystore.CloseSigner(sg)
	if err := keystore.Delete(ctx, uri); err != nil && !errors.Is(err, keystore.ErrNotFound) {
		t.Errorf("cleanup: Delete(%s): %v", s.redact(uri), err)
	}
}

func (s *suite) redact(uri string) string {
	if u, err := keystore.ParseURI(uri); err == nil {
		return u.Redacted()
	}
	return "(unparsable URI)"
}

// noSecret fails when an error message holds the secret.
func (s *suite) noSecret(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil && s.Secret != "" && strings.Contains(err.Error(), s.Secret) {
		t.Fatalf("%s: the error shows the secret", what)
	}
}

func (s *suite) generate(t *testing.T) {
	for _, alg := range s.algorithms() {
		t.Run(string(alg), func(t *testing.T) {
			_, sg := s.newKey(t, "gen-"+string(alg), alg)
			got, err := keystore.AlgorithmOf(sg.Public())
			if err != nil || got != alg {
				t.Fatalf("generated a %v key (%v), want %s", got, err, alg)
			}
			SignVerify(t, sg)
		})
	}
	for _, alg := range s.Unsupported {
		t.Run("unsupported-"+string(alg), func(t *testing.T) {
			uri := s.NewURI(t, "unsup")
			sg, err := keystore.Generate(ctx, uri, alg)
			if err == nil {
				s.cleanup(t, uri, sg)
				t.Fatalf("Generate %s succeeded, want ErrUnsupportedAlgorithm", alg)
			}
			if !errors.Is(err, keystore.ErrUnsupportedAlgorithm) {
				t.Fatalf("Generate %s: %v, want ErrUnsupportedAlgorithm", alg, err)
			}
			s.noSecret(t, "Generate", err)
			if _, err := keystore.Open(ctx, uri); !errors.Is(err, keystore.ErrNotFound) {
				t.Fatalf("Open after a refused Generate: %v, want ErrNotFound (nothing left behind)", err)
			}
		})
	}
}

func (s *suite) neverOverwrite(t *testing.T) {
	uri, sg := s.newKey(t, "exists", keystore.ECDSAP256)
	fp := fingerprint(t, sg.Public())
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, s.algorithms()[len(s.algorithms())-1]} {
		again, err := keystore.Generate(ctx, uri, alg)
		if err == nil {
			keystore.CloseSigner(again)
			t.Fatalf("second Generate (%s) over an existing key succeeded", alg)
		}
		if !errors.Is(err, keystore.ErrExists) {
			t.Fatalf("second Generate (%s): %v, want ErrExists", alg, err)
		}
		s.noSecret(t, "Generate", err)
	}
	keystore.CloseSigner(sg)
	o := s.open(t, uri)
	if fingerprint(t, o.Public()) != fp {
		t.Fatal("the existing key changed after a refused Generate")
	}
	SignVerify(t, o)
	info, err := keystore.Describe(ctx, uri)
	if err != nil || info.Fingerprint != fp {
		t.Fatalf("Describe after a refused Generate: %+v %v", info, err)
	}
}

func (s *suite) reopen(t *testing.T) {
	uri, sg := s.newKey(t, "reopen", keystore.DefaultAlgorithm)
	pub := sg.Public()
	for i := 0; i < 2; i++ {
		o := s.open(t, uri)
		if !equalPublic(pub, o.Public()) {
			t.Fatalf("Open #%d: public key differs from the generated one", i+1)
		}
		keystore.CloseSigner(o)
	}
	if s.Reopen == nil {
		return
	}
	s.Reopen(t)
	o := s.open(t, uri)
	if !equalPublic(pub, o.Public()) {
		t.Fatal("Open after a restart: public key differs")
	}
	d := sha256.Sum256([]byte("after restart"))
	sig, err := o.Sign(rand.Reader, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign after a restart: %v", err)
	}
	if !Verify(pub, crypto.SHA256, d[:], sig) {
		t.Fatal("a signature after a restart does not verify with the generated public key")
	}
}

func (s *suite) csr(t *testing.T) {
	_, sg := s.newKey(t, "csr", keystore.DefaultAlgorithm)
	const cn = "gw-conformance-0001"
	der, err := csr.Create(sg, cn, "gw-conformance-0001.example.com", "127.0.0.1")
	if err != nil {
		t.Fatalf("csr.Create: %v", err)
	}
	req, err := csr.Parse(der)
	if err != nil {
		t.Fatalf("csr.Parse: %v", err)
	}
	if req.Subject.CommonName != cn || !equalPublic(req.PublicKey, sg.Public()) {
		t.Fatalf("CSR: CN %q, key matches %v", req.Subject.CommonName, equalPublic(req.PublicKey, sg.Public()))
	}
	testenv.Require(t, "openssl")
	p := filepath.Join(t.TempDir(), "req.pem")
	if err := os.WriteFile(p, csr.EncodePEM(der), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "req", "-verify", "-noout", "-in", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
}

func (s *suite) describe(t *testing.T) {
	for _, alg := range s.algorithms() {
		t.Run(string(alg), func(t *testing.T) {
			uri, sg := s.newKey(t, "describe", alg)
			info, err := keystore.Describe(ctx, uri)
			if err != nil {
				t.Fatalf("Describe: %v", err)
			}
			if info.Backend != s.Scheme || info.Algorithm != alg || info.Fingerprint != fingerprint(t, sg.Public()) {
				t.Fatalf("Describe = backend %q algorithm %q fingerprint %s; want %q %q %s", info.Backend, info.Algorithm, info.Fingerprint, s.Scheme, alg, fingerprint(t, sg.Public()))
			}
			if info.Hardware != s.Hardware {
				t.Fatalf("Describe: Hardware = %v, want %v (attributes %v)", info.Hardware, s.Hardware, info.Attributes)
			}
			for name, want := range s.Attributes {
				got, ok := info.Attributes[name]
				if !ok || got != want {
					t.Errorf("Describe: attribute %s = %v (reported: %v), want %v", name, got, ok, want)
				}
			}
			if info.URI == "" || (s.Secret != "" && strings.Contains(info.URI, s.Secret)) {
				t.Fatalf("Describe: URI %q is empty or shows the secret", info.URI)
			}
		})
	}
}

func (s *suite) delete(t *testing.T) {
	uri, sg := s.newKey(t, "delete", keystore.DefaultAlgorithm)
	old := fingerprint(t, sg.Public())
	keystore.CloseSigner(sg)
	if err := keystore.Delete(ctx, uri); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := keystore.Open(ctx, uri); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Open after Delete: %v, want ErrNotFound", err)
	}
	if _, err := keystore.Describe(ctx, uri); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Describe after Delete: %v, want ErrNotFound", err)
	}
	if err := keystore.Delete(ctx, uri); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("second Delete: %v, want ErrNotFound", err)
	}
	again, err := keystore.Generate(ctx, uri, keystore.DefaultAlgorithm)
	if err != nil {
		t.Fatalf("Generate after Delete: %v", err)
	}
	defer keystore.CloseSigner(again)
	if fingerprint(t, again.Public()) == old {
		t.Fatal("Generate after Delete brought back the deleted key")
	}
	SignVerify(t, again)
}

func (s *suite) missing(t *testing.T) {
	uri := s.NewURI(t, "never-made")
	_, err := keystore.Open(ctx, uri)
	if !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Open of a key never made: %v, want ErrNotFound", err)
	}
	s.noSecret(t, "Open", err)
	if _, err := keystore.Describe(ctx, uri); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Describe of a key never made: %v, want ErrNotFound", err)
	}
}

func (s *suite) badURI(t *testing.T) {
	good := s.NewURI(t, "bad-uri")
	sep := "?"
	if strings.Contains(good, "?") {
		sep = "&"
	}
	cases := append([]BadURI{{URI: good + sep + "bootcert-bogus=1", Part: "query attribute bootcert-bogus"}}, s.BadURIs...)
	for _, c := range cases {
		t.Run(c.Part, func(t *testing.T) {
			for op, f := range map[string]func() error{
				"Open": func() error { sg, err := keystore.Open(ctx, c.URI); keystore.CloseSigner(sg); return err },
				"Generate": func() error {
					sg, err := keystore.Generate(ctx, c.URI, keystore.DefaultAlgorithm)
					if err == nil {
						s.cleanup(t, c.URI, sg)
					}
					return err
				},
			} {
				err := f()
				var ue *keystore.URIError
				if !errors.As(err, &ue) {
					t.Fatalf("%s(%s): %v, want a *keystore.URIError", op, s.redact(c.URI), err)
				}
				if ue.Part != c.Part || !strings.Contains(err.Error(), c.Part) {
					t.Fatalf("%s(%s): error %q names %q, want %q", op, s.redact(c.URI), err, ue.Part, c.Part)
				}
				s.noSecret(t, op, err)
			}
		})
	}
	if _, err := keystore.Open(ctx, good); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("after the refused URIs, Open(%s): %v, want ErrNotFound (nothing created)", s.redact(good), err)
	}
}

func (s *suite) concurrent(t *testing.T) {
	uriA, a := s.newKey(t, "conc-a", keystore.DefaultAlgorithm)
	uriB, b := s.newKey(t, "conc-b", keystore.DefaultAlgorithm)
	var wg sync.WaitGroup
	errs := make(chan error, 2*s.Goroutines*s.Signatures+2*s.Goroutines)
	for g := 0; g < s.Goroutines; g++ {
		for k, shared := range []crypto.Signer{a, b} {
			uri := []string{uriA, uriB}[k]
			wg.Add(1)
			go func() {
				defer wg.Done()
				sg := shared
				if s.SeparateSigners {
					o, err := keystore.Open(ctx, uri)
					if err != nil {
						errs <- fmt.Errorf("goroutine %d: Open: %w", g, err)
						return
					}
					defer keystore.CloseSigner(o)
					sg = o
				}
				for i := 0; i < s.Signatures; i++ {
					signer := sg
					if i%2 == 1 {
						signer = shared
					}
					d := sha256.Sum256(fmt.Appendf(nil, "%d/%d/%d", g, k, i))
					sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
					if err != nil {
						errs <- fmt.Errorf("goroutine %d, signature %d: %w", g, i, err)
						return
					}
					if !Verify(shared.Public(), crypto.SHA256, d[:], sig) {
						errs <- fmt.Errorf("goroutine %d, signature %d does not verify", g, i)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		s.noSecret(t, "concurrent Sign", err)
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	// Concurrent Generates of one name: one wins, the rest get ErrExists.
	race := s.NewURI(t, "race")
	const n = 4
	results := make(chan error, n)
	signers := make(chan crypto.Signer, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sg, err := keystore.Generate(ctx, race, keystore.DefaultAlgorithm)
			if err == nil {
				signers <- sg
			}
			results <- err
		}()
	}
	wg.Wait()
	close(results)
	close(signers)
	won := 0
	for err := range results {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, keystore.ErrExists):
			t.Errorf("concurrent Generate of one name: %v, want success or ErrExists", err)
		}
	}
	var winner crypto.Signer
	for sg := range signers {
		winner = sg
	}
	if winner != nil {
		t.Cleanup(func() { s.cleanup(t, race, winner) })
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent Generates of one name succeeded, want exactly 1", won, n)
	}
	o := s.open(t, race)
	if !equalPublic(o.Public(), winner.Public()) {
		t.Fatal("the key stored under the raced name is not the winner's")
	}
}

// SignVerify signs with every scheme the key supports (ECDSA with SHA-256
// and SHA-384; RSA PKCS#1 v1.5 and PSS with salt length = hash length) and
// checks the signatures with the standard library.
func SignVerify(t testing.TB, s crypto.Signer) {
	t.Helper()
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
		digest := digestOf(h, []byte("bootcert conformance"))
		sig, err := s.Sign(rand.Reader, digest, h)
		if err != nil {
			t.Fatalf("Sign(%v): %v", h, err)
		}
		if !Verify(s.Public(), h, digest, sig) {
			t.Fatalf("%T %v signature does not verify", s.Public(), h)
		}
		if pub, ok := s.Public().(*rsa.PublicKey); ok {
			opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
			sig, err := s.Sign(rand.Reader, digest, opts)
			if err != nil {
				t.Fatalf("Sign(PSS %v): %v", h, err)
			}
			if err := rsa.VerifyPSS(pub, h, digest, sig, opts); err != nil {
				t.Fatalf("RSA-PSS %v signature (salt = hash length, as TLS 1.3 wants): %v", h, err)
			}
		}
	}
}

// Verify checks an ECDSA (ASN.1) or RSA PKCS#1 v1.5 signature.
func Verify(pub crypto.PublicKey, h crypto.Hash, digest, sig []byte) bool {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest, sig)
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, h, digest, sig) == nil
	}
	return false
}

func digestOf(h crypto.Hash, msg []byte) []byte {
	if h == crypto.SHA384 {
		d := sha512.Sum384(msg)
		return d[:]
	}
	d := sha256.Sum256(msg)
	return d[:]
}

func equalPublic(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func fingerprint(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	fp, err := keystore.Fingerprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}
