package engine

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore"
	_ "github.com/bootcert/bootcert/keystore/file"
	"github.com/bootcert/bootcert/protocol"
)

type rig struct {
	t      *testing.T
	dir    string
	ca     *testca.CA
	cloud  *fakeCloud
	cfg    Config
	eng    *Engine
	cancel context.CancelFunc
	done   chan error
	fetch  Fetcher
	// clock is the engine's time: a fake nobody moves unless the test does
	// (Advance) or asks the rig to (timeFlies).
	clock *clock.Fake
	// timeFlies: while the engine waits on a timer besides its idle beat
	// (a backoff, a retry), the rig advances the clock to fire it.
	timeFlies bool
	// keys is the engine's keystore; nil is KeystoreKeys{}.
	keys Keys
	// log is the engine's logger; nil discards.
	log *slog.Logger
}

func newRig(t *testing.T) *rig {
	dir := t.TempDir()
	ca := testca.New(t, "factory CA")
	ctx := context.Background()
	bootURI := "file:" + filepath.Join(dir, "keys", "bootstrap.pem")
	os.MkdirAll(filepath.Join(dir, "keys"), 0o700)
	bk, err := keystore.Generate(ctx, bootURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	boot := ca.Issue(t, "gw-1", bk.Public())
	cloud := newFakeCloud(t, ca, "gw-1")
	cloud.accept(protocol.CertificateID(boot.Raw))
	r := &rig{t: t, dir: dir, ca: ca, cloud: cloud, clock: clock.NewFake(time.Now())}
	r.cfg = Config{
		Endpoint: "broker.test", BootstrapKey: bootURI, Bootstrap: []*x509.Certificate{boot, ca.Cert},
		OperationalFn: func(gen int) string { return fmt.Sprintf("file:%s/keys/op-%d.pem", dir, gen) },
		StateDir:      filepath.Join(dir, "state"), ReplyTimeout: 2 * time.Second,
		Backoff:          Backoff{Initial: time.Second, Max: 5 * time.Second},
		RollbackRefusals: 3, RollbackWindow: time.Minute, FallbackToBoot: true,
	}
	os.MkdirAll(r.cfg.StateDir, 0o700)
	return r
}

func (r *rig) start() {
	r.t.Helper()
	var keys Keys = KeystoreKeys{}
	if r.keys != nil {
		keys = r.keys
	}
	eng, err := New(r.cfg, r.cloud, keys, r.fetch, r.clock, r.log)
	if err != nil {
		r.t.Fatal(err)
	}
	r.eng = eng
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan error, 1)
	go func() { r.done <- eng.Run(ctx) }()
	if r.timeFlies {
		go r.fly(ctx)
	}
	r.t.Cleanup(r.stop)
}

// fly advances the fake clock whenever the engine waits on a timer besides
// its idle beat, by enough to fire any backoff or retry: time passes only
// while the engine waits for it.
func (r *rig) fly(ctx context.Context) {
	step := r.cfg.ReplyTimeout + r.cfg.Backoff.Max
	for ctx.Err() == nil {
		if r.clock.WaitForWaiters(2, 50*time.Millisecond) {
			r.clock.Advance(step)
		}
	}
}

func (r *rig) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		r.t.Fatalf("engine did not stop")
	}
	r.cancel = nil
}

// waitFor waits for a status condition (a hang guard, not a timing assertion).
func (r *rig) waitFor(what string, cond func(Status) bool) Status {
	r.t.Helper()
	var s Status
	if !testkit.Poll(30*time.Second, func() bool { s = r.eng.Status(); return cond(s) }) {
		r.t.Fatalf("timed out waiting for %s; status %+v; job updates %v", what, s, r.cloud.jobUpdates())
	}
	return s
}

