package ctl

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/internal/testproxy"
	"github.com/bootcert/bootcert/keystore"
)

// checkEnv is a gateway's configuration in a temporary directory: a CA, a
// bootstrap key (by URI) with its certificate, a unit file.
type checkEnv struct {
	t    *testing.T
	dir  string
	ca   *testca.CA
	cfg  config.Config
	unit string
}

func newCheckEnv(t *testing.T, bootURI string) *checkEnv {
	t.Helper()
	e := &checkEnv{t: t, dir: t.TempDir(), ca: testca.New(t, "factory CA")}
	k, err := keystore.Generate(context.Background(), bootURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatalf("generating %s: %v", bootURI, err)
	}
	boot := e.ca.Issue(t, "gw-check-1", k.Public(), testca.Valid(time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour)))
	keystore.CloseSigner(k)
	bootFile := filepath.Join(e.dir, "bootstrap.pem")
	os.WriteFile(bootFile, append(testca.PEM(boot), e.ca.PEM...), 0o644)
	rootFile := filepath.Join(e.dir, "root.pem")
	os.WriteFile(rootFile, e.ca.PEM, 0o644)
	e.cfg = config.Defaults()
	e.cfg.Broker = config.Broker{Endpoint: "localhost", Port: 8883, RootCA: rootFile}
	e.cfg.Identity.BootstrapKey, e.cfg.Identity.BootstrapCert = bootURI, bootFile
	e.cfg.Identity.OperationalKey = "file:" + filepath.Join(e.dir, "op-{generation}.pem")
	e.cfg.State.Dir = filepath.Join(e.dir, "state")
	if _, err := credset.Open(e.cfg.State.Dir); err != nil { // what bootcertd's first start makes
		t.Fatal(err)
	}
	e.cfg.Export.Dir = ""
	e.unit = filepath.Join(e.dir, "bootcertd.service")
	unit, err := os.ReadFile(filepath.Join("..", "systemd", "bootcertd.service"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(e.unit, unit, 0o644)
	return e
}

func (e *checkEnv) run(args ...string) (CheckReport, int) {
	e.t.Helper()
	var b strings.Builder
	toml.NewEncoder(&b).Encode(e.cfg)
	p := filepath.Join(e.dir, "bootcertd.toml")
	os.WriteFile(p, []byte(b.String()), 0o640)
	out, errOut, err := runCtl(e.t, append([]string{"check", "--json", "--config", p, "--unit", e.unit}, args...)...)
	var rep CheckReport
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		e.t.Fatalf("check --json: %v\n%s\n%s", jerr, out, errOut)
	}
	code := 0
	var ec *exitCode
	if errors.As(err, &ec) {
		code = ec.code
	} else if err != nil {
		e.t.Fatalf("check: %v", err)
	}
	if code != rep.Exit {
		e.t.Errorf("exit code %d, report says %d", code, rep.Exit)
	}
	return rep, code
}

// want asserts that check name has status, and that its message and fix
// contain the given texts.
func want(t *testing.T, rep CheckReport, name, status, msg, fix string) {
	t.Helper()
	for _, r := range rep.Checks {
		if r.Name == name && r.Status == status && strings.Contains(r.Message, msg) && strings.Contains(r.Fix, fix) {
			return
		}
	}
	b, _ := json.MarshalIndent(rep.Checks, "", "  ")
	t.Errorf("no %s %s with message %q and fix %q:\n%s", status, name, msg, fix, b)
}

func failures(rep CheckReport) []string {
	var out []string
	for _, r := range rep.Checks {
		if r.Status == checkFail {
			out = append(out, r.Name+": "+r.Message)
		}
	}
	return out
}

