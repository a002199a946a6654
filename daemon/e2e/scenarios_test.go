package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/ctl"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/protocol"
)

func TestPreProvisioned(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-pre", deviceOpts{kind: onTPM, preProvisioned: true})
	d.start()
	st := d.waitFor("operational generation 1", operational(1))
	if !strings.Contains(st.Active.KeyURI, "factory-op.tpmkey") {
		t.Errorf("active key %s, want the factory-made key", st.Active.KeyURI)
	}
	if s, _ := c.jobStatus(d.name); s != types.JobExecutionStatusSucceeded {
		t.Errorf("job %s", s)
	}
	// a later renewal makes a key on demand and destroys the factory key
	c.addToRotation(d.name)
	st = d.waitFor("operational generation 2", operational(2))
	if !strings.Contains(st.Active.KeyURI, "op-2.tpmkey") {
		t.Errorf("renewal key %s", st.Active.KeyURI)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "keys", "factory-op.tpmkey")); !os.IsNotExist(err) {
		t.Errorf("factory operational key not destroyed after renewal: %v", err)
	}
	// bootcertctl status and rotate against the real daemon
	for _, args := range [][]string{{"status", "--socket", d.sock}, {"status", "--json", "--socket", d.sock}, {"rotate", "--socket", d.sock}} {
		root := ctl.NewRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.Execute(); err != nil {
			t.Fatalf("bootcertctl %v: %v", args, err)
		}
		if args[0] == "status" && (!strings.Contains(out.String(), "gw-pre") || !strings.Contains(out.String(), "op-2.tpmkey")) {
			t.Errorf("bootcertctl %v:\n%s", args, out.String())
		}
	}
	d.stop()
}

// TestRollback: the broker refuses the new certificate (issued by a CA the
// broker does not know): after 3 refusals the daemon rolls back to the
// bootstrap certificate and reports the job FAILED.
func TestRollback(t *testing.T) {
	bv := &badVendor{reply: map[string]func(protocol.GetRequest, any) []byte{}}
	c := newCloudWith(t, cloudOpts{functions: map[string]lab.Function{"VendorFunction": bv.fn}})
	bv.lab = c.lab
	rogue := testca.New(t, "unregistered CA")
	bv.reply["gw-rb"] = func(r protocol.GetRequest, pub any) []byte {
		cert := issueWith(t, rogue, "gw-rb", pub)
		b, _ := json.Marshal(protocol.GetAccepted{ClientToken: r.ClientToken, CertificateID: protocol.CertificateID(cert.Raw), CertificatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))})
		return b
	}
	d := newDevice(t, c, "gw-rb", deviceOpts{kind: onTPM})
	d.start()
	st := d.waitFor("rollback", func(s engineStatus) bool {
		return s.Phase == journal.Idle && s.LastResult == "ROLLED_BACK" && s.Connection == "connected" && s.ConnectedWith == 0
	})
	if st.Active.Generation != 0 || !strings.Contains(st.LastReason, "refused the new certificate 3 times") {
		t.Errorf("status %+v", st)
	}
	d.waitFor("job FAILED", func(engineStatus) bool { s, _ := c.jobStatus(d.name); return s == types.JobExecutionStatusFailed })
	if _, err := os.Stat(filepath.Join(d.dir, "keys", "op-1.tpmkey")); !os.IsNotExist(err) {
		t.Errorf("refused generation's key not destroyed: %v", err)
	}
	if got := c.certStatus(d.bootID); got != types.CertificateStatusActive {
		t.Errorf("bootstrap certificate %s", got)
	}
	d.stop()
}

