package e2e

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/daemon"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/daemon/session"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/tpm"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// The template parameters of the ten-year run: the default maximum age
// (365d) and schedule (rate(1 hour)); a pace of one rotation per 20 hours
// with a bucket of one, so that two devices due in the same scan are
// paced.
var tenYearParams = map[string]string{"RotationsPerHour": "0.05", "RotationBurst": "1"}

const (
	tenYears = 10 * 365 * 24 * time.Hour
	step     = 48 * time.Hour // the big steps of the fake clock
	flow     = time.Second
)

// newCloudOn is newCloudWith with the lab on clk (lab.Config.Clock): the
// lab's certificates, job timers and the template's schedules run on it.
func newCloudOn(t *testing.T, clk clock.Clock, o cloudOpts) *cloudEnv {
	t.Helper()
	c := &cloudEnv{t: t, dir: t.TempDir(), data: t.TempDir(), functions: o.functions, params: o.params}
	cfg := lab.Config{DataDir: c.data, TemplatePath: templatePath(), MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		Functions: c.functions, Parameters: c.params, Clock: clk}
	l, err := lab.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	c.lab = l
	t.Cleanup(func() { l.Close() })
	c.api = iot.NewFromConfig(lab.ClientConfig(l.ServerCAPEM(), "us-east-1"), func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) })
	c.s3 = s3.NewFromConfig(lab.ClientConfig(l.ServerCAPEM(), "us-east-1"), func(o *s3.Options) { o.BaseEndpoint = aws.String(l.Endpoints().S3); o.UsePathStyle = true })
	ctx := context.Background()
	c.trustFactoryCA(ctx)
	doc, _ := json.Marshal(protocol.DefaultJobDocument())
	if _, err := c.api.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bootcert-rotation"), Document: aws.String(string(doc)),
		Targets: []string{acct + "thinggroup/bootcert-rotation"}, TargetSelection: types.TargetSelectionContinuous}); err != nil {
		t.Fatalf("CreateJob: %v", err)
	}
	if _, err := c.api.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"JOB_EXECUTION": {Enabled: true}}}); err != nil {
		t.Fatalf("UpdateEventConfigurations: %v", err)
	}
	return c
}

// scanCounter is the template's RenewalFunction (built as the lab builds
// it, on the lab's clock) counting its finished invocations and the rotations
// its scans deferred for the pace.
type scanCounter struct {
	mu       sync.Mutex
	real     lab.Function
	done     atomic.Int64
	started  atomic.Int64
	deferred atomic.Int64
	ran      chan struct{}
	clk      clock.Clock
	last     string   // the last scan's result or error
	history  []string // the scans that queued or deferred something
}

func (s *scanCounter) fn(ctx context.Context, ev json.RawMessage) (json.RawMessage, error) {
	s.mu.Lock()
	real := s.real
	s.mu.Unlock()
	if real == nil {
		return nil, nil
	}
	s.started.Add(1)
	at := s.clk.Now()
	out, err := real(ctx, ev)
	var res renewal.Result
	if json.Unmarshal(out, &res) == nil {
		s.deferred.Add(int64(res.Deferred))
	}
	s.mu.Lock()
	s.last = fmt.Sprintf("%s %v", out, err)
	if len(res.Added) > 0 || res.Deferred > 0 || err != nil {
		s.history = append(s.history, fmt.Sprintf("%s: %s %v", at.UTC().Format(time.RFC3339), out, err))
	}
	s.mu.Unlock()
	s.done.Add(1)
	select {
	case s.ran <- struct{}{}:
	default:
	}
	return out, err
}

