//go:build cgo

package pkcs11_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/bootcert/bootcert/keystore"
)

var benchAlgs = []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048}

// BenchmarkGenerate is key generation on SoftHSM2 (lookup for an existing
// key included, as Generate always checks).
func BenchmarkGenerate(b *testing.B) {
	need(b)
	ctx := context.Background()
	n := fresh(b)
	for _, alg := range benchAlgs {
		b.Run(string(alg), func(b *testing.B) {
			i := 0
			for b.Loop() {
				i++
				u := n.uri(fmt.Sprintf("bench-gen-%s-%d", alg, i), "")
				if _, err := keystore.Generate(ctx, u, alg); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := keystore.Delete(ctx, u); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkSign is one signature of a SHA-256 digest on SoftHSM2.
func BenchmarkSign(b *testing.B) {
	need(b)
	ctx := context.Background()
	n := fresh(b)
	for _, alg := range benchAlgs {
		b.Run(string(alg), func(b *testing.B) {
			s, err := keystore.Generate(ctx, n.uri("bench-sign-"+string(alg), ""), alg)
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
}

// BenchmarkOpen is finding a key by label on a cached token context.
func BenchmarkOpen(b *testing.B) {
	need(b)
	ctx := context.Background()
	n := fresh(b)
	u := n.uri("bench-open", "")
	if _, err := keystore.Generate(ctx, u, keystore.ECDSAP256); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := keystore.Open(ctx, u); err != nil {
			b.Fatal(err)
		}
	}
}
