package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/internal/testpki"
	"github.com/bootcert/bootcert/protocol"
)

// FuzzReplies feeds arbitrary payloads through every decoder the engine
// applies to broker messages (jobs replies, get/ack replies, certificate
// packages) and the certificate check: nothing panics, and no certificate
// is accepted unless it is for the staged key, for the thing, valid now.
func FuzzReplies(f *testing.F) {
	ca := testpki.NewCA(f, "ca")
	staged, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := ca.Client(f, "gw-1", staged.Public())
	ga, _ := json.Marshal(protocol.GetAccepted{ClientToken: "t", CertificatePEM: string(testpki.PEM(good))})
	f.Add(ga)
	f.Add([]byte(`{"clientToken":"t","execution":{"jobId":"j","status":"QUEUED","jobDocument":{"operation":"bootcert.rotate","version":"1"}}}`))
	f.Add([]byte(`{"clientToken":"t","code":"BAD_CSR","message":"m","retryable":false}`))
	f.Add([]byte(`{"certificatePem":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}`))
	f.Add([]byte(`{"execution":null}`))
	f.Add([]byte(`[]`))
	now := time.Now()
	f.Fuzz(func(t *testing.T, payload []byte) {
		var jr jobsReply
		if protocol.Decode("jobs", payload, &jr) == nil && jr.Execution != nil {
			protocol.ParseJobDocument(jr.Execution.JobDocument)
		}
		var rj protocol.Rejected
		protocol.Decode("rejected", payload, &rj)
		var aa protocol.AckAccepted
		protocol.Decode("ack", payload, &aa)
		var a protocol.GetAccepted
		for _, p := range [][]byte{payload, packagePEM(payload)} {
			if protocol.Decode("get", p, &a) == nil && a.Location != "" {
				CheckLocation(a.Location, []string{"bucket.example"})
			}
			chain, err := ParseCertificatePEM([]byte(a.CertificatePEM))
			if err != nil {
				chain, err = ParseCertificatePEM(p)
			}
			if err != nil {
				continue
			}
			if VerifyCertificate(chain, staged.Public(), VerifyOptions{Thing: "gw-1", Now: now}) == nil {
				leaf := chain[0]
				pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
				if !ok || !pub.Equal(&staged.PublicKey) || now.After(leaf.NotAfter) || now.Add(ClockSkew).Before(leaf.NotBefore) {
					t.Fatalf("accepted a certificate that is not for the staged key or not valid now")
				}
			}
		}
	})
}
