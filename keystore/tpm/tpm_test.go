package tpm

import (
	"context"
	"testing"

	"github.com/bootcert/bootcert/keystore"
)

func TestGenerateSignSWTPM(t *testing.T) {
	sw := startTPM(t)
	dir := t.TempDir()
	b, _ := newBackend()
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.RSA2048} {
		t.Run("ok/blob/"+string(alg), func(t *testing.T) {
			raw := blobURI(sw.Device(), dir, string(alg)+".tpmkey")
			s := generate(t, b, raw, alg)
			signVerify(t, s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			o, err := b.Open(context.Background(), mustURI(t, raw))
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer o.(*Signer).Close()
			signVerify(t, o)
		})
	}
}