func issueWith(t *testing.T, ca *testca.CA, cn string, pub any) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestRevocationRecovery: the operational certificate is revoked; the
// daemon falls back to the bootstrap certificate (re-activated by the
// operator) and says why.
func TestRevocationRecovery(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-rev", deviceOpts{kind: onTPM})
	d.start()
	st := d.waitFor("operational generation 1", operational(1))
	ctx := context.Background()
	if _, err := c.api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(d.bootID), NewStatus: types.CertificateStatusActive}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(st.Active.CertificateID), NewStatus: types.CertificateStatusRevoked}); err != nil {
		t.Fatal(err)
	}
	d.kill() // a power cut: the restart finds the revoked certificate
	d.start()
	st = d.waitFor("bootstrap fallback", func(s engineStatus) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
	if !strings.Contains(st.LastError, "generation 1") || !strings.Contains(st.LastError, "refused") || st.Advice == "" {
		t.Errorf("fallback not explained: %q / %q", st.LastError, st.Advice)
	}
	d.stop()
}

// TestLabRestartMidRotation restarts the lab (dropping every connection)
// when the device reaches each rotation phase; the rotation converges.
func TestLabRestartMidRotation(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-restart", deviceOpts{kind: onTPM})
	d.start()
	d.waitFor("bootstrap connected", func(s engineStatus) bool { return s.Connection == "connected" })
	gen := 0
	for _, p := range []journal.Phase{journal.KeyStaged, journal.CertStaged, journal.Switched} {
		if gen > 0 {
			c.addToRotation(d.name)
		}
		if !d.waitPhase(p, 20*time.Second) {
			// too quick to see, or never reached: only the first is fine
			if e := d.journalEntry(); !passed(e, p, gen) {
				t.Fatalf("phase %s never reached in 20s: journal %+v\nlog:\n%s", p, e, tail(d.Log(), 40))
			}
			t.Logf("phase %s passed too quickly to be seen; restarting anyway", p)
		}
		c.restart()
		gen++
		d.waitFor("converged after a restart at "+string(p), func(s engineStatus) bool {
			return s.Phase == journal.Idle && s.Connection == "connected" && s.Active.Generation >= gen && s.ConnectedWith == s.Active.Generation
		})
		gen = d.waitFor("", func(engineStatus) bool { return true }).Active.Generation
	}
	d.stop()
}

// passed reports whether the journal shows a rotation from generation from
// that has gone beyond phase p.
func passed(e journal.Entry, p journal.Phase, from int) bool {
	order := map[journal.Phase]int{journal.KeyStaged: 1, journal.CertStaged: 2, journal.Switched: 3, journal.Committed: 4}
	if e.Phase == journal.Idle {
		return e.Generation > from && e.Result == protocol.JobSucceeded
	}
	return e.Generation > from && order[e.Phase] > order[p]
}

// badVendor answers get requests itself, per thing, through the broker.
type badVendor struct {
	mu    sync.Mutex
	lab   *lab.Lab
	reply map[string]func(req protocol.GetRequest, pub any) []byte
}

func (v *badVendor) fn(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
	var ev struct {
		ThingName string `json:"thingName"`
		Operation string `json:"operation"`
		protocol.GetRequest
	}
	if err := json.Unmarshal(event, &ev); err != nil || ev.Operation != "get" {
		return nil, nil
	}
	r, err := csr.Parse([]byte(ev.CSR))
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	f, l := v.reply[ev.ThingName], v.lab
	v.mu.Unlock()
	if f != nil {
		l.Broker().Publish("certificates/"+ev.ThingName+"/get/accepted", f(ev.GetRequest, r.PublicKey), 1)
	}
	return nil, nil
}

