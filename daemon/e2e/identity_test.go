package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/common/expfmt"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/identity"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// A second, real MQTT client (paho) uses the identity bootcertd exports
// (cert.pem, key.uri naming a PKCS#11 key in SoftHSM2, shared with the
// daemon) to connect to the lab, and after the next rotation's hook
// connects with the new identity. The operational policy admits only the
// thing name as client ID (thing policy variables resolve only then), and
// two sessions with one client ID close each other: the app connects while
// bootcertd is stopped. A failing hook does not change the rotation's outcome. The
// metrics textfile parses and follows the rotations.
func TestCoResidentClient(t *testing.T) {
	c := newCloud(t)
	root := t.TempDir()
	exportDir, hooksDir, prom := filepath.Join(root, "identity"), filepath.Join(root, "hooks.d"), filepath.Join(root, "metrics", "bootcert.prom")
	os.MkdirAll(hooksDir, 0o755)
	os.MkdirAll(filepath.Dir(prom), 0o755)
	pinFile := filepath.Join(root, "pin")
	os.WriteFile(pinFile, []byte(softhsm.PIN), 0o640)
	hookLog := filepath.Join(root, "hook.log")
	os.WriteFile(filepath.Join(hooksDir, "10-fails"), []byte("#!/bin/sh\necho failing on purpose >&2\nexit 1\n"), 0o755)
	os.WriteFile(filepath.Join(hooksDir, "20-app"), []byte("#!/bin/sh\necho \"$BOOTCERT_EVENT $BOOTCERT_GENERATION $BOOTCERT_CERTIFICATE_ID\" >> "+hookLog+"\n"), 0o755)
	d := newDevice(t, c, "gw-coresident", deviceOpts{kind: onPKCS11, configure: func(cfg *config.Config) {
		pinValue := "pin-value=" + softhsm.PIN
		cfg.Identity.BootstrapKey = strings.Replace(cfg.Identity.BootstrapKey, pinValue, "pin-source=file:"+pinFile, 1)
		cfg.Identity.OperationalKey = strings.Replace(cfg.Identity.OperationalKey, pinValue, "pin-source=file:"+pinFile, 1)
		cfg.Export = config.Export{Dir: exportDir, HooksDir: hooksDir, HookTimeout: config.Duration(10 * time.Second)}
		cfg.Metrics.Textfile = prom
	}})
	d.start()
	s1 := d.waitFor("operational generation 1", operational(1))
	hookSaw := func(line string) bool {
		b, _ := os.ReadFile(hookLog)
		return strings.Contains(string(b), line)
	}
	if !testkit.Poll(30*time.Second, func() bool { return hookSaw("commit 1 " + s1.Active.CertificateID) }) {
		t.Fatalf("the hook did not run for generation 1's commit:\n%s", tail(d.Log(), 30))
	}
	if !strings.Contains(d.Log(), "hook failed (the rotation's outcome stands)") {
		t.Errorf("the failing hook was not logged")
	}
	rotations := func() float64 {
		data, err := os.ReadFile(prom)
		if err != nil {
			t.Fatalf("metrics textfile: %v", err)
		}
		var p expfmt.TextParser
		fams, err := p.TextToMetricFamilies(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("metrics textfile does not parse: %v\n%s", err, data)
		}
		for _, m := range fams["bootcert_rotations_total"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == "SUCCEEDED" {
					return m.GetCounter().GetValue()
				}
			}
		}
		t.Fatalf("no bootcert_rotations_total{outcome=\"SUCCEEDED\"}:\n%s", data)
		return 0
	}
	if !testkit.Poll(10*time.Second, func() bool { return rotations() == 1 }) {
		t.Errorf("metrics: %v successful rotations after the first, want 1", rotations())
	}

	d.stop()
	app := connectApp(t, c, exportDir, d.name)
	app.Disconnect(250)
	d.start()
	d.waitFor("operational generation 1 again", operational(1))
	if id := exportedID(t, exportDir); id != s1.Active.CertificateID {
		t.Fatalf("exported certificate %s, active %s", id, s1.Active.CertificateID)
	}
	// the next rotation; the app reconnects after the hook
	c.addToRotation(d.name)
	s2 := d.waitFor("operational generation 2", operational(2))
	if s2.LastResult != protocol.JobSucceeded {
		t.Errorf("rotation with a failing hook: %s %s", s2.LastResult, s2.LastReason)
	}
	if !testkit.Poll(30*time.Second, func() bool { return hookSaw("commit 2 " + s2.Active.CertificateID) }) {
		t.Fatalf("the hook did not run for generation 2's commit")
	}
	if id := exportedID(t, exportDir); id != s2.Active.CertificateID {
		t.Fatalf("exported certificate %s after the hook, active %s", id, s2.Active.CertificateID)
	}
	// bootcertd was restarted in between: its counters began again
	if !testkit.Poll(10*time.Second, func() bool { return rotations() == 1 }) {
		t.Errorf("metrics: %v successful rotations after the restart and one rotation, want 1", rotations())
	}
	st, _ := d.status()
	d.stop()
	app = connectApp(t, c, exportDir, d.name)
	app.Disconnect(250)
	if st.Counters.Rotations[protocol.JobSucceeded] != 1 || st.Counters.Connects < 2 || !st.Counters.LastSuccess.Equal(st.LastResultAt) {
		t.Errorf("status counters %+v", st.Counters)
	}
}

func exportedID(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, identity.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := protocol.ParseChain(data)
	if err != nil {
		t.Fatal(err)
	}
	return protocol.CertificateID(chain[0].Raw)
}

// connectApp connects a paho client with the identity in dir, as an
// application on the gateway would: the chain from cert.pem, the key
// through its URI in key.uri.
func connectApp(t *testing.T, c *cloudEnv, dir, clientID string) paho.Client {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, identity.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	chain, err := protocol.ParseChain(data)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := os.ReadFile(filepath.Join(dir, identity.KeyURIFile))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := keystore.Open(context.Background(), strings.TrimSpace(string(uri)))
	if err != nil {
		t.Fatalf("opening the exported key URI %s: %v", uri, err)
	}
	var raw [][]byte
	for _, x := range chain {
		raw = append(raw, x.Raw)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(c.lab.ServerCAPEM())
	host, _ := splitHostPort(c.lab.Endpoints().MQTT)
	opts := paho.NewClientOptions().AddBroker("ssl://" + c.lab.Endpoints().MQTT).SetClientID(clientID).
		SetTLSConfig(&tls.Config{ServerName: host, RootCAs: roots, Certificates: []tls.Certificate{{Certificate: raw, PrivateKey: signer}}}).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	cl := paho.NewClient(opts)
	tok := cl.Connect()
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("%s with certificate %s: connect: %v", clientID, protocol.CertificateID(chain[0].Raw)[:12], tok.Error())
	}
	if !cl.IsConnected() {
		t.Fatalf("%s not connected", clientID)
	}
	return cl
}
