// Package storm is the fleet power-on storm harness (issue 15): N simulated
// gateways, each running the real rotation engine (daemon/engine) over its
// own MQTT/TLS session (daemon/session), with software keys behind a
// simulated TPM latency, are powered on within a window against the lab
// started with the real template (cloud/template.yaml, functions built from
// it) and a quota preset. It measures how long the fleet takes until every
// device has committed its first operational certificate, against the
// bound the quotas set.
//
// The lab runs in this process (its API logs are counted per operation and
// outcome); the template's functions are the lab's (built from the
// template). CPU and memory are this process's and its children's: lab,
// functions and devices together.
package storm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lab/limits"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/session"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/keystore"
	_ "github.com/bootcert/bootcert/keystore/file"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Options configure a storm.
type Options struct {
	Devices int           // N
	Window  time.Duration // power-on times spread uniformly over it
	// Scale multiplies every rate of the aws-default preset (a time-scaled
	// preset: efficiency is a ratio, so it is unchanged); 0 means 1.
	Scale float64
	// Limits, when not nil, replaces the scaled aws-default preset.
	Limits *limits.Limits
	// Simulated key-operation latency (a TPM): per key generation and per
	// signature, serialised per device like one TPM.
	Keygen, Sign time.Duration
	// Timeout bounds the storm after the first power-on.
	Timeout time.Duration
	// Template is cloud/template.yaml.
	Template string
	// Dir holds the lab's data and the devices' state; "" makes a
	// temporary directory removed afterwards.
	Dir string
	// FunctionWorkers is the in-process lab's concurrency of a function
	// without reserved concurrency in the template, and of republish
	// actions (activator, vendor and renewal run at their
	// ReservedConcurrentExecutions); 0 means 16.
	FunctionWorkers int
	// LabBinary, when set, runs the lab as that bootcert-lab binary
	// (serve, its default of 8 function workers) instead of in this
	// process, so that the lab's CPU and memory are measured alone.
	LabBinary string
	// Progress, if not nil, gets a line every few seconds.
	Progress io.Writer
	// ScaleDevices divides the devices' own waits (reply timeout, the
	// reconnect and retry backoff) by Scale too, so that a time-scaled
	// run is the unscaled storm replayed faster: without it a device's
	// 5-minute backoff cap weighs three times as much against a ×3
	// quota as it would against the real one. The simulated TPM
	// latencies are not scaled (they are the device's, in parallel).
	ScaleDevices bool
	// StopWait bounds each step of the shutdown after the storm (the
	// devices' engines, the lab); 0 means one minute. A step that takes
	// longer is left running: its goroutines are written to a file
	// (Result.GoroutineDump) and the figures are reported anyway.
	StopWait time.Duration
}

// Result is what a storm measured.
type Result struct {
	Devices   int
	Committed int
	Lost      []string // never connected with the bootstrap certificate
	Stuck     []string // connected but not operational by the timeout
	Scale     float64
	Window    time.Duration
	Workers   int // the lab's function concurrency
	// ScaleDevices: the devices' waits were divided by Scale.
	ScaleDevices bool

	Elapsed     time.Duration   // first power-on until the last commit (or the timeout)
	PerDevice   []time.Duration // power-on to operational, committed devices
	Bound       time.Duration   // the largest per-API bound
	BoundAPI    string
	Calls       map[string]*OpCount    // by operation ("connect" for MQTT CONNECTs)
	Rates       map[string]float64     // the limits applied, by operation
	CertsIssued map[string]int         // operational certificates attached per thing
	MaxWindow   map[string]float64     // highest accepted calls in any 1 s window, by operation
	PerSecond   map[string]map[int]int // accepted calls by operation and second of the storm (as logged)
	Timeline    []Sample               // one per second

	CPU      time.Duration // user+system of this process and its children during the storm
	Wall     time.Duration
	MaxRSS   int64 // bytes, this process
	HeapPeak uint64
	LoadAvg  string // /proc/loadavg before the storm
	// The lab's own, when it ran as a separate process (LabBinary).
	LabCPU             time.Duration
	LabRSS, LabPeakRSS int64

	// The shutdown: how long the devices' engines took to return after
	// the storm was cancelled, how many had not returned by StopWait, and
	// the goroutine dump written then.
	StopTime      time.Duration
	Unstopped     int
	GoroutineDump string
}

