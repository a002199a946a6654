// Package e2e runs the real bootcertd binary against the lab (the AWS IoT
// Core stand-in with the real template and cloud functions) with keys in
// swtpm and SoftHSM2.
package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	b64 "encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore"
	_ "github.com/bootcert/bootcert/keystore/all"
	"github.com/bootcert/bootcert/keystore/pkcs11"
	"github.com/bootcert/bootcert/keystore/tpm"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

var (
	bootcertd string // built once
	softhsm   *testenv.SoftHSM
	hsmErr    error
)

const acct = "arn:aws:iot:us-east-1:123456789012:"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bootcertd-e2e-")
	if err != nil {
		panic(err)
	}
	bootcertd = filepath.Join(dir, "bootcertd")
	out, err := exec.Command("go", "build", "-o", bootcertd, "github.com/bootcert/bootcert/cmd/bootcertd").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building bootcertd: %v\n%s", err, out)
		os.Exit(1)
	}
	softhsm, hsmErr = testenv.SetupSoftHSM(filepath.Join(dir, "softhsm"), "bootcert", "1234", "5678")
	code := m.Run()
	pkcs11.CloseAll()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cloudEnv is a lab with the real template, a registered factory CA and the
// continuous rotation job.
type cloudEnv struct {
	t      testing.TB
	lab    *lab.Lab
	api    *iot.Client
	s3     *s3.Client
	bucket string
	ca     *testca.CA
	dir    string
	data   string
	allow  []string
	mu     sync.Mutex

	functions map[string]lab.Function
	params    map[string]string // template parameter overrides
	jobs      map[string]string // thing -> its latest rotation job (addToRotation)
}

func newCloud(t testing.TB) *cloudEnv { return newCloudWith(t, cloudOpts{}) }

type cloudOpts struct {
	functions map[string]lab.Function
	doc       string // job document; "" = protocol.DefaultJobDocument()
	params    map[string]string
}

// trustFactoryCA finds the template's bucket, registers a new factory CA
// (verification certificate, auto-registration on) and uploads it with an
// empty allow list.
func (c *cloudEnv) trustFactoryCA(ctx context.Context) {
	t := c.t
	tmpl, err := template.Load(templatePath(), template.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range tmpl.Buckets {
		c.bucket = b
	}
	c.ca = testca.New(t, "factory CA")
	code, err := c.api.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil {
		t.Fatalf("GetRegistrationCode: %v", err)
	}
	ver := c.ca.NewLeaf(t, aws.ToString(code.RegistrationCode))
	if _, err := c.api.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{
		CaCertificate: aws.String(string(c.ca.PEM)), VerificationCertificate: aws.String(string(ver.CertPEM)),
		SetAsActive: true, AllowAutoRegistration: true,
	}); err != nil {
		t.Fatalf("RegisterCACertificate: %v", err)
	}
	c.put("trust/factory-ca.pem", c.ca.PEM)
	c.put("trust/allow-list.csv", []byte("device_id,bootstrap_sha256,final_csr\n"))
}

func newCloudWith(t testing.TB, o cloudOpts) *cloudEnv {
	t.Helper()
	c := &cloudEnv{t: t, dir: t.TempDir(), data: t.TempDir(), functions: o.functions, params: o.params}
	c.start()
	ctx := context.Background()
	c.trustFactoryCA(ctx)
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	if o.doc != "" {
		doc = []byte(o.doc)
	}
	if _, err := c.api.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bootcert-rotation"), Document: aws.String(string(doc)),
		Targets: []string{acct + "thinggroup/bootcert-rotation"}, TargetSelection: types.TargetSelectionContinuous}); err != nil {
		t.Fatalf("CreateJob: %v", err)
	}
	// As bootcertctl cloud setup does: the reaper hears job executions.
	if _, err := c.api.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"JOB_EXECUTION": {Enabled: true}}}); err != nil {
		t.Fatalf("UpdateEventConfigurations: %v", err)
	}
	return c
}

func templatePath() string { return filepath.Join("..", "..", "cloud", "template.yaml") }