// TestBadInput: the job is FAILED with a reason and the credentials are
// untouched for a malformed job document, a certificate for another key, an
// expired certificate, a location on a host not allowed and an oversized
// payload.
func TestBadInput(t *testing.T) {
	bv := &badVendor{reply: map[string]func(protocol.GetRequest, any) []byte{}}
	c := newCloudWith(t, cloudOpts{functions: map[string]lab.Function{"VendorFunction": bv.fn}})
	bv.lab = c.lab
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	certReply := func(token string, cert *x509.Certificate) []byte {
		b, _ := json.Marshal(protocol.GetAccepted{ClientToken: token, CertificateID: protocol.CertificateID(cert.Raw), CertificatePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))})
		return b
	}
	cases := map[string]struct {
		reply  func(protocol.GetRequest, any) []byte
		reason string
	}{
		"gw-otherkey": {func(r protocol.GetRequest, pub any) []byte {
			return certReply(r.ClientToken, c.issue("gw-otherkey", other.Public(), time.Now().Add(-time.Hour), time.Now().Add(time.Hour)))
		}, "not the staged key"},
		"gw-expired": {func(r protocol.GetRequest, pub any) []byte {
			return certReply(r.ClientToken, c.issue("gw-expired", pub, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour)))
		}, "expired"},
		"gw-location": {func(r protocol.GetRequest, pub any) []byte {
			b, _ := json.Marshal(protocol.GetAccepted{ClientToken: r.ClientToken, CertificateID: strings.Repeat("a", 64), Location: "https://evil.example/pkg?X-Amz-Signature=topsecret"})
			return b
		}, "not in verify.location_hosts"},
		"gw-oversized": {func(r protocol.GetRequest, pub any) []byte {
			return []byte(`{"clientToken":"` + r.ClientToken + `","certificatePem":"` + strings.Repeat("A", protocol.MaxPayload) + `"}`)
		}, "larger than 128 KiB"},
	}
	var devs []*device
	for name, tc := range cases {
		bv.mu.Lock()
		bv.reply[name] = tc.reply
		bv.mu.Unlock()
		d := newDevice(t, c, name, deviceOpts{kind: onFile, configure: func(c *config.Config) { c.Verify.LocationHosts = []string{"bucket.example"} }})
		d.start()
		devs = append(devs, d)
	}
	for _, d := range devs {
		tc := cases[d.name]
		st := d.waitFor("job failure", func(s engineStatus) bool { return s.LastResult == "FAILED" && s.Phase == journal.Idle })
		if !strings.Contains(st.LastReason, tc.reason) || strings.Contains(st.LastReason, "topsecret") {
			t.Errorf("%s: reason %q, want %q (and no presigned query)", d.name, st.LastReason, tc.reason)
		}
		d.waitFor("job FAILED", func(engineStatus) bool { s, _ := c.jobStatus(d.name); return s == types.JobExecutionStatusFailed })
		_, det := c.jobStatus(d.name)
		if !strings.Contains(det["reason"], tc.reason) {
			t.Errorf("%s: job statusDetails %v", d.name, det)
		}
		if st.Active.Generation != 0 || st.ConnectedWith != 0 {
			t.Errorf("%s: credentials changed: %+v", d.name, st)
		}
		if strings.Contains(d.Log(), "topsecret") {
			t.Errorf("%s: presigned query in the log", d.name)
		}
		d.stop()
	}
}

func TestMalformedJobDocument(t *testing.T) {
	c := newCloudWith(t, cloudOpts{doc: `{"operation":"bootcert.rotate","version":"1","get":{"subscribe":"x/+","publish":"$aws/evil"},"ack":{}}`})
	d := newDevice(t, c, "gw-baddoc", deviceOpts{kind: onFile})
	d.start()
	st := d.waitFor("job failure", func(s engineStatus) bool { return s.LastResult == "FAILED" })
	if !strings.Contains(st.LastReason, "job document") || st.Active.Generation != 0 {
		t.Errorf("status %+v", st)
	}
	d.waitFor("job FAILED", func(engineStatus) bool { s, _ := c.jobStatus(d.name); return s == types.JobExecutionStatusFailed })
	d.stop()
}