// OpCount counts one operation's calls.
type OpCount struct {
	OK, Throttled, Other int
}

// Sample is the state at one second of the storm.
type Sample struct {
	At        time.Duration
	Committed int
	Throttles map[string]int // in this second
}

// Run runs one storm.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Devices <= 0 {
		return nil, errors.New("storm: Devices must be > 0")
	}
	if o.Scale == 0 {
		o.Scale = 1
	}
	if o.FunctionWorkers == 0 {
		o.FunctionWorkers = 16
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.StopWait == 0 {
		o.StopWait = time.Minute
	}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "bootcert-storm-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	lim := limits.AWSDefault().Scaled(o.Scale)
	if o.Limits != nil {
		lim = *o.Limits
	}
	limPath := filepath.Join(dir, "limits.json")
	lj, _ := json.Marshal(lim)
	if err := os.WriteFile(limPath, lj, 0o600); err != nil {
		return nil, err
	}
	counter := newCounter()
	labDir := filepath.Join(dir, "lab")
	var l labHandle
	labPID := 0
	if o.LabBinary != "" {
		p, err := startLabProc(ctx, o.LabBinary, labDir, o.Template, limPath, counter)
		if err != nil {
			return nil, err
		}
		l, labPID = p, p.cmd.Process.Pid
		o.FunctionWorkers = 8 // bootcert-lab serve's
	} else {
		il, err := lab.Start(ctx, lab.Config{DataDir: labDir, TemplatePath: o.Template, LimitsPath: limPath,
			MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
			WriteBehind: 200 * time.Millisecond, FunctionWorkers: o.FunctionWorkers, FunctionQueue: max(4096, 4*o.Devices),
			Logger: slog.New(counter)})
		if err != nil {
			return nil, fmt.Errorf("starting the lab: %w", err)
		}
		l = il
	}
	defer func() {
		if !bounded(o.StopWait, l.Close) {
			path, _ := dumpGoroutines("lab-close")
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "closing the lab took longer than %s; left running (goroutines: %s)\n", o.StopWait, path)
			}
		}
	}()
	ca, caKey, err := setupCloud(ctx, l, o.Template)
	if err != nil {
		return nil, err
	}
	devs, err := makeDevices(ctx, l, dir, o, ca, caKey)
	if err != nil {
		return nil, err
	}
	res := &Result{Devices: o.Devices, Scale: o.Scale, Window: o.Window, Workers: o.FunctionWorkers, ScaleDevices: o.ScaleDevices, Calls: map[string]*OpCount{}, Rates: map[string]float64{},
		CertsIssued: map[string]int{}, MaxWindow: map[string]float64{}, LoadAvg: loadavg()}
	counter.reset()
	cpu0 := cpuTime()
	labCPU0, _, _ := procStat(labPID)
	start := time.Now()
	counter.start(start)
	runCtx, cancel := context.WithTimeout(ctx, o.Timeout+o.Window)
	defer cancel()
	var wg sync.WaitGroup
	var running atomic.Int64
	for i, d := range devs {
		at := time.Duration(0)
		if o.Devices > 1 {
			at = o.Window * time.Duration(i) / time.Duration(o.Devices-1)
		}
		wg.Add(1)
		running.Add(1)
		go func() {
			defer wg.Done()
			defer running.Add(-1)
			d.run(runCtx, start.Add(at))
		}()
	}
	// watch
	var heapPeak uint64
	tick := time.NewTicker(time.Second)
	done := false
	for !done {
		select {
		case <-runCtx.Done():
			done = true
		case <-tick.C:
			n := 0
			for _, d := range devs {
				if d.committed() {
					n++
				}
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			heapPeak = max(heapPeak, ms.HeapAlloc)
			res.Timeline = append(res.Timeline, Sample{At: time.Since(start).Truncate(time.Second), Committed: n, Throttles: counter.throttlesSince()})
			if o.Progress != nil {
				conn := 0
				for _, d := range devs {
					if d.everConnected() {
						conn++
					}
				}
				fmt.Fprintf(o.Progress, "%5.0fs connected %d committed %d/%d accepted %v throttled %v\n", time.Since(start).Seconds(), conn, n, o.Devices, counter.okTotals(), counter.throttleTotals())
			}
			if n == o.Devices {
				done = true
			}
		}
	}
	tick.Stop()
	last := start
	for _, d := range devs {
		if t, ok := d.doneAt(); ok {
			res.Committed++
			res.PerDevice = append(res.PerDevice, t.Sub(d.powerOn))
			if t.After(last) {
				last = t
			}
		} else if d.everConnected() {
			res.Stuck = append(res.Stuck, d.thing)
		} else {
			res.Lost = append(res.Lost, d.thing)
		}
	}
	res.Elapsed = last.Sub(start)
	if res.Committed < o.Devices {
		res.Elapsed = time.Since(start)
	}
	res.Wall = time.Since(start)
	res.CPU = cpuTime() - cpu0
	if labPID != 0 {
		c, rss, hwm := procStat(labPID)
		res.LabCPU, res.LabRSS, res.LabPeakRSS = c-labCPU0, rss, hwm
	}
	res.HeapPeak = heapPeak
	res.MaxRSS = maxRSS()
	cancel()
	stopStart := time.Now()
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	for waited := false; !waited; {
		select {
		case <-stopped:
			waited = true
		case <-time.After(5 * time.Second):
			if time.Since(stopStart) >= o.StopWait {
				res.Unstopped = int(running.Load())
				res.GoroutineDump, _ = dumpGoroutines("devices-stop")
				waited = true
			}
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "stopping: %d of %d engines still running after %s\n", running.Load(), o.Devices, time.Since(stopStart).Round(time.Second))
			}
		}
	}
	res.StopTime = time.Since(stopStart)
	sort.Slice(res.PerDevice, func(i, j int) bool { return res.PerDevice[i] < res.PerDevice[j] })

	res.Calls, res.MaxWindow, res.PerSecond = counter.snapshot()
	for op := range res.Calls {
		if op == "connect" {
			res.Rates[op] = lim.ConnectsPerSecond
		} else {
			res.Rates[op] = lim.APIRate(op)
		}
	}
	// the bound: every API's accepted calls at its rate (the calls the
	// flow needs, as measured), the largest
	for op, c := range res.Calls {
		r := res.Rates[op]
		if r <= 0 || c.OK == 0 {
			continue
		}
		b := time.Duration(float64(c.OK) / r * float64(time.Second))
		if b > res.Bound {
			res.Bound, res.BoundAPI = b, op
		}
	}
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Minute)
	defer ccancel()
	res.CertsIssued, err = certsIssued(cctx, l, devs, o.Progress)
	if err != nil {
		return res, err
	}
	return res, nil
}

