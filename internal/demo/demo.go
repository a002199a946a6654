// Package demo runs bootcert's main job end to end on one machine, with
// the real programs: swtpm as the gateway's TPM, bootcert-lab (with
// cloud/template.yaml) as AWS IoT Core, bootcertctl for the factory,
// bootcert-admin for the cloud setup, and bootcertd. It narrates each step with its time, taken
// from what it observes (the lab's JSON log, bootcertd's log, the journal
// file, the lab's IoT API), and stops everything it started at the end.
// `make demo [SCENARIO=default|rollback|crash|fleet-provisioning]` runs it through
// scripts/demo.sh and internal/demo/cmd; docs/demo.md shows transcripts.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/atomicfile"
)

// Scenarios are the names Options.Scenario accepts.
var Scenarios = []string{"default", "rollback", "crash", FleetProvisioning}

// Thing is the demo device's ID (thing name, bootstrap certificate CN).
const Thing = "gw-demo-0001"

// Bucket is the stack bucket cloud/template.yaml makes in the lab's
// account and region.
const Bucket = "bootcert-123456789012-us-east-1"

// Options configure a run.
type Options struct {
	Scenario string // default, rollback, crash or fleet-provisioning ("" = default)
	Bin      string // directory holding bootcertd, bootcertctl, bootcert-admin and bootcert-lab
	Template string // the SAM template (cloud/template.yaml)
	Dir      string // work directory; "" = a new temporary directory
	Keep     bool   // keep the work directory
	Out      io.Writer
	// Wait bounds each wait for an observed state (a hang guard, not a
	// timing goal; default 60s).
	Wait time.Duration
	Now  func() time.Time
}

// Kill is one SIGKILL of the crash scenario.
type Kill struct {
	Target  journal.Phase // the phase the demo waited for
	Seen    bool          // false: the phase was not observed before the kill
	Journal journal.Entry // the journal right after the kill
}

// Result is the final state, as observed.
type Result struct {
	Dir               string
	BootstrapID       string
	BootstrapStatus   string        // DescribeCertificate of the bootstrap certificate
	Status            engine.Status // bootcertctl status --json at the end
	StatusText        string        // bootcertctl status
	ActiveCertStatus  string        // DescribeCertificate of the active certificate
	JobStatus         string        // DescribeJobExecution bootcert-rotation
	OperationalKeys   []string      // op-*.tpmkey files left in the device's key directory
	Refusals          int           // CONNECTs refused by fault injection
	RefusedCerts      []string      // certificates refused by fault injection
	RefusedCertsGone  bool          // all of them deleted from the registry
	Kills             []Kill
	RotationsAsked    int // renewals the crash scenario asked for
	KeyInfo           string
	JournalPhasesSeen []journal.Phase
	// Scenario fleet-provisioning: the claim certificate, the certificate
	// RegisterThing activated (generation 1), the hook's refusals and the
	// thing's attributes at the end; the CA certificates registered in the
	// lab (none: the scenario's maker has no factory CA).
	CACertificates    int               `json:",omitempty"`
	ClaimID           string            `json:",omitempty"`
	ClaimStatus       string            `json:",omitempty"`
	ProvisionedID     string            `json:",omitempty"`
	ProvisionedStatus string            `json:",omitempty"`
	HookRefusals      int               `json:",omitempty"`
	ThingAttributes   map[string]string `json:",omitempty"`
	// PIDs of every process the run started (all stopped when Run returns).
	PIDs map[string][]int
}

// WriteResult writes res as JSON, atomically.
func WriteResult(path string, res *Result) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the result %s: %w", path, err)
	}
	return nil
}

// run is one demo run's state.
type run struct {
	o   Options
	n   *narrator
	dir string

	swtpm, lab, daemon *proc
	labLog, daemonLog  *logFile
	labW               *labWatcher
	jw                 *journalWatcher
	jwStop             chan struct{}

	tpm       string // keystore device: tcp:127.0.0.1:PORT
	endpoints lab.Endpoints
	api       *iot.Client
	http      *http.Client
	res       *Result
}