// TestSystemdNotify: READY=1 before the network is up, STATUS= lines that
// follow the state, STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-notify", deviceOpts{kind: onFile, alpn: true})
	sock := filepath.Join(d.dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var mu sync.Mutex
	var msgs []string
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			mu.Lock()
			msgs = append(msgs, string(buf[:n]))
			mu.Unlock()
		}
	}()
	os.Setenv("NOTIFY_SOCKET", sock)
	os.Setenv("WATCHDOG_USEC", "1500000")
	d.start()
	os.Unsetenv("NOTIFY_SOCKET")
	os.Unsetenv("WATCHDOG_USEC")
	d.waitFor("operational", operational(1))
	d.waitFor("a watchdog ping", func(engineStatus) bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(strings.Join(msgs, "\n"), "WATCHDOG=1")
	})
	d.stop()
	testkit.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(strings.Join(msgs, "\n"), "STOPPING=1")
	}, "no STOPPING=1 datagram after SIGTERM")
	mu.Lock()
	all := strings.Join(msgs, "\n")
	mu.Unlock()
	if !strings.Contains(d.Log(), "alpn=x-amzn-mqtt-ca") {
		t.Errorf("ALPN x-amzn-mqtt-ca not negotiated")
	}
	for _, want := range []string{"READY=1", "STATUS=connecting with bootstrap certificate", "STATUS=rotating: certificate staged", "STATUS=operational, certificate expires ", "STOPPING=1"} {
		if !strings.Contains(all, want) {
			t.Errorf("notifications lack %q:\n%s", want, all)
		}
	}
	if i, j := strings.Index(all, "READY=1"), strings.Index(all, "STATUS=operational"); i < 0 || j < i {
		t.Errorf("READY=1 should come before the device is operational:\n%s", all)
	}
}

// TestStaleAndDuplicatedMessages: after a rotation, replayed and duplicated
// QoS 1 replies (get/accepted, ack/accepted, start-next/accepted, a
// notify-next without a job) change nothing.
func TestStaleAndDuplicatedMessages(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-dup", deviceOpts{kind: onFile})
	d.start()
	st := d.waitFor("operational generation 1", operational(1))
	certPEM, err := os.ReadFile(filepath.Join(d.state, "creds", "1", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	e := d.journalEntry()
	get, _ := json.Marshal(protocol.GetAccepted{ClientToken: e.ClientToken, CertificateID: st.Active.CertificateID, CertificatePEM: string(certPEM)})
	ack, _ := json.Marshal(protocol.AckAccepted{ClientToken: e.ClientToken, CertificateID: st.Active.CertificateID})
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	next := []byte(`{"clientToken":"stale","execution":{"jobId":"bootcert-rotation","status":"IN_PROGRESS","jobDocument":` + string(doc) + `}}`)
	b := c.lab.Broker()
	for i := 0; i < 3; i++ {
		b.Publish("certificates/gw-dup/get/accepted", get, 1)
		b.Publish("certificates/gw-dup/ack/accepted", ack, 1)
		b.Publish("$aws/things/gw-dup/jobs/start-next/accepted", next, 1)
		b.Publish("$aws/things/gw-dup/jobs/notify-next", []byte(`{"timestamp":1}`), 1)
	}
	// a marker that the device has handled everything published before it:
	// a rotate request makes it publish start-next, whose reply it handles
	// in order after the stale ones
	cl := &controlClient{d}
	cl.rotate(t)
	after := d.waitFor("still operational", operational(1))
	if after.Active.CertificateID != st.Active.CertificateID || after.PendingJob != "" {
		t.Errorf("stale messages changed the device: %+v", after)
	}
	if gens, _ := os.ReadDir(filepath.Join(d.state, "creds")); len(gens) != 2 { // "1" and "active"
		var names []string
		for _, g := range gens {
			names = append(names, g.Name())
		}
		t.Errorf("credential store changed: %v", names)
	}
	d.stop()
}

type controlClient struct{ d *device }

func (c *controlClient) rotate(t *testing.T) {
	t.Helper()
	root := ctl.NewRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"rotate", "--socket", c.d.sock})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
}