// AboveRate lists the operations whose accepted calls exceeded their
// rate: in some run of whole seconds i..j the lab accepted more than
// rate*(j-i+2) + max(1, rate) calls (the token bucket's burst is
// max(1, rate), and one extra second covers the time between the
// limiter's decision and the log line the calls are counted from).
func (r *Result) AboveRate() []string {
	var out []string
	for op, secs := range r.PerSecond {
		rate := r.Rates[op]
		if rate <= 0 || len(secs) == 0 {
			continue
		}
		last := 0
		for s := range secs {
			last = max(last, s)
		}
		prefix := make([]int, last+2)
		for s := 0; s <= last; s++ {
			prefix[s+1] = prefix[s] + secs[s]
		}
		worst, at := 0.0, ""
		for i := 0; i <= last; i++ {
			for j := i; j <= last; j++ {
				n := float64(prefix[j+1] - prefix[i])
				if over := n - (rate*float64(j-i+2) + math.Max(1, rate)); over > worst {
					worst, at = over, fmt.Sprintf("%s: %.0f accepted in seconds %d-%d at %g/s", op, n, i, j, rate)
				}
			}
		}
		if at != "" {
			out = append(out, at)
		}
	}
	sort.Strings(out)
	return out
}

// Efficiency is bound / measured.
func (r *Result) Efficiency() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return r.Bound.Seconds() / r.Elapsed.Seconds()
}