func operational(gen int) func(Status) bool {
	return func(s Status) bool {
		return s.Phase == journal.Idle && s.Connection == "connected" && s.ConnectedWith == gen && s.Active.Generation == gen
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestFullRotation(t *testing.T) {
	r := newRig(t)
	r.start()
	r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	if s := r.eng.Status(); s.Summary != "connected with bootstrap certificate" {
		t.Errorf("summary %q", s.Summary)
	}
	r.cloud.queueJob("rot-1")
	s := r.waitFor("generation 1", operational(1))
	if s.LastResult != "SUCCEEDED" || !strings.HasPrefix(s.Summary, "operational, certificate expires ") {
		t.Errorf("status after rotation: %+v", s)
	}
	ups := r.cloud.jobUpdates()
	if last := ups[len(ups)-1]; last != "rot-1 SUCCEEDED committed" {
		t.Errorf("job updates %v", ups)
	}
	for _, want := range []string{"rot-1 IN_PROGRESS key-staged", "rot-1 IN_PROGRESS cert-staged", "rot-1 IN_PROGRESS switched"} {
		if !contains(ups, want) {
			t.Errorf("job updates %v lack %q", ups, want)
		}
	}
	// second rotation: generation 2; generation 1's key destroyed; bootstrap kept
	r.cloud.queueJob("rot-2")
	r.waitFor("generation 2", operational(2))
	if fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) {
		t.Error("generation 1 key not destroyed after generation 2 committed")
	}
	if !fileExists(filepath.Join(r.dir, "keys", "op-2.pem")) || !fileExists(filepath.Join(r.dir, "keys", "bootstrap.pem")) {
		t.Error("active or bootstrap key missing")
	}
	gens, _ := r.eng.store.Generations()
	if len(gens) != 1 || gens[0] != 2 {
		t.Errorf("stored generations %v", gens)
	}
	// restart: connects with generation 2 directly
	r.stop()
	r.start()
	r.waitFor("restart on generation 2", operational(2))
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func TestJITRFirstConnect(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true // backoffs and retries pass
	boot := protocol.CertificateID(r.cfg.Bootstrap[0].Raw)
	r.cloud.revoke(boot) // unknown to the broker: refused until "registered"
	r.start()
	r.waitFor("a refusal", func(s Status) bool { return strings.Contains(s.LastError, "bootstrap certificate refused") })
	r.cloud.accept(boot)
	s := r.waitFor("connected after registration", func(s Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	// the refusal is resolved: a healthy device shows no stale error
	if s.LastError != "" || s.Advice != "" {
		t.Errorf("after the connect, status still shows %q / %q", s.LastError, s.Advice)
	}
}

func TestRollbackWhenNewCertificateRefused(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true        // backoffs and retries pass
	r.cloud.acceptNew = false // issued but never accepted by the broker
	r.start()
	r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
	r.cloud.queueJob("rot-1")
	s := r.waitFor("rollback", func(s Status) bool {
		return s.Phase == journal.Idle && s.LastResult == "ROLLED_BACK" && s.Connection == "connected" && s.ConnectedWith == 0
	})
	if s.Active.Generation != 0 || !strings.Contains(s.LastReason, "refused the new certificate 3 times") {
		t.Errorf("status %+v", s)
	}
	ups := r.cloud.jobUpdates()
	if last := ups[len(ups)-1]; !strings.HasPrefix(last, "rot-1 FAILED the broker refused") {
		t.Errorf("job updates %v", ups)
	}
	if fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) {
		t.Error("refused generation's key not destroyed")
	}
	if r.cloud.refusals != 3 {
		t.Errorf("refusals %d, want 3", r.cloud.refusals)
	}
}

func TestRecoveryAfterRevocation(t *testing.T) {
	r := newRig(t)
	r.start()
	r.cloud.queueJob("rot-1")
	s := r.waitFor("generation 1", operational(1))
	r.cloud.revoke(s.Active.CertificateID)
	r.stop()
	r.start()
	s = r.waitFor("bootstrap fallback", func(s Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	if !strings.Contains(s.LastError, "generation 1") || !strings.Contains(s.Advice, "revoked") {
		t.Errorf("fallback not explained: %+v", s)
	}
	// a new rotation moves it on to generation 2, and status no longer
	// shows the fallback as the device's error
	r.cloud.queueJob("rot-2")
	s = r.waitFor("generation 2", operational(2))
	if s.LastError != "" || s.Advice != "" {
		t.Errorf("the fallback error stays on the recovered device: %q / %q", s.LastError, s.Advice)
	}
	if s.LastFallback == "" || s.Counters.Fallbacks == 0 {
		t.Errorf("the fallback is not kept in status: %+v", s)
	}
}

func TestRecoveryAfterExpiry(t *testing.T) {
	r := newRig(t)
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.stop()
	// the bootstrap and operational certificates share a validity window
	// here; the operational one is found expired first and skipped with the
	// reason, then the bootstrap one (also expired) is still tried
	r.clock.Advance(48 * time.Hour)
	r.start()
	s := r.waitFor("fallback", func(s Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	if !strings.Contains(s.LastError, "expired") {
		t.Errorf("expiry not explained: %+v", s)
	}
}

func TestBadInput(t *testing.T) {
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tests := []struct {
		name   string
		doc    json.RawMessage
		reply  func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool)
		reason string
	}{
		{name: "fail/malformed-job-document", doc: json.RawMessage(`{"operation":"bootcert.rotate","version":"1","get":{"publish":"$aws/x"}}`), reason: "job document"},
		{name: "fail/wrong-operation", doc: json.RawMessage(`{"operation":"reboot","version":"1"}`), reason: "operation"},
		{name: "fail/certificate-for-another-key", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			c := r.ca.Issue(r.t, "gw-1", otherKey.Public())
			p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificatePEM: string(testca.PEM(c))})
			return "accepted", p, true
		}, reason: "not the staged key"},
		{name: "fail/expired-certificate", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			c := r.ca.Issue(r.t, "gw-1", pub, testca.Valid(time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)))
			p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificatePEM: string(testca.PEM(c))})
			return "accepted", p, true
		}, reason: "expired"},
		{name: "fail/wrong-cn", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			c := r.ca.Issue(r.t, "gw-2", pub)
			p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificatePEM: string(testca.PEM(c))})
			return "accepted", p, true
		}, reason: "CN"},
		{name: "fail/location-host-not-allowed", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, Location: "https://evil.example/pkg?X-Amz-Signature=secret"})
			return "accepted", p, true
		}, reason: "not in verify.location_hosts"},
		{name: "fail/location-http", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, Location: "http://bucket.s3.amazonaws.com/pkg?X-Amz-Signature=secret"})
			return "accepted", p, true
		}, reason: "not https"},
		{name: "fail/oversized-payload", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			return "accepted", []byte(`{"clientToken":"` + req.ClientToken + `","certificatePem":"` + strings.Repeat("A", protocol.MaxPayload) + `"}`), true
		}, reason: "larger than 128 KiB"},
		{name: "fail/garbage-pem", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificatePEM: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"})
			return "accepted", p, true
		}, reason: "certificate"},
		{name: "fail/rejected", reply: func(r *rig, req protocol.GetRequest, pub any) (string, []byte, bool) {
			p, _ := json.Marshal(protocol.Rejected{ClientToken: req.ClientToken, Code: protocol.NotActivated, Message: "awaiting activation"})
			return "rejected", p, true
		}, reason: "NOT_ACTIVATED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			r.fetch = &HTTPFetcher{AllowedHosts: []string{"bucket.s3.amazonaws.com"}}
			if tt.reply != nil {
				r.cloud.getReply = func(req protocol.GetRequest, pub any) (string, []byte, bool) { return tt.reply(r, req, pub) }
			}
			r.start()
			r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
			r.cloud.queueJobDoc("rot-bad", tt.doc)
			s := r.waitFor("failure", func(s Status) bool { return s.LastResult == "FAILED" && s.Phase == journal.Idle })
			if !strings.Contains(s.LastReason, tt.reason) {
				t.Errorf("reason %q does not mention %q", s.LastReason, tt.reason)
			}
			if strings.Contains(s.LastReason, "secret") {
				t.Errorf("reason leaks a presigned query: %q", s.LastReason)
			}
			testkit.Eventually(t, 10*time.Second, func() bool { return contains2(r.cloud.jobUpdates(), "rot-bad FAILED") },
				"job not reported FAILED")
			if s.Active.Generation != 0 || s.ConnectedWith != 0 {
				t.Errorf("credentials changed: %+v", s)
			}
			if fileExists(filepath.Join(r.dir, "keys", "op-1.pem")) {
				t.Error("staged key left behind")
			}
			if gens, _ := r.eng.store.Generations(); len(gens) != 0 {
				t.Errorf("generations stored: %v", gens)
			}
		})
	}
}