// start (re)starts the lab on the same data directory and ports.
func (c *cloudEnv) start() {
	c.t.Helper()
	cfg := lab.Config{DataDir: c.data, TemplatePath: templatePath(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0", Functions: c.functions, Parameters: c.params}
	if c.lab != nil {
		ep := c.lab.Endpoints()
		cfg.MQTTAddr = ep.MQTT
		cfg.APIAddr = strings.TrimPrefix(ep.API, "https://")
		cfg.S3Addr = strings.TrimPrefix(ep.S3, "https://")
	}
	l, err := lab.Start(context.Background(), cfg)
	if err != nil {
		c.t.Fatalf("lab.Start: %v", err)
	}
	c.lab = l
	c.t.Cleanup(func() { l.Close() })
	c.api = iot.NewFromConfig(lab.ClientConfig(l.ServerCAPEM(), "us-east-1"), func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) })
	c.s3 = s3.NewFromConfig(lab.ClientConfig(l.ServerCAPEM(), "us-east-1"), func(o *s3.Options) { o.BaseEndpoint = aws.String(l.Endpoints().S3); o.UsePathStyle = true })
}

func (c *cloudEnv) restart() {
	c.t.Helper()
	c.lab.Close()
	c.start()
}

func (c *cloudEnv) put(key string, body []byte) {
	c.t.Helper()
	if _, err := c.s3.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(key), Body: bytes.NewReader(body)}); err != nil {
		c.t.Fatalf("PutObject %s: %v", key, err)
	}
}

func (c *cloudEnv) allowDevice(line string) {
	c.mu.Lock()
	c.allow = append(c.allow, line)
	body := strings.Join(manifest.Header, ",") + "\n" + strings.Join(c.allow, "\n") + "\n"
	c.mu.Unlock()
	c.put("trust/allow-list.csv", []byte(body))
}

func (c *cloudEnv) certStatus(id string) types.CertificateStatus {
	d, err := c.api.DescribeCertificate(context.Background(), &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		return ""
	}
	return d.CertificateDescription.Status
}

func (c *cloudEnv) jobStatus(thing string) (types.JobExecutionStatus, map[string]string) {
	c.mu.Lock()
	job := c.jobs[thing]
	c.mu.Unlock()
	if job == "" {
		job = "bootcert-rotation"
	}
	d, err := c.api.DescribeJobExecution(context.Background(), &iot.DescribeJobExecutionInput{JobId: aws.String(job), ThingName: aws.String(thing)})
	if err != nil || d.Execution == nil {
		return "", nil
	}
	return d.Execution.Status, d.Execution.StatusDetails.DetailsMap
}

// addToRotation queues another rotation as the renewal function does: the
// thing back in the rotation group and a new snapshot job targeting it (AWS
// documents no second execution of the continuous job for a thing that had
// one, and the lab creates none).
func (c *cloudEnv) addToRotation(thing string) {
	c.t.Helper()
	ctx := context.Background()
	if _, err := c.api.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingName: aws.String(thing), ThingGroupName: aws.String("bootcert-rotation")}); err != nil {
		c.t.Fatalf("AddThingToThingGroup: %v", err)
	}
	th, err := c.api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(thing)})
	if err != nil {
		c.t.Fatalf("DescribeThing: %v", err)
	}
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	c.mu.Lock()
	if c.jobs == nil {
		c.jobs = map[string]string{}
	}
	job := fmt.Sprintf("bootcert-r-test-%d", len(c.jobs)+int(time.Now().UnixNano()%1e9))
	c.mu.Unlock()
	if _, err := c.api.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String(job), Targets: []string{aws.ToString(th.ThingArn)},
		Document: aws.String(string(doc)), TargetSelection: types.TargetSelectionSnapshot}); err != nil {
		c.t.Fatalf("CreateJob: %v", err)
	}
	c.mu.Lock()
	c.jobs[thing] = job
	c.mu.Unlock()
}

// issue signs a certificate for pub with the factory CA.
func (c *cloudEnv) issue(cn string, pub crypto.PublicKey, nb, na time.Time) *x509.Certificate {
	c.t.Helper()
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn}, NotBefore: nb, NotAfter: na,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca.Cert, pub, c.ca.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// device is one gateway: keys in hardware, a config, a bootcertd process.
type device struct {
	t       testing.TB
	cloud   *cloudEnv
	name    string
	dir     string
	cfgPath string
	sock    string
	state   string
	bootID  string
	bootKey string
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *bytes.Buffer
	logMu   sync.Mutex
	binary  string // default: the bootcertd built by TestMain
}

type keyKind int

const (
	onTPM keyKind = iota
	onPKCS11
	onFile
	onTPM2PKCS11 // tpm2-pkcs11 on swtpm: PKCS#11 over a TPM, no C_CopyObject
)

// tpm2PKCS11Module is Debian's tpm2-pkcs11 module.
const tpm2PKCS11Module = testenv.TPM2PKCS11Module