// Percentile of the per-device time to operational.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.PerDevice) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(r.PerDevice)))) - 1 // p = 0: the minimum
	return r.PerDevice[max(0, min(i, len(r.PerDevice)-1))]
}

// Print writes the figures as a table.
func (r *Result) Print(w io.Writer) {
	dev := "devices' reply timeout and backoff unscaled"
	if r.ScaleDevices {
		dev = fmt.Sprintf("devices' reply timeout and backoff /%g", r.Scale)
	}
	fmt.Fprintf(w, "storm: %d devices powered on within %s, aws-default quotas x%g (%s)\n", r.Devices, r.Window, r.Scale, dev)
	fmt.Fprintf(w, "load average before: %s\n", r.LoadAvg)
	fmt.Fprintf(w, "| figure | value |\n|---|---|\n")
	fmt.Fprintf(w, "| committed | %d of %d |\n", r.Committed, r.Devices)
	fmt.Fprintf(w, "| lost (never connected) | %d %s |\n", len(r.Lost), short(r.Lost))
	fmt.Fprintf(w, "| stuck (connected, not operational) | %d %s |\n", len(r.Stuck), short(r.Stuck))
	fmt.Fprintf(w, "| time until all committed | %s |\n", r.Elapsed.Round(10*time.Millisecond))
	fmt.Fprintf(w, "| theoretical bound (largest calls/rate) | %s (%s) |\n", r.Bound.Round(10*time.Millisecond), r.BoundAPI)
	fmt.Fprintf(w, "| efficiency (bound / measured) | %.2f |\n", r.Efficiency())
	fmt.Fprintf(w, "| per-device power-on to operational | min %s, p50 %s, p99 %s, max %s |\n",
		r.Percentile(0).Round(10*time.Millisecond), r.Percentile(50).Round(10*time.Millisecond), r.Percentile(99).Round(10*time.Millisecond), r.Percentile(100).Round(10*time.Millisecond))
	twice := 0
	for _, n := range r.CertsIssued {
		if n > 1 {
			twice++
		}
	}
	fmt.Fprintf(w, "| devices with more than one operational certificate | %d |\n", twice)
	if r.LabPeakRSS > 0 {
		fmt.Fprintf(w, "| lab CPU (bootcert-lab process, functions included) | %s over %s wall (%.0f %% of one core) |\n",
			r.LabCPU.Round(10*time.Millisecond), r.Wall.Round(10*time.Millisecond), 100*r.LabCPU.Seconds()/r.Wall.Seconds())
		fmt.Fprintf(w, "| lab memory | RSS %d MiB at the end, peak %d MiB |\n", r.LabRSS>>20, r.LabPeakRSS>>20)
	}
	what := "lab + functions + devices, this process and children"
	if r.LabPeakRSS > 0 {
		what = "the harness: devices"
	}
	fmt.Fprintf(w, "| CPU (%s) | %s over %s wall (%.0f %% of one core) |\n", what,
		r.CPU.Round(10*time.Millisecond), r.Wall.Round(10*time.Millisecond), 100*r.CPU.Seconds()/r.Wall.Seconds())
	fmt.Fprintf(w, "| memory (this process) | max RSS %d MiB, peak Go heap %d MiB |\n", r.MaxRSS>>20, r.HeapPeak>>20)
	stop := r.StopTime.Round(10 * time.Millisecond).String()
	if r.Unstopped > 0 {
		stop += fmt.Sprintf("; %d engines had not returned (goroutines: %s)", r.Unstopped, r.GoroutineDump)
	}
	fmt.Fprintf(w, "| stopping the devices' engines | %s |\n", stop)
	fmt.Fprintf(w, "\n| operation | rate /s | accepted | throttled | other errors | per device | bound | max in 1 s |\n|---|---|---|---|---|---|---|---|\n")
	ops := make([]string, 0, len(r.Calls))
	for op := range r.Calls {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	for _, op := range ops {
		c, rate := r.Calls[op], r.Rates[op]
		b := "-"
		if rate > 0 {
			b = (time.Duration(float64(c.OK) / rate * float64(time.Second))).Round(10 * time.Millisecond).String()
		}
		rs := "unlimited"
		if rate > 0 {
			rs = fmt.Sprintf("%g", rate)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %.2f | %s | %.0f |\n", op, rs, c.OK, c.Throttled, c.Other, float64(c.OK)/float64(r.Devices), b, r.MaxWindow[op])
	}
}

func short(s []string) string {
	if len(s) == 0 {
		return ""
	}
	if len(s) > 5 {
		return "(" + strings.Join(s[:5], ", ") + ", ...)"
	}
	return "(" + strings.Join(s, ", ") + ")"
}

// setupCloud does what bootcertctl cloud setup and the factory do once:
// the factory CA registered with auto-registration, its PEM and an
// allow-list in the bucket, the continuous rotation job, job events on.
func setupCloud(ctx context.Context, l labHandle, tmplPath string) (*x509.Certificate, crypto.Signer, error) {
	cfg := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	cfg.RetryMaxAttempts = 20
	api := iot.NewFromConfig(cfg, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) })
	tmpl, err := template.Load(tmplPath, template.Options{})
	if err != nil {
		return nil, nil, err
	}
	var bucket string
	for _, b := range tmpl.Buckets {
		bucket = b
	}
	ca, key, err := newCA()
	if err != nil {
		return nil, nil, err
	}
	code, err := api.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil {
		return nil, nil, fmt.Errorf("GetRegistrationCode: %w", err)
	}
	vkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ver, err := issue(ca, key, aws.ToString(code.RegistrationCode), vkey.Public())
	if err != nil {
		return nil, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	if _, err := api.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(caPEM)),
		VerificationCertificate: aws.String(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ver.Raw}))),
		SetAsActive:             true, AllowAutoRegistration: true}); err != nil {
		return nil, nil, fmt.Errorf("RegisterCACertificate: %w", err)
	}
	if err := put(ctx, l, bucket, "trust/factory-ca.pem", caPEM); err != nil {
		return nil, nil, err
	}
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	if _, err := api.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bootcert-rotation"), Document: aws.String(string(doc)),
		Targets: []string{"arn:aws:iot:us-east-1:123456789012:thinggroup/bootcert-rotation"}, TargetSelection: types.TargetSelectionContinuous}); err != nil {
		return nil, nil, fmt.Errorf("CreateJob: %w", err)
	}
	if _, err := api.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"JOB_EXECUTION": {Enabled: true}}}); err != nil {
		return nil, nil, fmt.Errorf("UpdateEventConfigurations: %w", err)
	}
	allowBucket = bucket
	return ca, key, nil
}