func buildRenewal(t *testing.T, c *cloudEnv, clk clock.Clock, params map[string]string) lab.Function {
	t.Helper()
	tmpl, err := template.Load(templatePath(), template.Options{Parameters: params})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tmpl.Functions {
		if f.LogicalID != "RenewalFunction" {
			continue
		}
		ep := c.lab.Endpoints()
		fn, err := cloud.Build(context.Background(), f.LogicalID, func(k string) string { return f.Env[k] },
			cloud.Deps{AWS: lab.ClientConfig(c.lab.ServerCAPEM(), "us-east-1"), Endpoints: cloud.Endpoints{IoT: ep.API, S3: ep.S3, IoTData: ep.API},
				Clock: clk, Logger: slog.New(slog.NewTextHandler(discard{}, nil))})
		if err != nil {
			t.Fatal(err)
		}
		return lab.Function(fn)
	}
	t.Fatal("the template has no RenewalFunction")
	return nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// tailBuffer keeps the last part of a log.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if len(w.b) > 64<<10 {
		w.b = append([]byte(nil), w.b[len(w.b)-32<<10:]...)
	}
	return len(p), nil
}

func (w *tailBuffer) String() string { w.mu.Lock(); defer w.mu.Unlock(); return string(w.b) }

// dueOffset is when, after its certificate's notBefore, the renewal
// function finds name due by age (its stable jitter).
func dueOffset(r *renewal.Renewal, name string, nb time.Time) time.Duration {
	attrs := map[string]string{fleet.AttrActivated: "true", fleet.AttrBootstrap: "b", fleet.AttrOperational: "o",
		fleet.AttrNotBefore: strconv.FormatInt(nb.Unix(), 10), fleet.AttrNotAfter: strconv.FormatInt(nb.Add(24*365*24*time.Hour).Unix(), 10)}
	lo, hi := time.Duration(0), r.Config.MaxAge
	for hi-lo > time.Minute {
		mid := (lo + hi) / 2
		if r.Due(name, attrs, nb.Add(mid)) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

// tenYearDevice is one gateway: keys in its own swtpm, the real engine
// in-process on the shared fake clock, dialling the lab with the real MQTT
// session.
type tenYearDevice struct {
	*device
	eng  *engine.Engine
	log  *tailBuffer
	keys map[string]int // public key -> generation
	// certificate IDs seen, in order, and their notBefore
	certs       []string
	lastFailure time.Time
}

func startTenYearDevice(t *testing.T, c *cloudEnv, clk *clock.Fake, name string) *tenYearDevice {
	t.Helper()
	d := newDevice(t, c, name, deviceOpts{kind: onTPM})
	// a bootstrap certificate valid for the whole run (newDevice's is
	// valid a year), on the allow list in place of the first
	cfg, err := config.Load(d.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	bk, err := keystore.Open(ctx, d.bootKey)
	if err != nil {
		t.Fatal(err)
	}
	boot := c.issue(name, bk.Public(), clk.Now().Add(-time.Hour), clk.Now().Add(tenYears+365*24*time.Hour))
	keystore.CloseSigner(bk)
	tpm.CloseAll()
	if err := os.WriteFile(cfg.Identity.BootstrapCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: boot.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	newID := protocol.CertificateID(boot.Raw)
	c.mu.Lock()
	for i, l := range c.allow {
		c.allow[i] = strings.Replace(l, d.bootID, newID, 1)
	}
	body := strings.Join(manifest.Header, ",") + "\n" + strings.Join(c.allow, "\n") + "\n"
	c.mu.Unlock()
	c.put("trust/allow-list.csv", []byte(body))
	d.bootID = newID

	ck, err := daemon.Check(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// engine.Config as daemon.Checked.Run builds it
	ecfg := engine.Config{
		Thing: ck.Thing, Endpoint: cfg.Address(), BootstrapKey: cfg.Identity.BootstrapKey, Bootstrap: ck.Bootstrap,
		Algorithm: ck.Algorithm, StateDir: cfg.State.Dir,
		// replies take real time while the fake clock flows (flow per
		// 20 ms): a long reply timeout keeps retries for lost replies only
		ReplyTimeout: 30 * time.Minute, Backoff: engine.Backoff{Initial: cfg.Backoff.Initial.D(), Max: cfg.Backoff.Max.D()},
		RollbackRefusals: cfg.Fallback.Refusals, RollbackWindow: cfg.Fallback.Window.D(), FallbackToBoot: cfg.Fallback.Bootstrap,
		ShutdownQuiesce: cfg.Timeouts.Shutdown.D(), PhaseSessions: cfg.Rotation.PhaseSessions, StableAfter: cfg.Backoff.ResetAfter.D(),
		RequestAfterLife: cfg.Rotation.RequestAfterLife, MaxAge: cfg.Rotation.MaxAge.D(), RequestInterval: cfg.Rotation.RequestInterval.D(),
		OperationalFn: cfg.OperationalKeyURI,
	}
	td := &tenYearDevice{device: d, log: &tailBuffer{}, keys: map[string]int{}}
	lg := slog.New(slog.NewTextHandler(td.log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	scfg := session.Config{Address: cfg.Address(), ServerName: cfg.Broker.Endpoint, RootCAs: ck.RootCAs, ClientID: ck.Thing,
		KeepAlive: cfg.Timeouts.KeepAlive.D(), Timeout: cfg.Timeouts.Connect.D(), Logger: lg}
	eng, err := engine.New(ecfg, sessionDialer{scfg}, engine.KeystoreKeys{}, nil, clk, lg)
	if err != nil {
		t.Fatal(err)
	}
	td.eng = eng
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && err != context.Canceled {
				t.Errorf("%s: engine: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s: the engine did not stop", name)
		}
		keystore.CloseAll(context.Background())
	})
	return td
}

// sessionDialer is daemon's dialer: the real MQTT session.
type sessionDialer struct{ cfg session.Config }

func (d sessionDialer) Dial(ctx context.Context, c *engine.Credential) (engine.Conn, error) {
	s, err := session.Dial(ctx, d.cfg, session.Credential{Chain: c.ChainDER(), Signer: c.Signer})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// settled reports whether the device is idle on its committed certificate
// with nothing pending for it in the cloud.
func (d *tenYearDevice) settled(ctx context.Context) (bool, string) {
	s := d.eng.Status()
	if s.Phase != journal.Idle || s.Connection != "connected" || s.Active.Generation == 0 || s.ConnectedWith != s.Active.Generation {
		return false, fmt.Sprintf("phase %s, %s with generation %d, active %d", s.Phase, s.Connection, s.ConnectedWith, s.Active.Generation)
	}
	th, err := d.cloud.api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(d.name)})
	if err != nil {
		return false, err.Error()
	}
	if op := th.Attributes[fleet.AttrOperational]; op != s.Active.CertificateID {
		return false, "cloud's operational certificate " + op + " is not the device's " + s.Active.CertificateID
	}
	gs, err := d.cloud.api.ListThingGroupsForThing(ctx, &iot.ListThingGroupsForThingInput{ThingName: aws.String(d.name)})
	if err != nil {
		return false, err.Error()
	}
	for _, g := range gs.ThingGroups {
		if aws.ToString(g.GroupName) == "bootcert-rotation" {
			return false, "a rotation is pending (in the rotation group)"
		}
	}
	return true, ""
}

// TestTenYears (issue 10, done-when: "A device rotated repeatedly over ten
// simulated years (an injected clock on both sides) never holds an expired
// or over-age certificate; every rotation is a new hardware key; the
// fleet-wide rotation rate never exceeds the configured pace"). Two
// gateways (keys in swtpm, the real engine in-process with the real MQTT
// session) and the lab with the real template share one clock.Fake; the lab
// runs the renewal function on the template's schedule (rate(1 hour)) on
// that clock. The test moves the clock in 48-hour steps over ten years and,
// while a rotation runs, in 1-second steps (it flows only while the device
// or the cloud has work). After every step it checks each device's
// certificate age against MaxCertificateAge; every new certificate's
// public key against all earlier ones; and, at the end, the rotations the
// renewal function queued against the pace (RotationsPerHour 0.05,
// RotationBurst 1: at most 1 + 0.05*h in any h hours). The two thing names
// are chosen to fall due within the same scan, so the pace defers one.
func TestTenYears(t *testing.T) {
	if testing.Short() {
		t.Skip("ten simulated years: not in -short")
	}
	ctx := context.Background()
	clk := clock.NewFake(time.Now())
	rc := renewal.DefaultConfig()
	rc.RotationsPerHour, rc.Burst = 0.05, 1
	settings, _ := fleet.FromEnv(func(k string) string { return map[string]string{fleet.EnvBucket: "b"}[k] })
	probe := &renewal.Renewal{Config: rc, Settings: settings}
	// two names due within the same hour of each other's (same notBefore)
	var names []string
	offsets := map[time.Duration]string{}
	for i := 0; len(names) == 0 && i < 5000; i++ {
		n := fmt.Sprintf("gw-ten-%d", i)
		o := dueOffset(probe, n, clk.Now()).Truncate(time.Hour)
		if other, ok := offsets[o]; ok {
			names = []string{other, n}
		}
		offsets[o] = n
	}
	if names == nil {
		t.Fatal("no two thing names due in the same hour")
	}

	sc := &scanCounter{ran: make(chan struct{}, 1), clk: clk}
	c := newCloudOn(t, clk, cloudOpts{params: tenYearParams, functions: map[string]lab.Function{"RenewalFunction": sc.fn}})
	sc.mu.Lock()
	sc.real = buildRenewal(t, c, clk, tenYearParams)
	sc.mu.Unlock()

	var devs []*tenYearDevice
	for _, n := range names {
		devs = append(devs, startTenYearDevice(t, c, clk, n))
	}
	// settle moves the clock in small steps until every device is settled
	settle := func(what string) {
		t.Helper()
		var why string
		if !testkit.Poll(120*time.Second, func() bool {
			for _, d := range devs {
				ok, w := d.settled(ctx)
				if !ok {
					why = d.name + ": " + w
					clk.Advance(flow)
					return false
				}
			}
			return true
		}) {
			var logs strings.Builder
			for _, d := range devs {
				fmt.Fprintf(&logs, "--- %s status %+v\n%s\n", d.name, d.eng.Status(), tail(d.log.String(), 40))
			}
			t.Fatalf("%s: not settled at %s: %s\n%s", what, clk.Now().UTC().Format(time.RFC3339), why, logs.String())
		}
	}
	settle("the first rotation")

	start := clk.Now()
	maxAge := rc.MaxAge
	type queued struct {
		thing, job string
		at         time.Time
	}
	var waves []queued
	lastJob := map[string]string{}
	oldest := time.Duration(0)
	var failures []string
	rotations := 0
	record := func() {
		t.Helper()
		now := clk.Now()
		for _, d := range devs {
			s := d.eng.Status()
			if s.LastResult != "" && s.LastResult != protocol.JobSucceeded && s.LastResultAt != d.lastFailure {
				d.lastFailure = s.LastResultAt
				failures = append(failures, fmt.Sprintf("%s %s at %s: %s\n%s", d.name, s.LastResult, s.LastResultAt.UTC().Format(time.RFC3339), s.LastReason, tail(d.log.String(), 60)))
			}
			age := now.Sub(s.Active.NotBefore)
			if age > oldest {
				oldest = age
			}
			if age > maxAge {
				sc.mu.Lock()
				last := sc.last
				sc.mu.Unlock()
				t.Fatalf("%s at %s: certificate %s is %s old, more than MaxCertificateAge %s (last scan: %s)", d.name, now.UTC().Format(time.RFC3339),
					s.Active.CertificateID[:12], age.Round(time.Hour), maxAge, last)
			}
			if !now.Before(s.Active.NotAfter) {
				t.Fatalf("%s holds an expired certificate (notAfter %s) at %s", d.name, s.Active.NotAfter, now)
			}
			if n := len(d.certs); n == 0 || d.certs[n-1] != s.Active.CertificateID {
				pub := c.certPublicKey(s.Active.CertificateID)
				if g, seen := d.keys[pub]; seen {
					t.Fatalf("%s generation %d has the key of generation %d", d.name, s.Active.Generation, g)
				}
				d.keys[pub] = s.Active.Generation
				d.certs = append(d.certs, s.Active.CertificateID)
				rotations++
			}
			th, err := c.api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(d.name)})
			if err != nil {
				t.Fatal(err)
			}
			if job := th.Attributes[renewal.AttrRotationJob]; job != "" && job != lastJob[d.name] {
				lastJob[d.name] = job
				at, _ := strconv.ParseInt(th.Attributes[renewal.AttrRotationQueuedAt], 10, 64)
				waves = append(waves, queued{d.name, job, time.Unix(at, 0)})
			}
		}
	}
	record()
	steps := 0
	for clk.Now().Sub(start) < tenYears {
		before := sc.done.Load()
		clk.Advance(step)
		// the scan the step fired (the schedule re-arms after each
		// invocation: until it has, an hour more fires it; never while a
		// scan runs, which may have just queued a job whose timeout runs
		// on this clock)
		if !testkit.Poll(60*time.Second, func() bool {
			if sc.done.Load() > before {
				return true
			}
			select {
			case <-sc.ran:
			case <-time.After(300 * time.Millisecond):
				if sc.started.Load() == sc.done.Load() {
					clk.Advance(time.Hour)
				} else {
					// a running scan may wait for its turn at an API's
					// quota (the lab's pacer runs on this clock)
					clk.Advance(time.Second)
				}
			}
			return sc.done.Load() > before
		}) {
			t.Fatalf("no renewal scan at %s", clk.Now())
		}
		settle("step " + strconv.Itoa(steps))
		record()
		steps++
	}

	// the pace: at most Burst + RotationsPerHour*h rotations queued in any
	// h hours
	sort.Slice(waves, func(i, j int) bool { return waves[i].at.Before(waves[j].at) })
	for i := range waves {
		for j := i + 1; j < len(waves); j++ {
			h := waves[j].at.Sub(waves[i].at).Hours()
			if n := float64(j - i + 1); n > float64(rc.Burst)+rc.RotationsPerHour*h {
				t.Errorf("%d rotations queued in %.1f h (%s %s .. %s %s): more than the pace allows (%d + %.2f/h)",
					j-i+1, h, waves[i].thing, waves[i].at.UTC().Format(time.RFC3339), waves[j].thing, waves[j].at.UTC().Format(time.RFC3339), rc.Burst, rc.RotationsPerHour)
			}
		}
	}
	if sc.deferred.Load() == 0 {
		t.Errorf("no scan deferred a rotation: the pace was never exercised (names %v)", names)
	}
	for _, f := range failures {
		t.Logf("rotation not succeeded: %s", f)
	}
	if t.Failed() || len(failures) > 0 {
		sc.mu.Lock()
		for _, h := range sc.history {
			t.Logf("scan %s", h)
		}
		sc.mu.Unlock()
	}
	for _, d := range devs {
		t.Logf("%s: %d certificates, generation %d", d.name, len(d.certs), d.eng.Status().Active.Generation)
		if n := len(d.certs); n < 10 {
			t.Errorf("%s: %d certificates in ten years, want at least 10 (one a year)", d.name, n)
		}
	}
	t.Logf("ten years (%s .. %s) in %d steps: %d certificates (%d rotations queued by the renewal function, %d deferred by the pace), oldest certificate %.1f days (max %s), devices %v",
		start.UTC().Format("2006-01-02"), clk.Now().UTC().Format("2006-01-02"), steps, rotations, len(waves), sc.deferred.Load(),
		oldest.Hours()/24, maxAge, names)
}