// setupTPM2PKCS11 makes a tpm2-pkcs11 store with one token on a fresh swtpm
// and points this process (and the bootcertd it starts) at it. It returns
// the user PIN.
func setupTPM2PKCS11(t testing.TB) string {
	t.Helper()
	return testenv.SetupTPM2PKCS11(t, "bootcert-tpm", "Tpm-User-2468", "Tpm-SO-1357").PIN
}

type deviceOpts struct {
	kind           keyKind
	preProvisioned bool
	configure      func(*config.Config) // changes to the test configuration
	alpn           bool                 // ask for ALPN x-amzn-mqtt-ca (what port 443 needs)
	notAllowed     bool
	// tpm, with kind onTPM, is a manufactured swtpm (EK certificate);
	// enrol, called with the bootstrap key's URI while the test holds the
	// TPM, returns the allow-list line's attestation columns.
	tpm   *testenv.Manufactured
	enrol func(bootURI string) string
}

func newDevice(t testing.TB, c *cloudEnv, name string, o deviceOpts) *device {
	t.Helper()
	d := &device{t: t, cloud: c, name: name, dir: t.TempDir(), log: &bytes.Buffer{}}
	d.state = filepath.Join(d.dir, "state")
	d.sock = filepath.Join(d.dir, "control.sock")
	keys := filepath.Join(d.dir, "keys")
	os.MkdirAll(keys, 0o700)
	var bootURI, opURI, preURI string
	switch o.kind {
	case onTPM:
		var sw *testenv.SWTPM
		if o.tpm != nil {
			sw = testenv.StartManufactured(t, o.tpm)
		} else {
			sw = testenv.StartSWTPM(t)
		}
		bootURI = "tpm:device=" + sw.Device() + ";blob=" + keys + "/bootstrap.tpmkey"
		opURI = "tpm:device=" + sw.Device() + ";blob=" + keys + "/op-{generation}.tpmkey"
		preURI = "tpm:device=" + sw.Device() + ";blob=" + keys + "/factory-op.tpmkey"
	case onPKCS11:
		if hsmErr != nil {
			testenv.Missing(t, hsmErr.Error())
		}
		q := "?module-path=" + softhsm.Module + "&pin-value=" + softhsm.PIN
		bootURI = "pkcs11:token=bootcert;object=" + name + "-bootstrap" + q
		opURI = "pkcs11:token=bootcert;object=" + name + "-op-{generation}" + q
		preURI = "pkcs11:token=bootcert;object=" + name + "-factory-op" + q
	case onTPM2PKCS11:
		pin := setupTPM2PKCS11(t)
		q := "?module-path=" + tpm2PKCS11Module + "&pin-value=" + pin
		bootURI = "pkcs11:token=bootcert-tpm;object=" + name + "-bootstrap" + q
		opURI = "pkcs11:token=bootcert-tpm;object=" + name + "-op-{generation}" + q
		preURI = "pkcs11:token=bootcert-tpm;object=" + name + "-factory-op" + q
	case onFile:
		bootURI = "file:" + keys + "/bootstrap.pem"
		opURI = "file:" + keys + "/op-{generation}.pem"
		preURI = "file:" + keys + "/factory-op.pem"
	}
	ctx := context.Background()
	bk, err := keystore.Generate(ctx, bootURI, keystore.ECDSAP256)
	if err != nil {
		t.Fatalf("generating the bootstrap key: %v", err)
	}
	boot := c.issue(name, bk.Public(), time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour))
	d.bootID = protocol.CertificateID(boot.Raw)
	d.bootKey = bootURI
	finalCSR := ""
	if o.preProvisioned {
		pk, err := keystore.Generate(ctx, preURI, keystore.ECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, pk)
		if err != nil {
			t.Fatal(err)
		}
		finalCSR = b64.StdEncoding.EncodeToString(der)
		keystore.CloseSigner(pk)
	}
	keystore.CloseSigner(bk)
	attCols := ""
	if o.enrol != nil {
		attCols = o.enrol(bootURI)
	}
	tpm.CloseAll() // swtpm serves one client: bootcertd's
	if o.kind == onTPM2PKCS11 {
		pkcs11.CloseAll() // the same for the tpm2-pkcs11 module's TPM connection
	}
	bootFile := filepath.Join(d.dir, "bootstrap.pem")
	os.WriteFile(bootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: boot.Raw}), 0o600)
	caFile := filepath.Join(d.dir, "server-ca.pem")
	os.WriteFile(caFile, c.lab.ServerCAPEM(), 0o600)
	if !o.notAllowed {
		c.allowDevice(name + "," + d.bootID + "," + finalCSR + attCols)
	}
	host, port := splitHostPort(c.lab.Endpoints().MQTT)
	portN, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("lab MQTT endpoint %q: %v", c.lab.Endpoints().MQTT, err)
	}
	cfg := config.Defaults()
	cfg.Broker = config.Broker{Endpoint: host, Port: portN, RootCA: caFile}
	if o.alpn {
		cfg.Broker.ALPN = config.ALPN
	}
	cfg.Identity.BootstrapKey, cfg.Identity.BootstrapCert, cfg.Identity.OperationalKey = bootURI, bootFile, opURI
	if o.preProvisioned {
		cfg.Identity.Mode, cfg.Identity.PreProvisioned = config.ModePreProvisioned, preURI
	}
	cfg.State.Dir = d.state
	cfg.Timeouts = config.Timeouts{Connect: config.Duration(5 * time.Second), Reply: config.Duration(10 * time.Second),
		KeepAlive: config.Duration(30 * time.Second), Shutdown: config.Duration(time.Second)}
	cfg.Backoff.Initial, cfg.Backoff.Max = config.Duration(50*time.Millisecond), config.Duration(500*time.Millisecond)
	cfg.Fallback.Refusals, cfg.Fallback.Window = 3, config.Duration(time.Minute)
	cfg.Control.Socket = d.sock
	// the identity export and hooks stay in the test's directory, never
	// the system's /run/bootcert/identity and /etc/bootcert/hooks.d
	cfg.Export.Dir, cfg.Export.HooksDir = filepath.Join(d.dir, "identity"), filepath.Join(d.dir, "hooks.d")
	cfg.Log.Level = "debug"
	if o.configure != nil {
		o.configure(&cfg)
	}
	var conf bytes.Buffer
	if err := toml.NewEncoder(&conf).Encode(cfg); err != nil {
		t.Fatalf("encoding the test configuration: %v", err)
	}
	d.cfgPath = filepath.Join(d.dir, "bootcertd.toml")
	os.WriteFile(d.cfgPath, conf.Bytes(), 0o600)
	return d
}