var allowBucket string

func put(ctx context.Context, l labHandle, bucket, key string, body []byte) error {
	cfg := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.BaseEndpoint = aws.String(l.Endpoints().S3); o.UsePathStyle = true })
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(body)}); err != nil {
		return fmt.Errorf("PutObject %s: %w", key, err)
	}
	return nil
}

func newCA() (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "storm factory CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func issue(ca *x509.Certificate, caKey crypto.Signer, cn string, pub crypto.PublicKey) (*x509.Certificate, error) {
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(365 * 24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// certsIssued counts, per thing, the certificates attached to it other
// than its bootstrap certificate.
func certsIssued(ctx context.Context, l labHandle, devs []*device, progress io.Writer) (map[string]int, error) {
	out, err := certsIssuedFromState(ctx, l, devs)
	if err == nil {
		return out, nil
	}
	// The fallback runs at the storm's own ListThingPrincipals rate.
	if progress != nil {
		fmt.Fprintf(progress, "counting certificates with ListThingPrincipals per thing (GET /lab/state: %v)\n", err)
	}
	cfg := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	cfg.RetryMaxAttempts = 50
	api := iot.NewFromConfig(cfg, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) })
	out = map[string]int{}
	for _, d := range devs {
		if _, ok := d.doneAt(); !ok {
			continue
		}
		p, err := api.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String(d.thing)})
		if err != nil {
			return out, fmt.Errorf("ListThingPrincipals %s: %w", d.thing, err)
		}
		for _, arn := range p.Principals {
			if !strings.HasSuffix(arn, "/"+d.bootID) {
				out[d.thing]++
			}
		}
	}
	return out, nil
}