func TestCheckOK(t *testing.T) {
	e := newCheckEnv(t, "file:"+filepath.Join(t.TempDir(), "boot.pem"))
	rep, code := e.run("--user", "root")
	if code != ExitCheckOK {
		t.Fatalf("exit %d: %v\n%+v", code, failures(rep), rep)
	}
	for _, name := range []string{"config", "clock", "keys", "certificate", "sandbox", "files"} {
		want(t, rep, name, checkPass, "", "")
	}
	// the human output has one line a check and the summary
	out, _, _ := runCtl(t, "check", "--config", filepath.Join(e.dir, "bootcertd.toml"), "--unit", e.unit, "--user", "root")
	if !strings.Contains(out, "pass  certificate") || !strings.Contains(out, "0 failed") {
		t.Errorf("human output:\n%s", out)
	}
}

func TestCheckBrokenConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bootcertd.toml")
	os.WriteFile(p, []byte("[broker]\nendpiont = \"x\"\n"), 0o600)
	out, _, err := runCtl(t, "check", "--json", "--config", p)
	var rep CheckReport
	json.Unmarshal([]byte(out), &rep)
	var ec *exitCode
	if !errors.As(err, &ec) || ec.code != ExitCheckFailures {
		t.Errorf("exit %v", err)
	}
	want(t, rep, "config", checkFail, "broker.endpiont", "bootcertd --check-config")
}

// The factory commands run as root leave the key file 0600 root:root;
// bootcertd runs as another user (issue 14, item 6).
func TestCheckKeyFileUnreadableByDaemon(t *testing.T) {
	key := filepath.Join(t.TempDir(), "boot.pem")
	e := newCheckEnv(t, "file:"+key)
	os.Chmod(key, 0o600)
	rep, code := e.run("--user", "nobody")
	if code != ExitCheckFailures {
		t.Errorf("exit %d", code)
	}
	want(t, rep, "files", checkFail, key+" is -rw------- root:root: bootcertd (user nobody) cannot read it", "chown nobody:nogroup "+key)
}

func TestCheckClock1970(t *testing.T) {
	e := newCheckEnv(t, "file:"+filepath.Join(t.TempDir(), "boot.pem"))
	checkNow = func() time.Time { return time.Unix(42, 0) }
	defer func() { checkNow = time.Now }()
	rep, code := e.run("--user", "root")
	if code != ExitCheckFailures {
		t.Errorf("exit %d", code)
	}
	want(t, rep, "clock", checkFail, "1970-01-01T00:00:42Z, before "+clock.Floor().Format(time.RFC3339)+": not plausible", "timedatectl set-ntp true")
	want(t, rep, "certificate", checkFail, "not valid before", "check the clock")
}

// TestCheckClockBeforeFloor: a clock that looks recent but is before the
// daemon's floor (an RTC that kept the factory's date, systemd's build
// time) is what bootcertd waits on, so check fails it too.
func TestCheckClockBeforeFloor(t *testing.T) {
	e := newCheckEnv(t, "file:"+filepath.Join(t.TempDir(), "boot.pem"))
	at := clock.Floor().Add(-24 * time.Hour)
	checkNow = func() time.Time { return at }
	defer func() { checkNow = time.Now }()
	rep, _ := e.run("--user", "root")
	want(t, rep, "clock", checkFail, at.UTC().Format(time.RFC3339)+", before", "timedatectl set-ntp true")
}

func TestCheckCertificateNearExpiry(t *testing.T) {
	e := newCheckEnv(t, "file:"+filepath.Join(t.TempDir(), "boot.pem"))
	leafNA := e.bootLeaf().NotAfter
	checkNow = func() time.Time { return leafNA.Add(-5 * 24 * time.Hour) }
	defer func() { checkNow = time.Now }()
	rep, code := e.run("--user", "root")
	if code != ExitCheckWarnings {
		t.Errorf("exit %d, want %d (warnings only): %v", code, ExitCheckWarnings, failures(rep))
	}
	want(t, rep, "certificate", checkWarn, "(5 days left", "renewal is overdue")
}