// Run runs a scenario. On failure the error says what failed and the tails
// of the lab's and bootcertd's logs are printed to Out.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Scenario == "" {
		o.Scenario = "default"
	}
	if !validScenario(o.Scenario) {
		return nil, fmt.Errorf("unknown scenario %q (want one of %s)", o.Scenario, strings.Join(Scenarios, ", "))
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Wait <= 0 {
		o.Wait = 60 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := checkPrograms(o); err != nil {
		return nil, err
	}
	r := &run{o: o, dir: o.Dir, res: &Result{PIDs: map[string][]int{}}}
	if r.dir == "" {
		d, err := os.MkdirTemp("", "bootcert-demo-")
		if err != nil {
			return nil, fmt.Errorf("creating the work directory: %w", err)
		}
		r.dir = d
	} else if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the work directory: %w", err)
	}
	r.res.Dir = r.dir
	fmt.Fprintf(o.Out, "bootcert demo, scenario %s, in %s\n", o.Scenario, r.dir)
	r.n = newNarrator(o.Out, o.Now)
	err := r.steps(ctx)
	if err != nil {
		r.n.sync()
		r.report(err)
	}
	r.cleanup()
	r.n.close()
	if o.Keep {
		fmt.Fprintf(o.Out, "kept %s (lab.log, bootcertd.log, state/, device/, factory/)\n", r.dir)
	} else {
		os.RemoveAll(r.dir)
	}
	if err != nil {
		return r.res, err
	}
	return r.res, nil
}

func validScenario(s string) bool {
	for _, v := range Scenarios {
		if v == s {
			return true
		}
	}
	return false
}

func checkPrograms(o Options) error {
	for _, p := range []string{"bootcertd", "bootcertctl", "bootcert-admin", "bootcert-lab"} {
		if _, err := os.Stat(filepath.Join(o.Bin, p)); err != nil {
			return fmt.Errorf("%s not found in %s (make build): %w", p, o.Bin, err)
		}
	}
	if _, err := exec.LookPath("swtpm"); err != nil {
		return fmt.Errorf("swtpm not found in PATH (make deps installs it): %w", err)
	}
	if _, err := os.Stat(o.Template); err != nil {
		return fmt.Errorf("template %s: %w", o.Template, err)
	}
	return nil
}

func (r *run) path(p ...string) string { return filepath.Join(append([]string{r.dir}, p...)...) }

