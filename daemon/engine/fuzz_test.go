package engine

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/protocol"
)

// FuzzReplies feeds arbitrary payloads through every decoder the engine
// applies to broker messages (jobs replies, get/ack replies, certificate
// packages) and the certificate check: nothing panics, and no certificate
// is accepted unless it is for the staged key, for the thing, valid now.
func FuzzReplies(f *testing.F) {
	ca := testca.New(f, "ca")
	staged, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := ca.Issue(f, "gw-1", staged.Public())
	ga, _ := json.Marshal(protocol.GetAccepted{ClientToken: "t", CertificatePEM: string(testca.PEM(good))})
	f.Add(ga)
	f.Add([]byte(`{"clientToken":"t","execution":{"jobId":"j","status":"QUEUED","jobDocument":{"operation":"bootcert.rotate","version":"1"}}}`))
	f.Add([]byte(`{"clientToken":"t","code":"BAD_CSR","message":"m","retryable":false}`))
	f.Add([]byte(`{"certificatePem":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}`))
	f.Add([]byte(`{"execution":null}`))
	f.Add([]byte(`[]`))
	now := time.Now()
	f.Fuzz(func(t *testing.T, payload []byte) {
		var jr protocol.ExecutionAccepted
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

// FuzzHandle drives the state machine itself: in each journal phase, any
// payload on any topic the engine listens to. Nothing panics, the journal
// stays valid, and the active pointer only ever moves by a legitimate swap.
func FuzzHandle(f *testing.F) {
	f.Add(byte(0), byte(1), []byte(`{"clientToken":"x","execution":{"jobId":"j","jobDocument":{"operation":"bootcert.rotate","version":"1"}}}`))
	f.Add(byte(1), byte(3), []byte(`{"clientToken":"tok","certificatePem":"junk"}`))
	f.Add(byte(1), byte(4), []byte(`{"clientToken":"tok","code":"BAD_CSR","retryable":false}`))
	f.Add(byte(3), byte(5), []byte(`{"clientToken":"tok","certificateId":"x"}`))
	f.Add(byte(3), byte(6), []byte(`{"clientToken":"tok","code":"NOT_ALLOWED"}`))
	f.Add(byte(2), byte(0), []byte(`{"execution":{"jobId":"j"}}`))
	f.Fuzz(func(t *testing.T, phase, topic byte, payload []byte) {
		r := newRig(t)
		eng, err := New(r.cfg, r.cloud, KeystoreKeys{}, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		doc := protocol.DefaultJobDocument()
		phases := []journal.Phase{journal.Idle, journal.KeyStaged, journal.CertStaged, journal.Switched, journal.Committed, journal.RolledBack}
		p := phases[int(phase)%len(phases)]
		walk := map[journal.Phase][]journal.Phase{
			journal.KeyStaged: {journal.KeyStaged}, journal.CertStaged: {journal.KeyStaged, journal.CertStaged},
			journal.Switched: {journal.KeyStaged, journal.CertStaged, journal.Switched}, journal.Committed: {journal.KeyStaged, journal.CertStaged, journal.Switched, journal.Committed},
			journal.RolledBack: {journal.KeyStaged, journal.CertStaged, journal.Switched, journal.RolledBack},
		}
		for _, ph := range walk[p] {
			eng.journal.Write(journal.Entry{Phase: ph, JobID: "j", ClientToken: "tok", Generation: 1, KeyURI: r.cfg.OperationalFn(1), Doc: &doc})
		}
		conn, err := r.cloud.Dial(context.Background(), eng.bootstrapCred())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(0)
		s := &session{e: eng, conn: conn, cred: eng.bootstrapCred(), in: make(chan message, 64), subscribed: map[string]bool{}, startToken: "x"}
		topics := []string{
			s.jobsTopic("notify-next"), s.jobsTopic("start-next/accepted"), s.jobsTopic("start-next/rejected"),
			"certificates/gw-1/get/accepted", "certificates/gw-1/get/rejected",
			"certificates/gw-1/ack/accepted", "certificates/gw-1/ack/rejected", s.jobsTopic("j/update/rejected"),
		}
		before, _ := eng.store.Pointer()
		s.handle(context.Background(), message{topic: topics[int(topic)%len(topics)], payload: payload})
		eng.bg.Wait()
		after, err := eng.store.Pointer()
		if err != nil {
			t.Fatal(err)
		}
		j := eng.journal.Current()
		if !j.Phase.Valid() {
			t.Fatalf("journal phase %q", j.Phase)
		}
		if after != before && !(j.Phase == journal.Switched && after.Active == j.Generation) && !(j.Phase == journal.RolledBack && after.Active == j.Previous) {
			t.Fatalf("active pointer moved %+v -> %+v in phase %s", before, after, j.Phase)
		}
	})
}
