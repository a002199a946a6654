package file_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/file"
)

func verify(t *testing.T, s crypto.Signer) {
	t.Helper()
	digest := sha256.Sum256([]byte("bootcert"))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	switch pub := s.Public().(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, digest[:], sig) {
			t.Fatal("ECDSA signature does not verify")
		}
	case *rsa.PublicKey:
		if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig); err != nil {
			t.Fatalf("RSA signature does not verify: %v", err)
		}
	default:
		t.Fatalf("unexpected public key %T", pub)
	}
}

func TestGenerateOpen(t *testing.T) {
	ctx := context.Background()
	for _, alg := range keystore.Algorithms {
		t.Run("ok/"+string(alg), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys", "sub")
			p := filepath.Join(dir, "k.pem")
			uri := "file:" + p
			s, err := keystore.Generate(ctx, uri, alg)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			got, err := keystore.AlgorithmOf(s.Public())
			if err != nil || got != alg {
				t.Fatalf("algorithm = %v, %v; want %v", got, err, alg)
			}
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("key file mode = %04o, want 0600", st.Mode().Perm())
			}
			dst, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if dst.Mode().Perm() != 0o700 {
				t.Errorf("key dir mode = %04o, want 0700", dst.Mode().Perm())
			}
			o, err := keystore.Open(ctx, uri)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !o.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(s.Public()) {
				t.Fatal("opened key differs from generated key")
			}
			verify(t, o)
			// no temp files left behind
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("directory has %d entries, want 1", len(ents))
			}
		})
	}
}

func TestOpenSSLReadsKey(t *testing.T) {
	testenv.Require(t, "openssl")
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "k.pem")
	s, err := keystore.Generate(ctx, "file:"+p, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "pkey", "-in", p, "-pubout", "-outform", "DER").Output()
	if err != nil {
		t.Fatalf("openssl pkey: %v", err)
	}
	want, _ := x509.MarshalPKIXPublicKey(s.Public())
	if !bytes.Equal(out, want) {
		t.Fatal("openssl reads a different public key")
	}
}

func TestGenerateRefusesExisting(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "k.pem")
	if _, err := keystore.Generate(ctx, "file:"+p, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(p)
	_, err := keystore.Generate(ctx, "file:"+p, keystore.ECDSAP256)
	if !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("second Generate: err = %v, want ErrExists", err)
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("existing key was modified")
	}
	// any existing file, even not a key, is kept
	other := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(other, []byte("keep me"), 0o600)
	if _, err := keystore.Generate(ctx, "file:"+other, keystore.ECDSAP256); !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("Generate over a non-key file: err = %v, want ErrExists", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "keep me" {
		t.Fatal("non-key file was modified")
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	writeKey := func(name string, mode os.FileMode, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	k, _ := ecdsa.GenerateKey(keystore.ECDSAP256.Curve(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	good := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	sec1, _ := x509.MarshalECPrivateKey(k)
	tests := []struct {
		name    string
		uri     string
		is      error
		contain string
	}{
		{"fail/missing", "file:" + filepath.Join(dir, "nope.pem"), keystore.ErrNotFound, "nope.pem"},
		{"fail/group-readable", "file:" + writeKey("g.pem", 0o640, good), file.ErrPermissions, "chmod 600"},
		{"fail/world-readable", "file:" + writeKey("w.pem", 0o604, good), file.ErrPermissions, "0604"},
		{"fail/not-pem", "file:" + writeKey("x.pem", 0o600, []byte("hello")), nil, "no PEM block"},
		{"fail/sec1", "file:" + writeKey("s.pem", 0o600, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})), nil, "not a PKCS#8"},
		{"fail/garbage-pkcs8", "file:" + writeKey("b.pem", 0o600, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})), nil, "does not parse"},
		{"fail/relative", "file:keys/k.pem", nil, "absolute"},
		{"fail/query", "file:" + filepath.Join(dir, "g.pem") + "?pin-value=1234", nil, "unknown"},
		{"fail/directory", "file:" + dir, nil, "not a regular file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := keystore.Open(ctx, tc.uri)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.contain) {
				t.Errorf("err = %q, want it to contain %q", err, tc.contain)
			}
			if strings.Contains(err.Error(), "1234") {
				t.Errorf("error leaks the pin: %q", err)
			}
		})
	}
	t.Run("fail/unsupported-algorithm", func(t *testing.T) {
		u, _ := keystore.ParseURI("file:" + filepath.Join(dir, "alg.pem"))
		_, err := file.Backend{}.Generate(ctx, u, "ed25519")
		if !errors.Is(err, keystore.ErrUnsupportedAlgorithm) {
			t.Fatalf("err = %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "alg.pem")); err == nil {
			t.Fatal("file created for an unsupported algorithm")
		}
	})
}

func BenchmarkGenerate(b *testing.B) {
	ctx := context.Background()
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		b.Run(string(alg), func(b *testing.B) {
			dir := b.TempDir()
			for i := 0; b.Loop(); i++ {
				p := filepath.Join(dir, fmt.Sprintf("k%d.pem", i))
				if _, err := keystore.Generate(ctx, "file:"+p, alg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSign(b *testing.B) {
	ctx := context.Background()
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		b.Run(string(alg), func(b *testing.B) {
			s, err := keystore.Generate(ctx, "file:"+filepath.Join(b.TempDir(), "k.pem"), alg)
			if err != nil {
				b.Fatal(err)
			}
			digest := sha256.Sum256([]byte("bench"))
			for b.Loop() {
				if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestConcurrentGenerateOneWins(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "k.pem")
	type result struct {
		s   crypto.Signer
		err error
	}
	results := make(chan result, 8)
	for i := 0; i < 8; i++ {
		go func() {
			s, err := keystore.Generate(ctx, "file:"+p, keystore.ECDSAP256)
			results <- result{s, err}
		}()
	}
	var winner crypto.Signer
	for i := 0; i < 8; i++ {
		r := <-results
		switch {
		case r.err == nil && winner != nil:
			t.Fatal("two concurrent Generates of one file succeeded")
		case r.err == nil:
			winner = r.s
		case !errors.Is(r.err, keystore.ErrExists):
			t.Fatalf("Generate: %v", r.err)
		}
	}
	if winner == nil {
		t.Fatal("no Generate succeeded")
	}
	o, err := keystore.Open(ctx, "file:"+p)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Public().(*ecdsa.PublicKey).Equal(winner.Public()) {
		t.Fatal("the file holds another key than the one the winner returned")
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("%d directory entries left, want 1 (temp files leaked)", len(ents))
	}
}