func (r *run) steps(ctx context.Context) error {
	for _, d := range []string{"tpm", "lab", "factory", "device/keys", "state"} {
		if err := os.MkdirAll(r.path(d), 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	var err error
	if r.labLog, err = newLogFile(r.path("lab.log")); err != nil {
		return err
	}
	if r.daemonLog, err = newLogFile(r.path("bootcertd.log")); err != nil {
		return err
	}
	if err := r.startSWTPM(); err != nil {
		return err
	}
	if err := r.startLab(); err != nil {
		return err
	}
	if r.fleet() {
		if err := r.claimFactory(ctx); err != nil {
			return err
		}
		if err := r.claimSetup(ctx); err != nil {
			return err
		}
	} else {
		if err := r.factory(ctx); err != nil {
			return err
		}
		if err := r.cloudSetup(ctx); err != nil {
			return err
		}
	}
	if err := r.writeConfig(); err != nil {
		return err
	}
	r.jwStop = make(chan struct{})
	r.jw = &journalWatcher{n: r.n, path: r.path("state", journal.FileName)}
	go r.jw.run(r.jwStop)
	switch r.o.Scenario {
	case "rollback":
		err = r.rollback(ctx)
	case "crash":
		err = r.crash(ctx)
	case FleetProvisioning:
		err = r.fleetProvision(ctx)
	default:
		err = r.rotate(ctx)
	}
	if err != nil {
		return err
	}
	return r.finish(ctx)
}

func (r *run) startSWTPM() error {
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePortPair()
		if err != nil {
			return err
		}
		out := &lineWriter{fn: func(l string) { r.labLog.add("swtpm: " + l) }}
		p, err := r.startProc("swtpm", out, "swtpm", "socket", "--tpm2",
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--tpmstate", "dir="+r.path("tpm"), "--flags", "not-need-init,startup-clear")
		if err != nil {
			return err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		if last = waitListening(p, addr, 5*time.Second); last == nil {
			r.swtpm = p
			r.tpm = "tcp:" + addr
			r.n.say("swtpm started (pid %d): the gateway's TPM 2.0 on %s, state in %s", p.pid(), addr, r.path("tpm"))
			return nil
		}
		p.stop(syscall.SIGKILL, time.Second)
	}
	return fmt.Errorf("starting swtpm: %w", last)
}

func (r *run) startLab() error {
	r.labW = newLabWatcher(r.n)
	ready := make(chan lab.Endpoints, 1)
	out := &lineWriter{fn: func(l string) {
		var ep lab.Endpoints
		if strings.HasPrefix(l, "{\"mqtt\"") && json.Unmarshal([]byte(l), &ep) == nil {
			select {
			case ready <- ep:
			default:
			}
		}
		r.labLog.add(l)
		r.labW.onLine(l)
	}}
	p, err := r.startProc("bootcert-lab", out, filepath.Join(r.o.Bin, "bootcert-lab"), "serve", "--data", r.path("lab"),
		"--mqtt", "127.0.0.1:0", "--api", "127.0.0.1:0", "--s3", "127.0.0.1:0", "--template", r.o.Template)
	if err != nil {
		return err
	}
	r.lab = p
	select {
	case r.endpoints = <-ready:
	case <-p.done:
		return fmt.Errorf("bootcert-lab exited (code %d) before printing its endpoints", p.cmd.ProcessState.ExitCode())
	case <-time.After(r.o.Wait):
		return fmt.Errorf("bootcert-lab printed no endpoints within %s", r.o.Wait)
	}
	cfg := lab.ClientConfig(readFileOrNil(r.endpoints.ServerCA), r.endpoints.Region)
	r.http = cfg.HTTPClient.(*http.Client)
	r.api = iot.NewFromConfig(cfg, func(o *iot.Options) { o.BaseEndpoint = aws.String(r.endpoints.API) })
	r.n.say("bootcert-lab started (pid %d) with %s: MQTT %s, API %s, S3 %s", p.pid(), filepath.Base(r.o.Template), r.endpoints.MQTT, r.endpoints.API, r.endpoints.S3)
	return nil
}

// startProc starts a program and records its PID in the result.
func (r *run) startProc(name string, out io.Writer, path string, args ...string) (*proc, error) {
	p, err := startProc(name, out, path, args...)
	if err == nil {
		r.res.PIDs[name] = append(r.res.PIDs[name], p.pid())
	}
	return p, err
}

func readFileOrNil(p string) []byte {
	b, _ := os.ReadFile(p)
	return b
}

// ctl runs bootcertctl and returns its standard output.
func (r *run) ctl(ctx context.Context, args ...string) (string, error) {
	return r.tool(ctx, "bootcertctl", args...)
}

// admin runs bootcert-admin (the account tool) and returns its standard
// output.
func (r *run) admin(ctx context.Context, args ...string) (string, error) {
	return r.tool(ctx, "bootcert-admin", args...)
}

func (r *run) tool(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(r.o.Bin, name), args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, args[0], err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (r *run) caKey() string { return "file:" + r.path("factory", "ca", "ca.key") }

func (r *run) keyURI(name string) string {
	return "tpm:device=" + r.tpm + ";blob=" + r.path("device", "keys", name)
}

func (r *run) factory(ctx context.Context) error {
	if _, err := r.ctl(ctx, "ca", "create", "--out", r.path("factory", "ca"), "--cn", "Demo Factory CA", "--key", r.caKey()); err != nil {
		return err
	}
	r.n.say("factory CA created: %s (key in a file here; a station keeps it in its HSM, docs/factory.md)", r.path("factory", "ca", "ca.pem"))
	out, err := r.ctl(ctx, "provision", "--device-id", Thing, "--key", r.keyURI("bootstrap.tpmkey"),
		"--cert-out", r.path("device", "bootstrap.pem"), "--ca-cert", r.path("factory", "ca", "ca.pem"), "--ca-key", r.caKey(),
		"--manifest", r.path("factory", "manifest.csv"))
	if err != nil {
		return err
	}
	var p struct {
		Status     string          `json:"status"`
		Backend    string          `json:"backend"`
		Algorithm  string          `json:"algorithm"`
		Hardware   bool            `json:"hardware"`
		Attributes map[string]bool `json:"attributes"`
		Bootstrap  string          `json:"bootstrap_sha256"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		return fmt.Errorf("bootcertctl provision printed no JSON: %w", err)
	}
	if !p.Hardware || p.Backend != "tpm" {
		return fmt.Errorf("bootcertctl provision: the bootstrap key is not in the TPM (backend %s, hardware %v)", p.Backend, p.Hardware)
	}
	r.res.BootstrapID = p.Bootstrap
	r.labW.boot = p.Bootstrap
	var attrs []string
	for _, a := range []string{"fixedTPM", "fixedParent", "sensitiveDataOrigin"} {
		if p.Attributes[a] {
			attrs = append(attrs, a)
		}
	}
	r.n.say("provisioned %s: %s bootstrap key generated in the TPM (%s), certificate %s signed by the factory CA, manifest line written",
		Thing, p.Algorithm, strings.Join(attrs, ", "), short(p.Bootstrap))
	return nil
}

func (r *run) cloudSetup(ctx context.Context) error {
	out, err := r.admin(ctx, "cloud", "setup", "--json", "--lab", r.path("lab"), "--bucket", Bucket,
		"--ca-cert", r.path("factory", "ca", "ca.pem"), "--ca-key", r.caKey(), "--allow-list", r.path("factory", "manifest.csv"))
	if err != nil {
		return err
	}
	var s struct {
		CACertificateID string   `json:"caCertificateId"`
		Uploaded        []string `json:"uploaded"`
		JobID           string   `json:"jobId"`
	}
	json.Unmarshal([]byte(out), &s)
	r.n.say("bootcert-admin cloud setup: factory CA %s registered (auto-registration on), allow list uploaded, JOB_EXECUTION events on, continuous job %s created",
		short(s.CACertificateID), s.JobID)
	return nil
}

func (r *run) writeConfig() error {
	host, port := splitHostPort(r.endpoints.MQTT)
	conf := fmt.Sprintf(`# written by make demo
[broker]
endpoint = %q
port = %s
root_ca = %q

%s
[state]
dir = %q

[timeouts]
connect = "5s"
reply = "10s"
keepalive = "30s"
shutdown = "2s"

[backoff]
initial = "100ms"
max = "1s"

[fallback]
refusals = 3
window = "1m"

[control]
socket = %q

[export]
dir = %q
hooks_dir = %q

[log]
level = "info"
`, host, port, r.endpoints.ServerCA, r.identityConfig(), r.path("state"), r.path("control.sock"), r.path("identity"), r.path("hooks.d"))
	if err := os.WriteFile(r.path("bootcertd.toml"), []byte(conf), 0o600); err != nil {
		return fmt.Errorf("writing bootcertd.toml: %w", err)
	}
	out, err := exec.Command(filepath.Join(r.o.Bin, "bootcertd"), "--check-config", r.path("bootcertd.toml")).CombinedOutput()
	if err != nil {
		return fmt.Errorf("bootcertd --check-config %s: %w: %s", r.path("bootcertd.toml"), err, strings.TrimSpace(string(out)))
	}
	r.n.say("bootcertd.toml written (TPM %s, broker %s, root CA = the lab's server-ca.pem) and checked", r.tpm, r.endpoints.MQTT)
	return nil
}

func splitHostPort(hp string) (string, string) {
	i := strings.LastIndex(hp, ":")
	return hp[:i], hp[i+1:]
}

func (r *run) startDaemon() error {
	out := &lineWriter{fn: func(l string) {
		r.daemonLog.add(l)
		deviceWatcher{n: r.n}.onLine(l)
	}}
	p, err := r.startProc("bootcertd", out, filepath.Join(r.o.Bin, "bootcertd"), "--config", r.path("bootcertd.toml"))
	if err != nil {
		return err
	}
	r.daemon = p
	return nil
}

func (r *run) status(ctx context.Context) (engine.Status, error) {
	c := &control.Client{Path: r.path("control.sock"), Timeout: 2 * time.Second}
	return c.Status(ctx)
}

// waitFor polls until cond holds (every 20 ms, at most Options.Wait).
func (r *run) waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(r.o.Wait)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		if r.daemon != nil && r.daemon.exited() {
			return fmt.Errorf("waiting for %s: bootcertd exited (code %d)", what, r.daemon.cmd.ProcessState.ExitCode())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if last != nil {
		return fmt.Errorf("%s not observed within %s: %w", what, r.o.Wait, last)
	}
	return fmt.Errorf("%s not observed within %s", what, r.o.Wait)
}

func (r *run) certStatus(ctx context.Context, id string) (string, error) {
	out, err := r.api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		var nf *types.ResourceNotFoundException
		if errors.As(err, &nf) {
			return "DELETED", nil
		}
		return "", fmt.Errorf("DescribeCertificate %s: %w", short(id), err)
	}
	return string(out.CertificateDescription.Status), nil
}

// jobStatus is the status of the thing's last rotation job (thing
// attribute rotationJob, set by the renewal function), else of the
// continuous job.
func (r *run) jobStatus(ctx context.Context) (string, error) {
	job := "bootcert-rotation"
	if th, err := r.api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(Thing)}); err == nil && th.Attributes["rotationJob"] != "" {
		job = th.Attributes["rotationJob"]
	}
	out, err := r.api.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String(job), ThingName: aws.String(Thing)})
	if err != nil {
		return "", fmt.Errorf("DescribeJobExecution %s %s: %w", job, Thing, err)
	}
	return string(out.Execution.Status), nil
}

// report prints what failed and the tails of the logs.
func (r *run) report(err error) {
	fmt.Fprintf(r.o.Out, "\nFAILED: %v\n", err)
	for _, l := range []struct {
		name string
		f    *logFile
	}{{"bootcert-lab", r.labLog}, {"bootcertd", r.daemonLog}} {
		if l.f == nil {
			continue
		}
		fmt.Fprintf(r.o.Out, "\n--- last lines of the %s log ---\n", l.name)
		for _, line := range l.f.last(30) {
			fmt.Fprintln(r.o.Out, line)
		}
	}
	if d, e := os.ReadFile(r.path("state", journal.FileName)); e == nil {
		fmt.Fprintf(r.o.Out, "\n--- journal ---\n%s\n", d)
	}
}

// cleanup stops everything the run started, by PID.
func (r *run) cleanup() {
	if r.jwStop != nil {
		close(r.jwStop)
		r.jwStop = nil
	}
	if r.http != nil {
		r.http.CloseIdleConnections()
	}
	for _, p := range []*proc{r.daemon, r.lab, r.swtpm} {
		if p == nil || p.exited() {
			continue
		}
		t0 := time.Now()
		code := p.stop(syscall.SIGTERM, 10*time.Second)
		r.n.say("stopped %s (pid %d): SIGTERM, exit code %d after %s", p.name, p.pid(), code, time.Since(t0).Round(time.Millisecond))
	}
	r.n.sync()
	for _, l := range []*logFile{r.labLog, r.daemonLog} {
		if l != nil {
			l.close()
		}
	}
}