func contains2(l []string, prefix string) bool {
	for _, x := range l {
		if strings.HasPrefix(x, prefix) {
			return true
		}
	}
	return false
}

func TestDuplicatedAndLostReplies(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true // backoffs and retries pass
	r.cloud.dupReplies = true
	r.cloud.dropAcks = 2 // the first two acks get no reply: retried, never rolled back
	r.cfg.ReplyTimeout = 50 * time.Millisecond
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	if r.cloud.acks < 3 {
		t.Errorf("acks %d, want >= 3 (retried)", r.cloud.acks)
	}
	if n := len(r.cloud.issued); n != 1 {
		t.Errorf("%d certificates issued, want 1", n)
	}
}

// TestBrokerStopsAnswering: after the switch the broker stops answering on
// an open connection, and the rotation still commits on a later session;
// the engine never waits on one for ever.
//   - deaf: the new session gets its SUBACKs and PUBACKs but no message (the
//     lab's broker lost it from its client table on the quick reconnect):
//     the engine asks again, then ends the session and reconnects.
//   - no SUBACK: the wait ends at the reply timeout, and a slow broker is not
//     a refusal of the new certificate (no rollback after RollbackRefusals
//     of them).
func TestBrokerStopsAnswering(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(*fakeCloud, Config)
		check func(*fakeCloud, Config) string
	}{
		{"deaf", func(f *fakeCloud, _ Config) { f.deafNew = 1 }, func(f *fakeCloud, _ Config) string {
			if f.acks < maxUnanswered+1 {
				return fmt.Sprintf("acks %d, want >= %d (asked again, then again on a new session)", f.acks, maxUnanswered+1)
			}
			return ""
		}},
		{"no SUBACK", func(f *fakeCloud, c Config) { f.hangSubs = c.RollbackRefusals }, func(f *fakeCloud, c Config) string {
			if f.hangSubs != 0 {
				return fmt.Sprintf("%d SUBSCRIBEs left unanswered, want all %d tried", f.hangSubs, c.RollbackRefusals)
			}
			return ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.timeFlies = true // retries and reconnects pass
			tc.setup(r.cloud, r.cfg)
			r.cfg.ReplyTimeout = 50 * time.Millisecond
			r.start()
			r.cloud.queueJob("rot-1")
			r.waitFor("generation 1", operational(1))
			r.cloud.mu.Lock()
			defer r.cloud.mu.Unlock()
			if msg := tc.check(r.cloud, r.cfg); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// TestStuckEngineStopsBeating: the heartbeat that feeds the systemd
// watchdog (LastBeat) stops while the engine loop is stuck in a call that
// never returns, and beats again once it returns.
func TestStuckEngineStopsBeating(t *testing.T) {
	r := newRig(t)
	stall, stalled := make(chan struct{}), make(chan struct{})
	r.cloud.stall, r.cloud.stalled = stall, stalled
	r.start()
	select {
	case <-stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("the engine never asked for jobs")
	}
	stuck := r.eng.LastBeat()
	// three beat intervals pass: the beat timer fires, nobody takes it
	for i := 0; i < 3; i++ {
		r.clock.Advance(BeatInterval)
		if b := r.eng.LastBeat(); !b.Equal(stuck) {
			t.Fatalf("the engine beat (%v, then %v) while stuck in a publish", stuck, b)
		}
	}
	close(stall)
	testkit.Eventually(t, 30*time.Second, func() bool { return r.eng.LastBeat().After(stuck) }, "no beat after the publish returned")
}

func TestBackoff(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 10 * time.Second, Rand: func() float64 { return 0.999999 }}
	for n, want := range map[int]time.Duration{0: time.Second, 1: 2 * time.Second, 3: 8 * time.Second, 4: 10 * time.Second, 60: 10 * time.Second} {
		if got := b.Delay(n); got > want || got < want*99/100 {
			t.Errorf("Delay(%d) = %s, want ~%s", n, got, want)
		}
	}
	b.Rand = func() float64 { return 0 }
	if b.Delay(5) != 0 {
		t.Error("full jitter must reach 0")
	}
}

func TestCheckLocation(t *testing.T) {
	for _, tt := range []struct {
		url string
		ok  bool
	}{
		{"https://bucket.s3.amazonaws.com/x?sig=1", true},
		{"https://BUCKET.s3.amazonaws.com/x", true},
		{"http://bucket.s3.amazonaws.com/x", false},
		{"https://bucket.s3.amazonaws.com.evil.example/x", false},
		{"https://user@evil.example/x", false},
		{"file:///etc/passwd", false},
		{"::", false},
	} {
		_, err := CheckLocation(tt.url, []string{"bucket.s3.amazonaws.com"})
		if (err == nil) != tt.ok {
			t.Errorf("CheckLocation(%q) = %v", tt.url, err)
		}
		if err != nil && !errors.Is(err, ErrLocation) {
			t.Errorf("error %v not ErrLocation", err)
		}
	}
}

// slowKeys blocks key generation until released, like an RSA keygen on a
// discrete TPM.
type slowKeys struct {
	KeystoreKeys
	release chan struct{}
	started chan struct{}
}

func (k *slowKeys) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error) {
	close(k.started)
	<-k.release
	return k.KeystoreKeys.Generate(ctx, uri, alg)
}

// TestKeygenOffTheMQTTPath: while the hardware makes the staged key, the
// engine keeps handling the session (here: a rotate request reaches the
// broker as a start-next publish).
func TestKeygenOffTheMQTTPath(t *testing.T) {
	r := newRig(t)
	keys := &slowKeys{release: make(chan struct{}), started: make(chan struct{})}
	eng, err := New(r.cfg, r.cloud, keys, nil, r.clock, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.eng = eng
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r.waitFor("bootstrap connection", func(s Status) bool { return s.Connection == "connected" })
	r.cloud.queueJob("rot-1")
	select {
	case <-keys.started:
	case <-time.After(30 * time.Second):
		t.Fatal("key generation never started")
	}
	before := r.cloud.startNexts()
	eng.RotateNow()
	testkit.Eventually(t, 30*time.Second, func() bool { return r.cloud.startNexts() > before },
		"the engine did not handle a request while the key was being generated")
	close(keys.release)
	r.waitFor("generation 1", operational(1))
}

// TestLocationDownload: a reply with only a location is fetched over HTTPS
// from an allowed host and the rotation completes.
func TestLocationDownload(t *testing.T) {
	r := newRig(t)
	var pkg atomic.Value
	pkg.Store([]byte{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Query().Get("X-Amz-Signature") != "sig" {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		w.Write(pkg.Load().([]byte))
	}))
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	r.fetch = &HTTPFetcher{AllowedHosts: []string{"127.0.0.1"}, RootCAs: pool}
	r.cloud.getReply = func(req protocol.GetRequest, pub any) (string, []byte, bool) {
		cert := r.ca.Issue(t, "gw-1", pub)
		r.cloud.accept(protocol.CertificateID(cert.Raw))
		b, _ := json.Marshal(map[string]string{"certificatePem": string(testca.PEM(cert))})
		pkg.Store(b)
		p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificateID: protocol.CertificateID(cert.Raw), Location: srv.URL + "/pkg?X-Amz-Signature=sig"})
		return "accepted", p, true
	}
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
}

