// Package testbroker runs a private mosquitto with mutual TLS for the
// daemon's tests: loopback, free port, stopped at the end of the test.
package testbroker

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
)

// Mosquitto is a running broker.
type Mosquitto struct {
	Port     int
	CAFile   string // the CA of the server certificate (and of accepted clients)
	ServerCA *testca.CA
	cmd      *exec.Cmd
	out      *bytes.Buffer
}

// Addr is 127.0.0.1:port.
func (m *Mosquitto) Addr() string { return "127.0.0.1:" + strconv.Itoa(m.Port) }

// Log is mosquitto's output so far.
func (m *Mosquitto) Log() string { return m.out.String() }

// Start runs mosquitto requiring client certificates signed by clientCA,
// with the certificate CN as user name and the ACL of AWS-like topics.
func Start(t testing.TB, clientCA *testca.CA) *Mosquitto {
	t.Helper()
	testenv.Require(t, "mosquitto")
	dir := t.TempDir()
	srvCA := testca.New(t, "test server CA")
	certFile, keyFile := srvCA.Server(t, dir)
	caFile := filepath.Join(dir, "server-ca.pem")
	os.WriteFile(caFile, testca.PEM(srvCA.Cert), 0o600)
	clientCAFile := filepath.Join(dir, "client-ca.pem")
	os.WriteFile(clientCAFile, testca.PEM(clientCA.Cert), 0o600)
	acl := filepath.Join(dir, "acl")
	os.WriteFile(acl, []byte("pattern readwrite certificates/%u/#\npattern readwrite $aws/things/%u/#\npattern readwrite test/%u/#\n"), 0o600)
	for attempt := 0; attempt < 5; attempt++ {
		port := testenv.FreePort(t)
		conf := filepath.Join(dir, "mosquitto.conf")
		body := fmt.Sprintf(`per_listener_settings false
user root
log_dest stderr
log_type error
log_type warning
log_type notice
allow_anonymous false
acl_file %s
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, acl, port, clientCAFile, certFile, keyFile)
		os.WriteFile(conf, []byte(body), 0o600)
		m := &Mosquitto{Port: port, CAFile: caFile, ServerCA: srvCA, out: &bytes.Buffer{}}
		m.cmd = exec.Command("mosquitto", "-c", conf)
		m.cmd.Stdout = m.out
		m.cmd.Stderr = m.out
		if err := m.cmd.Start(); err != nil {
			t.Fatalf("starting mosquitto: %v", err)
		}
		exited := make(chan struct{})
		go func() { m.cmd.Wait(); close(exited) }()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			c, err := net.DialTimeout("tcp", m.Addr(), 100*time.Millisecond)
			if err == nil {
				c.Close()
				t.Cleanup(func() { m.cmd.Process.Kill(); <-exited })
				return m
			}
			select {
			case <-exited:
				deadline = time.Time{}
			case <-time.After(10 * time.Millisecond):
			}
		}
		m.cmd.Process.Kill()
		<-exited
		t.Logf("mosquitto on port %d did not start: %s", port, m.out.String())
	}
	t.Fatalf("mosquitto did not start")
	return nil
}