// device is one simulated gateway.
type device struct {
	thing   string
	bootID  string
	ecfg    engine.Config
	scfg    session.Config
	keys    *slowKeys
	powerOn time.Time

	mu        sync.Mutex
	connected bool
	done      time.Time
}

func makeDevices(ctx context.Context, l labHandle, dir string, o Options, ca *x509.Certificate, caKey crypto.Signer) ([]*device, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(l.ServerCAPEM())
	host, port := splitHostPort(l.Endpoints().MQTT)
	allow := []string{strings.Join(manifest.Header[:3], ",")}
	var devs []*device
	rot := config.DefaultRotation()
	// the devices' waits, time-scaled with the quotas (ScaleDevices)
	dscale := func(d time.Duration) time.Duration {
		if o.ScaleDevices && o.Scale > 0 {
			return time.Duration(float64(d) / o.Scale)
		}
		return d
	}
	for i := range o.Devices {
		thing := fmt.Sprintf("storm-%05d", i)
		ddir := filepath.Join(dir, "devices", thing)
		if err := os.MkdirAll(filepath.Join(ddir, "keys"), 0o700); err != nil {
			return nil, err
		}
		bootURI := "file:" + filepath.Join(ddir, "keys", "bootstrap.pem")
		bk, err := keystore.Generate(ctx, bootURI, keystore.ECDSAP256)
		if err != nil {
			return nil, fmt.Errorf("%s: bootstrap key: %w", thing, err)
		}
		boot, err := issue(ca, caKey, thing, bk.Public())
		keystore.CloseSigner(bk)
		if err != nil {
			return nil, err
		}
		bootID := protocol.CertificateID(boot.Raw)
		allow = append(allow, thing+","+bootID+",")
		opDir := filepath.Join(ddir, "keys")
		d := &device{thing: thing, bootID: bootID, keys: &slowKeys{keygen: o.Keygen, sign: o.Sign}}
		d.scfg = session.Config{Address: host + ":" + port, ServerName: host, RootCAs: pool, ClientID: thing,
			KeepAlive: 60 * time.Second, Timeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)}
		d.ecfg = engine.Config{Thing: thing, Endpoint: d.scfg.Address, BootstrapKey: bootURI, Bootstrap: []*x509.Certificate{boot},
			OperationalFn: func(gen int) string { return fmt.Sprintf("file:%s/op-%d.pem", opDir, gen) },
			Algorithm:     keystore.ECDSAP256, StateDir: filepath.Join(ddir, "state"),
			ReplyTimeout: dscale(30 * time.Second), Backoff: engine.Backoff{Initial: dscale(time.Second), Max: dscale(5 * time.Minute)},
			RollbackRefusals: 3, RollbackWindow: 10 * time.Minute, FallbackToBoot: true, ShutdownQuiesce: time.Second,
			PhaseSessions: rot.PhaseSessions, StableAfter: time.Minute, RequestInterval: rot.RequestInterval.D()}
		devs = append(devs, d)
	}
	if err := put(ctx, l, allowBucket, "trust/allow-list.csv", []byte(strings.Join(allow, "\n")+"\n")); err != nil {
		return nil, err
	}
	return devs, nil
}

func splitHostPort(hp string) (string, string) {
	i := strings.LastIndex(hp, ":")
	return hp[:i], hp[i+1:]
}

// dialer is the daemon's: session.Dial with the engine's credential; it
// records the first connection.
type dialer struct{ d *device }

func (dl dialer) Dial(ctx context.Context, c *engine.Credential) (engine.Conn, error) {
	s, err := session.Dial(ctx, dl.d.scfg, session.Credential{Chain: c.ChainDER(), Signer: c.Signer})
	if err != nil {
		return nil, err
	}
	dl.d.mu.Lock()
	dl.d.connected = true
	dl.d.mu.Unlock()
	return s, nil
}

