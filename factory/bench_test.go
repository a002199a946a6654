package factory

import (
	"crypto/elliptic"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
)

// go test -run '^$' -bench . -benchmem ./factory

func BenchmarkIssueP256(b *testing.B) {
	k := testca.ECKey(b, elliptic.P256())
	ca, _ := CreateCA(k, "CA", 365, t0)
	req := testca.Request(b, "gw-bench", testca.ECKey(b, elliptic.P256()))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Issue(ca, k, req, 30, t0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRevokeInto10kCRL(b *testing.B) {
	k := testca.ECKey(b, elliptic.P256())
	ca, _ := CreateCA(k, "CA", 365, t0)
	var entries []x509.RevocationListEntry
	for i := 0; i < 10000; i++ {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: big.NewInt(int64(i + 1)), RevocationTime: t0})
	}
	crl, err := CreateCRL(ca, k, entries, big.NewInt(1), t0, t0.Add(time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	cert, _ := Issue(ca, k, testca.Request(b, "gw", testca.ECKey(b, elliptic.P256())), 30, t0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Revoke(crl, ca, k, []*x509.Certificate{cert}, t0, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}