// TestKeyGoneFallsBack: the operational key disappears from the hardware
// (TPM cleared): the daemon connects with the bootstrap credential and says
// why.
func TestKeyGoneFallsBack(t *testing.T) {
	r := newRig(t)
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.stop()
	os.Remove(filepath.Join(r.dir, "keys", "op-1.pem"))
	r.start()
	s := r.waitFor("bootstrap", func(s Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	if !strings.Contains(s.LastError, "generation 1") || s.Advice == "" {
		t.Errorf("not explained: %q / %q", s.LastError, s.Advice)
	}
}

// TestBootstrapKeyUnusable: no key at all: the daemon keeps retrying and
// names the key problem, not the network.
func TestBootstrapKeyUnusable(t *testing.T) {
	r := newRig(t)
	os.Remove(filepath.Join(r.dir, "keys", "bootstrap.pem"))
	r.start()
	s := r.waitFor("an error", func(s Status) bool { return s.LastError != "" })
	if !strings.Contains(s.LastError, "key of credential generation 0 unusable") || !strings.Contains(s.Advice, "TPM") {
		t.Errorf("error %q advice %q", s.LastError, s.Advice)
	}
}

// TestRefusalsSurviveRestarts: refusals of a just-switched certificate are
// journalled, so a daemon restarted between refusals still rolls back.
func TestRefusalsSurviveRestarts(t *testing.T) {
	r := newRig(t)
	r.cloud.acceptNew = false
	r.cfg.Backoff = Backoff{Initial: time.Hour, Max: time.Hour, Rand: func() float64 { return 0.99 }}
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("first refusal", func(s Status) bool { return strings.Contains(s.LastError, "refused 1/3") })
	r.stop()
	r.start()
	r.waitFor("second refusal", func(s Status) bool { return strings.Contains(s.LastError, "refused 2/3") })
	r.stop()
	r.start()
	s := r.waitFor("rollback", func(s Status) bool {
		return s.LastResult == "ROLLED_BACK" && s.Connection == "connected" && s.ConnectedWith == 0
	})
	if s.Active.Generation != 0 {
		t.Errorf("status %+v", s)
	}
}

// TestRollbackWhenNewSessionDenied: the new certificate connects but the
// broker closes the session at the first subscribe (no policy attached):
// that counts as a refusal, and the rotation rolls back.
func TestRollbackWhenNewSessionDenied(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true // backoffs and retries pass
	r.cloud.denyNewSub = true
	r.start()
	r.cloud.queueJob("rot-1")
	s := r.waitFor("rollback", func(s Status) bool {
		return s.Phase == journal.Idle && s.LastResult == "ROLLED_BACK" && s.Connection == "connected" && s.ConnectedWith == 0
	})
	if !strings.Contains(s.LastReason, "3 times") {
		t.Errorf("reason %q", s.LastReason)
	}
}

func TestVerifyCertificate(t *testing.T) {
	ca := testca.New(t, "ca")
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caDER := sha256.Sum256(ca.Cert.Raw)
	pin := hex.EncodeToString(caDER[:])
	for _, tt := range []struct {
		name  string
		chain []*x509.Certificate
		pins  []string
		ok    bool
	}{
		{"ok/plain", []*x509.Certificate{ca.Issue(t, "gw-1", k.Public())}, nil, true},
		{"ok/aws-issued-cn", []*x509.Certificate{ca.Issue(t, AWSIssuedCN, k.Public())}, nil, true},
		{"ok/issued-a-minute-ahead", []*x509.Certificate{ca.Issue(t, "gw-1", k.Public(), testca.Valid(now.Add(time.Minute), now.Add(time.Hour)))}, nil, true},
		{"ok/pinned", []*x509.Certificate{ca.Issue(t, "gw-1", k.Public()), ca.Cert}, []string{pin}, true},
		{"fail/pinned-no-ca-in-chain", []*x509.Certificate{ca.Issue(t, "gw-1", k.Public())}, []string{pin}, false},
		{"fail/pinned-other-ca", []*x509.Certificate{ca.Issue(t, "gw-1", k.Public()), ca.Cert}, []string{strings.Repeat("0", 64)}, false},
		{"fail/other-key", []*x509.Certificate{ca.Issue(t, "gw-1", other.Public())}, nil, false},
		{"fail/other-cn", []*x509.Certificate{ca.Issue(t, "gw-2", k.Public())}, nil, false},
		{"fail/expired", []*x509.Certificate{ca.Issue(t, "gw-1", k.Public(), testca.Valid(now.Add(-2*time.Hour), now.Add(-time.Hour)))}, nil, false},
		{"fail/not-yet-valid", []*x509.Certificate{ca.Issue(t, "gw-1", k.Public(), testca.Valid(now.Add(time.Hour), now.Add(2*time.Hour)))}, nil, false},
		{"fail/empty", nil, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyCertificate(tt.chain, k.Public(), VerifyOptions{Thing: "gw-1", IssuerSHA256: tt.pins, Now: now})
			if (err == nil) != tt.ok {
				t.Fatalf("VerifyCertificate: %v", err)
			}
			if err != nil && !errors.Is(err, ErrBadCertificate) {
				t.Errorf("error %v is not ErrBadCertificate", err)
			}
		})
	}
}

// TestGetRetriesResendTheSameCSR: unanswered certificate requests are
// repeated with the same CSR, also across a restart, so that the vendor
// answers with one certificate.
func TestGetRetriesResendTheSameCSR(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true // backoffs and retries pass
	r.cfg.ReplyTimeout = 20 * time.Millisecond
	r.cloud.dropGets = 2
	r.start()
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	r.cloud.mu.Lock()
	csrs := append([]string(nil), r.cloud.csrs...)
	r.cloud.mu.Unlock()
	if len(csrs) < 3 {
		t.Fatalf("%d requests, want >= 3", len(csrs))
	}
	for _, c := range csrs[1:] {
		if c != csrs[0] {
			t.Fatal("a retried request carried a different CSR")
		}
	}
	if len(r.cloud.issued) != 1 {
		t.Errorf("%d certificates issued", len(r.cloud.issued))
	}
}

// legacyJournal is a rotation in progress as the release before roles and
// modes were recorded journalled it.
func legacyJournal(t *testing.T, stateDir, keyURI string) {
	t.Helper()
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	body := `{
  "phase": "key-staged",
  "jobId": "rot-1",
  "clientToken": "0123456789abcdef01234567",
  "generation": 1,
  "keyUri": ` + strconv.Quote(keyURI) + `,
  "doc": ` + string(doc) + `,
  "startedAt": "2026-01-01T00:00:00Z",
  "updatedAt": "2026-01-01T00:00:01Z"
}
`
	if err := os.WriteFile(filepath.Join(stateDir, journal.FileName), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestResumesLegacyJournal: a daemon upgraded in the middle of a rotation
// finishes it; the generation it stores records its key's role and mode.
func TestResumesLegacyJournal(t *testing.T) {
	r := newRig(t)
	legacyJournal(t, r.cfg.StateDir, r.cfg.OperationalFn(1))
	r.cloud.queueJob("rot-1")
	r.start()
	r.waitFor("generation 1", operational(1))
	c, err := r.eng.store.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	if c.Meta.KeyRole != credset.RoleOperational || c.Meta.Mode != credset.ModeOnDemand || c.Meta.JobID != "rot-1" {
		t.Errorf("generation 1 recorded %+v", c.Meta)
	}
}

// TestLegacyJournalMode: the mode of a legacy journal is worked out once,
// from the configuration: the pre-provisioned key's URI means
// pre-provisioned (its key is then never destroyed), any other on-demand.
func TestLegacyJournalMode(t *testing.T) {
	for _, tc := range []struct {
		name, pre string
		want      credset.Mode
	}{
		{"ok/pre-provisioned", "file:/factory/op.pem", credset.ModePreProvisioned},
		{"ok/on-demand", "", credset.ModeOnDemand},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.cfg.PreProvisionedKey = tc.pre
			uri := tc.pre
			if uri == "" {
				uri = r.cfg.OperationalFn(1)
			}
			legacyJournal(t, r.cfg.StateDir, uri)
			eng, err := New(r.cfg, r.cloud, KeystoreKeys{}, nil, r.clock, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := eng.upgradeJournal(); err != nil {
				t.Fatal(err)
			}
			j := eng.journal.Current()
			if j.Mode != tc.want || j.KeyRole != credset.RoleStaged || j.Legacy() {
				t.Errorf("upgraded journal: mode %q role %q, want %q %q", j.Mode, j.KeyRole, tc.want, credset.RoleStaged)
			}
			if got := destroyable(j.KeyRole, j.Mode); got != (tc.want == credset.ModeOnDemand) {
				t.Errorf("destroyable(%s, %s) = %v", j.KeyRole, j.Mode, got)
			}
		})
	}
}

func TestDestroyable(t *testing.T) {
	for _, tc := range []struct {
		role credset.KeyRole
		mode credset.Mode
		want bool
	}{
		{credset.RoleBootstrap, "", false},
		{credset.RoleBootstrap, credset.ModeOnDemand, false},
		{credset.RoleStaged, credset.ModeOnDemand, true},
		{credset.RoleStaged, credset.ModePreProvisioned, false},
		{credset.RoleOperational, credset.ModePreProvisioned, true},
		{credset.RoleOperational, credset.ModeOnDemand, true},
		{"", "", false},
	} {
		if got := destroyable(tc.role, tc.mode); got != tc.want {
			t.Errorf("destroyable(%q, %q) = %v, want %v", tc.role, tc.mode, got, tc.want)
		}
	}
}

// TestRecoveryJobOnLingeringSession: AWS IoT ends a revoked certificate's
// sessions only "within a few minutes"
// (https://docs.aws.amazon.com/iot/latest/apireference/API_UpdateCertificate.html),
// and the operator's revoke queues the recovery's rotation at once, so the
// device may start it on the revoked certificate's session. The vendor
// answers that get with a retryable rejection; the device keeps its staged
// key and job, and when the broker ends the session it falls back to the
// bootstrap certificate and asks again with the same CSR: the rotation
// succeeds with nothing reported FAILED.
func TestRecoveryJobOnLingeringSession(t *testing.T) {
	r := newRig(t)
	r.timeFlies = true
	r.start()
	r.cloud.queueJob("rot-1")
	s := r.waitFor("generation 1", operational(1))
	revoked := s.Active.CertificateID
	var mu sync.Mutex
	rejected := 0
	r.cloud.getReply = func(req protocol.GetRequest, _ any) (string, []byte, bool) {
		r.cloud.mu.Lock()
		conn := r.cloud.conns[len(r.cloud.conns)-1]
		r.cloud.mu.Unlock()
		if conn.certID != revoked {
			return "", nil, false // the bootstrap session: the vendor issues
		}
		mu.Lock()
		defer mu.Unlock()
		rejected++
		if rejected > 1 {
			conn.drop(io.EOF) // the broker's disconnect comes, minutes later
			return "", nil, true
		}
		p, _ := json.Marshal(protocol.Rejected{ClientToken: req.ClientToken, Code: protocol.NotAllowed, Retryable: true,
			Message: "certificate " + revoked + " used for this request is REVOKED; AWS IoT ends its sessions within minutes: retry on the next connection"})
		return protocol.SuffixRejected, p, true
	}
	r.cloud.revoke(revoked) // refused at the next connect; this session lives on
	r.cloud.queueJob("rot-2")
	s = r.waitFor("generation 2", operational(2))
	mu.Lock()
	n := rejected
	mu.Unlock()
	if n < 2 {
		t.Fatalf("the get over the revoked certificate was answered %d times, want the rejection and a retry", n)
	}
	for _, u := range r.cloud.jobUpdates() {
		if strings.Contains(u, "FAILED") {
			t.Errorf("job update %q: the recovery's rotation was failed", u)
		}
	}
	r.cloud.mu.Lock()
	csrs := append([]string(nil), r.cloud.csrs...)
	r.cloud.mu.Unlock()
	if len(csrs) < 3 || csrs[len(csrs)-1] != csrs[len(csrs)-2] {
		t.Errorf("%d certificate requests; the last two differ: the staged key was not kept", len(csrs))
	}
	if s.LastFallback == "" || s.Counters.Fallbacks == 0 {
		t.Errorf("no fallback recorded: %+v", s)
	}
}