func (d *device) run(ctx context.Context, at time.Time) {
	select {
	case <-time.After(time.Until(at)):
	case <-ctx.Done():
		return
	}
	d.powerOn = time.Now()
	eng, err := engine.New(d.ecfg, dialer{d}, d.keys, nil, clock.Real{}, slog.New(slog.DiscardHandler))
	if err != nil {
		return
	}
	eng.OnStatus(func(s engine.Status) {
		if s.Phase == "idle" && s.Connection == "connected" && s.Active.Generation >= 1 && s.ConnectedWith == s.Active.Generation {
			d.mu.Lock()
			if d.done.IsZero() {
				d.done = time.Now()
			}
			d.mu.Unlock()
		}
	})
	_ = eng.Run(ctx)
}

func (d *device) committed() bool { _, ok := d.doneAt(); return ok }

func (d *device) doneAt() (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done, !d.done.IsZero()
}

func (d *device) everConnected() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.connected
}

// slowKeys is the keystore with a simulated TPM's latency: each key
// generation and each signature takes at least keygen / sign, one at a
// time per device.
type slowKeys struct {
	keygen, sign time.Duration
	mu           sync.Mutex // one TPM
}

func (k *slowKeys) Open(ctx context.Context, uri string) (crypto.Signer, error) {
	s, err := keystore.Open(ctx, uri)
	if err != nil {
		return nil, err
	}
	return &slowSigner{Signer: s, k: k}, nil
}

func (k *slowKeys) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error) {
	k.mu.Lock()
	time.Sleep(k.keygen)
	s, err := keystore.Generate(ctx, uri, alg)
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return &slowSigner{Signer: s, k: k}, nil
}

func (k *slowKeys) Delete(ctx context.Context, uri string) error { return keystore.Delete(ctx, uri) }

type slowSigner struct {
	crypto.Signer
	k *slowKeys
}

func (s *slowSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	time.Sleep(s.k.sign)
	return s.Signer.Sign(r, digest, opts)
}

// Close closes the underlying signer when it has a Close method.
func (s *slowSigner) Close() error {
	keystore.CloseSigner(s.Signer)
	return nil
}

// bounded runs f and reports whether it returned within d (if not, it
// is left running).
func bounded(d time.Duration, f func() error) bool {
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// dumpGoroutines writes every goroutine's stack (grouped, pprof debug=1)
// to a file in the temporary directory and returns its path.
func dumpGoroutines(what string) (string, error) {
	f, err := os.CreateTemp("", "bench-storm-"+what+"-*.txt")
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 1); err != nil {
		return f.Name(), err
	}
	return f.Name(), f.Close()
}

func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) time.Duration {
		return time.Duration(t.Sec)*time.Second + time.Duration(t.Usec)*time.Microsecond
	}
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}

func maxRSS() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss * 1024
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return strings.TrimSpace(string(b))
	}
	return strings.Join(f[:3], " ")
}

// certsIssuedFromState reads every thing's principals from the lab's GET
// /lab/state in one request: ListThingPrincipals per thing is throttled at
// the storm's own rate (10,000 things at 30/s take over five minutes).
func certsIssuedFromState(ctx context.Context, l labHandle, devs []*device) (map[string]int, error) {
	cfg := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.Endpoints().API+"/lab/state?pem=false", nil)
	if err != nil {
		return nil, err
	}
	resp, err := cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /lab/state: %s", resp.Status)
	}
	// the registry's snapshot is the "registry" section
	// (cloud/lab/api serveState, registry.Snapshot)
	var st struct {
		Registry struct {
			ThingPrincipals map[string][]string `json:"thingPrincipals"`
		} `json:"registry"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET /lab/state: %w", err)
	}
	if st.Registry.ThingPrincipals == nil {
		return nil, errors.New("GET /lab/state: no registry.thingPrincipals")
	}
	out := map[string]int{}
	for _, d := range devs {
		if _, ok := d.doneAt(); !ok {
			continue
		}
		for _, arn := range st.Registry.ThingPrincipals[d.thing] {
			if !strings.HasSuffix(arn, "/"+d.bootID) {
				out[d.thing]++
			}
		}
	}
	return out, nil
}