func (e *checkEnv) bootLeaf() *x509.Certificate {
	data, _ := os.ReadFile(e.cfg.Identity.BootstrapCert)
	c, err := parseFirst(data)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func TestCheckMismatchedKeyAndCertificate(t *testing.T) {
	dir := t.TempDir()
	e := newCheckEnv(t, "file:"+filepath.Join(dir, "boot.pem"))
	other := "file:" + filepath.Join(dir, "other.pem")
	k, err := keystore.Generate(context.Background(), other, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	keystore.CloseSigner(k)
	e.cfg.Identity.BootstrapKey = other
	rep, _ := e.run("--user", "root")
	want(t, rep, "certificate", checkFail, "does not match the key "+other, "correct identity.bootstrap_key / identity.bootstrap_cert")
}

// The key is in a TPM that does not answer (swtpm stopped).
func TestCheckUnreachableTPM(t *testing.T) {
	testenv.Require(t, "swtpm")
	sw := testenv.StartSWTPM(t)
	uri := "tpm:device=" + sw.Device() + ";blob=" + filepath.Join(t.TempDir(), "boot.tpmkey")
	e := newCheckEnv(t, uri)
	keystore.CloseAll(context.Background())
	rep, code := e.run("--user", "root")
	if code != ExitCheckOK {
		t.Fatalf("with the TPM up: %v", failures(rep))
	}
	want(t, rep, "lockout", checkPass, "TPM lockout counter 0 of", "")
	keystore.CloseAll(context.Background())
	sw.Stop()
	rep, code = e.run("--user", "root")
	if code != ExitCheckFailures {
		t.Errorf("exit %d", code)
	}
	want(t, rep, "keys", checkFail, "identity.bootstrap_key tpm:device="+sw.Device(), "check the TPM at "+sw.Device())
}

// A PIN file every user can read; a token store the unit keeps read-only.
func TestCheckPKCS11PINModeAndSandbox(t *testing.T) {
	h := softHSM(t)
	pin := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pin, []byte(h.PIN), 0o644)
	uri := "pkcs11:token=" + h.Token + ";object=" + unique("check-boot") + "?module-path=" + h.Module + "&pin-source=file:" + pin
	e := newCheckEnv(t, uri)
	rep, _ := e.run("--user", "root")
	want(t, rep, "files", checkFail, pin+" is -rw-r--r--: readable by every user", "chmod 0640 "+pin)
	store := tokenStore(h.Module)
	if store == "" || !strings.HasPrefix(store, os.TempDir()) {
		t.Fatalf("token store %q: want the test's SoftHSM2 tokendir", store)
	}
	// the packaged unit (ProtectSystem=strict) does not list the store
	want(t, rep, "sandbox", checkFail, "the PKCS#11 token store of libsofthsm2.so "+store+" is read-only for bootcertd", "ReadWritePaths="+store)
	want(t, rep, "keys", checkPass, "reachable, signs", "")
	// fixed: mode 0640, a drop-in with ReadWritePaths
	os.Chmod(pin, 0o640)
	dropin := filepath.Join(e.dir, "bootcertd.service.d", "token.conf")
	os.MkdirAll(filepath.Dir(dropin), 0o755)
	os.WriteFile(dropin, []byte("[Service]\nReadWritePaths="+store+"\n"), 0o644)
	rep, _ = e.run("--user", "root", "--unit", e.unit, "--unit", filepath.Join(e.dir, "bootcertd.service.d", "*.conf"))
	want(t, rep, "sandbox", checkPass, "allows the configured backends", "")
	want(t, rep, "files", checkPass, "", "")
}

// A TPM device the unit's DeviceAllow does not grant.
func TestCheckSandboxDevice(t *testing.T) {
	e := newCheckEnv(t, "file:"+filepath.Join(t.TempDir(), "boot.pem"))
	e.cfg.Identity.PreProvisioned = "tpm:device=/dev/tpm0;blob=/nonexistent/op.tpmkey"
	e.cfg.Identity.Mode = config.ModePreProvisioned
	rep, _ := e.run("--user", "root")
	want(t, rep, "sandbox", checkFail, "TPM device /dev/tpm0 is not in the unit's DeviceAllow", "DeviceAllow=/dev/tpm0 rw")
}

// --online against a broker whose certificate another CA signed.
func TestCheckOnlineWrongRoot(t *testing.T) {
	e := newCheckEnv(t, "file:"+filepath.Join(t.TempDir(), "boot.pem"))
	other := testca.New(t, "someone else's CA")
	addr := tlsBroker(t, other, nil)
	host, port, _ := net.SplitHostPort(addr)
	fmt.Sscan(port, &e.cfg.Broker.Port)
	e.cfg.Broker.Endpoint = host
	rep, code := e.run("--user", "root", "--online")
	if code != ExitCheckFailures {
		t.Errorf("exit %d", code)
	}
	want(t, rep, "online", checkFail, "TLS to "+addr, "broker.root_ca "+e.cfg.Broker.RootCA+" does not sign the broker's certificate")
	// the right root, a broker that answers CONNECT: pass, with the
	// thing name as client ID
	ids := make(chan string, 1)
	addr = tlsBroker(t, e.ca, ids)
	_, port, _ = net.SplitHostPort(addr)
	fmt.Sscan(port, &e.cfg.Broker.Port)
	rep, _ = e.run("--user", "root", "--online")
	want(t, rep, "online", checkPass, "the broker accepts the bootstrap certificate", "")
	if id := <-ids; id != "gw-check-1" {
		t.Errorf("client ID %q", id)
	}
}

// --online through broker.proxy: the tunnel goes to the endpoint, and a
// proxy that refuses the credentials fails the check without the password.
func TestCheckOnlineProxy(t *testing.T) {
	e := newCheckEnv(t, "file:"+filepath.Join(t.TempDir(), "boot.pem"))
	addr := tlsBroker(t, e.ca, nil)
	host, port, _ := net.SplitHostPort(addr)
	fmt.Sscan(port, &e.cfg.Broker.Port)
	e.cfg.Broker.Endpoint = host // a bare root may not resolve localhost
	px := testproxy.Start(t, "gw:s3cret")
	e.cfg.Broker.Proxy = "http://gw:s3cret@" + px.Addr()
	rep, _ := e.run("--user", "root", "--online")
	want(t, rep, "online", checkPass, "the broker accepts the bootstrap certificate", "")
	if got := px.Targets(); len(got) != 1 || got[0] != addr {
		t.Errorf("tunnelled to %v, want %s", got, addr)
	}
	e.cfg.Broker.Proxy = "http://gw:wrong-pass@" + px.Addr()
	rep, code := e.run("--user", "root", "--online")
	if code != ExitCheckFailures {
		t.Errorf("exit %d", code)
	}
	want(t, rep, "online", checkFail, "proxy refused the tunnel", "broker.proxy")
	if out, _ := json.Marshal(rep); strings.Contains(string(out), "wrong-pass") {
		t.Errorf("the report repeats the proxy password: %s", out)
	}
}

// tlsBroker serves TLS on a free loopback port with a server certificate
// from ca, requires a client certificate, and answers one MQTT CONNECT with
// CONNACK 0 (reporting its client ID on ids when not nil).
func tlsBroker(t *testing.T, ca *testca.CA, ids chan<- string) string {
	certFile, keyFile := ca.Server(t, t.TempDir())
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				hdr := make([]byte, 2)
				if _, err := r.Read(hdr[:1]); err != nil {
					return
				}
				n, _ := r.ReadByte()
				body := make([]byte, n)
				if _, err := r.Read(body); err != nil {
					return
				}
				c.Write([]byte{0x20, 2, 0, 0})
				if ids != nil && len(body) > 12 {
					ids <- string(body[12:])
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func parseFirst(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM")
	}
	return x509.ParseCertificate(b.Bytes)
}