func splitHostPort(hp string) (string, string) {
	i := strings.LastIndex(hp, ":")
	return hp[:i], hp[i+1:]
}

type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (d *device) start() {
	d.t.Helper()
	bin := bootcertd
	if d.binary != "" {
		bin = d.binary
	}
	d.cmd = exec.Command(bin, "--config", d.cfgPath)
	w := syncWriter{&d.logMu, d.log}
	d.cmd.Stdout, d.cmd.Stderr = w, w
	d.cmd.Env = append(os.Environ(), "GOTRACEBACK=all")
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	cmd, exited := d.cmd, d.exited
	go func() { cmd.Wait(); close(exited) }()
	d.t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
}

func (d *device) Log() string { d.logMu.Lock(); defer d.logMu.Unlock(); return d.log.String() }

// kill sends SIGKILL and waits.
func (d *device) kill() {
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (d *device) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.t.Fatalf("bootcertd did not stop on SIGTERM:\n%s", d.Log())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Errorf("bootcertd exited %d after SIGTERM:\n%s", code, d.Log())
	}
}

func (d *device) status() (engine.Status, error) {
	c := &control.Client{Path: d.sock, Timeout: 2 * time.Second}
	return c.Status(context.Background())
}

// waitFor polls the control socket (a hang guard, not a timing assertion).
func (d *device) waitFor(what string, cond func(engine.Status) bool) engine.Status {
	d.t.Helper()
	var last engine.Status
	var lastErr error
	exited := false
	if testkit.Poll(60*time.Second, func() bool {
		select {
		case <-d.exited:
			exited = true
			return true
		default:
		}
		last, lastErr = d.status()
		return lastErr == nil && cond(last)
	}) {
		if exited {
			d.t.Fatalf("bootcertd exited while waiting for %s:\n%s", what, d.Log())
		}
		return last
	}
	// a goroutine dump of the stuck daemon (SIGQUIT: the Go runtime
	// prints every goroutine to stderr, which d.log captures)
	d.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
	}
	d.t.Fatalf("timed out waiting for %s: status %+v (%v)\nlog:\n%s", what, last, lastErr, tail(d.Log(), 2000))
	return last
}

func tail(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "flushed stale handles") {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

type engineStatus = engine.Status

func operational(gen int) func(engine.Status) bool {
	return func(s engine.Status) bool {
		return s.Phase == "idle" && s.Connection == "connected" && s.ConnectedWith == gen && s.Active.Generation == gen
	}
}
