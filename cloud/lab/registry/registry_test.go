package registry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newCA(t testing.TB, cn string) testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.AddDate(5, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return testCA{c, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

func (ca testCA) issue(t testing.TB, cn string) (der []byte, pemStr string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.AddDate(1, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func open(t testing.TB, dir string, clk clock.Clock) *Registry {
	t.Helper()
	r, err := Open(Config{Dir: dir, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func registerCA(t testing.TB, r *Registry, ca testCA) CACertificate {
	t.Helper()
	_, ver := ca.issue(t, r.RegistrationCode())
	c, err := r.RegisterCACertificate(RegisterCAInput{CACertificatePEM: ca.pem, VerificationCertificatePEM: ver, SetAsActive: true, AllowAutoRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRegisterCA(t *testing.T) {
	clk := clock.NewFake(t0)
	r := open(t, t.TempDir(), clk)
	ca := newCA(t, "factory")
	other := newCA(t, "other")
	_, goodVer := ca.issue(t, r.RegistrationCode())
	_, wrongCN := ca.issue(t, "not-the-code")
	_, wrongKey := other.issue(t, r.RegistrationCode())
	for _, tc := range []struct {
		name string
		in   RegisterCAInput
		want error
	}{
		{"fail/no-verification", RegisterCAInput{CACertificatePEM: ca.pem}, ErrInvalidRequest},
		{"fail/wrong-cn", RegisterCAInput{CACertificatePEM: ca.pem, VerificationCertificatePEM: wrongCN}, ErrRegistrationCode},
		{"fail/wrong-signer", RegisterCAInput{CACertificatePEM: ca.pem, VerificationCertificatePEM: wrongKey}, ErrCertificateValidation},
		{"fail/garbage", RegisterCAInput{CACertificatePEM: "nope"}, ErrCertificateValidation},
		{"ok/default", RegisterCAInput{CACertificatePEM: ca.pem, VerificationCertificatePEM: goodVer, SetAsActive: true}, nil},
		{"fail/again", RegisterCAInput{CACertificatePEM: ca.pem, VerificationCertificatePEM: goodVer}, ErrAlreadyExists},
		{"ok/sni-only", RegisterCAInput{CACertificatePEM: other.pem, CertificateMode: CertificateModeSNIOnly}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := r.RegisterCACertificate(tc.in)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.ID != protocol.CertificateID(mustPEM(t, tc.in.CACertificatePEM).Raw) {
				t.Errorf("id %s is not the SHA-256 of the DER", c.ID)
			}
		})
	}
}

func mustPEM(t testing.TB, s string) *x509.Certificate {
	c, err := ParseCertificatePEM("x", s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestJITRAndPersistence(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(t0)
	r := open(t, dir, clk)
	var events []Event
	r.AddListener(func(e Event) { events = append(events, e) })
	ca := newCA(t, "factory")
	cac := registerCA(t, r, ca)
	der, _ := ca.issue(t, "gw-1")
	leaf, _ := x509.ParseCertificate(der)
	found, err := r.FindCAFor(leaf)
	if err != nil || found.ID != cac.ID {
		t.Fatalf("FindCAFor = %v, %v", found.ID, err)
	}
	c, isNew, err := r.RegisterPendingCertificate(der, cac.ID)
	if err != nil || !isNew || c.Status != StatusPendingActivation {
		t.Fatalf("JITR = %+v %v %v", c, isNew, err)
	}
	if _, isNew, _ = r.RegisterPendingCertificate(der, cac.ID); isNew {
		t.Fatal("second JITR of the same certificate is new")
	}
	if len(events) != 1 {
		t.Fatalf("events = %#v", events)
	}
	if ev, ok := events[0].(CertificateRegistered); !ok || ev.CertID != c.ID || ev.CAID != cac.ID || !ev.JITR {
		t.Fatalf("event = %#v", events[0])
	}
	if err := r.UpdateCertificate(c.ID, StatusActive); err != nil {
		t.Fatal(err)
	}
	if _, ok := events[1].(CertificateStatusChanged); !ok {
		t.Fatalf("event = %#v", events[1])
	}
	// CA with auto-registration disabled refuses JITR.
	if err := r.UpdateCACertificate(cac.ID, "", AutoRegistrationDisable); err != nil {
		t.Fatal(err)
	}
	der2, _ := ca.issue(t, "gw-2")
	if _, _, err := r.RegisterPendingCertificate(der2, cac.ID); !errors.Is(err, ErrCertificateState) {
		t.Fatalf("JITR with auto-registration off: %v", err)
	}

	r2 := open(t, dir, clk)
	got, err := r2.DescribeCertificate(c.ID)
	if err != nil || got.Status != StatusActive || got.CACertificateID != cac.ID {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	if r2.RegistrationCode() != r.RegistrationCode() {
		t.Fatal("registration code changed across restart")
	}
}

func setupRotation(t testing.TB, r *Registry) {
	t.Helper()
	if _, err := r.CreateThingType("bootcert-gateway", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateThingGroup("bootcert-rotation", "", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CreateJob(CreateJobInput{JobID: "bootcert-rotation", TargetSelection: TargetContinuous,
		Targets: []string{r.ThingGroupARN("bootcert-rotation")}, Document: `{"operation":"bootcert.rotate"}`}); err != nil {
		t.Fatal(err)
	}
}

func TestContinuousJob(t *testing.T) {
	clk := clock.NewFake(t0)
	r := open(t, t.TempDir(), clk)
	setupRotation(t, r)
	var changes []JobExecutionChanged
	r.AddListener(func(e Event) {
		if c, ok := e.(JobExecutionChanged); ok {
			changes = append(changes, c)
		}
	})
	if _, err := r.CreateThing("gw-1", "bootcert-gateway", map[string]string{"model": "x"}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := r.StartNextPendingJobExecution("gw-1", nil, nil); ok {
		t.Fatal("execution before joining the group")
	}
	if err := r.AddThingToThingGroup("bootcert-rotation", "gw-1"); err != nil {
		t.Fatal(err)
	}
	ip, q, err := r.GetPendingJobExecutions("gw-1")
	if err != nil || len(ip) != 0 || len(q) != 1 || q[0].JobID != "bootcert-rotation" || q[0].VersionNumber != 1 {
		t.Fatalf("pending = %v %v %v", ip, q, err)
	}
	clk.Advance(time.Second)
	st := int64(5)
	e, _, ok, err := r.StartNextPendingJobExecution("gw-1", map[string]string{"progress": "started"}, &st)
	if err != nil || !ok || e.Status != protocol.JobInProgress || e.VersionNumber != 2 || e.StatusDetails["progress"] != "started" {
		t.Fatalf("start-next = %+v %v %v", e, ok, err)
	}
	v1 := int64(1)
	_, _, err = r.UpdateJobExecution(UpdateJobExecutionInput{ThingName: "gw-1", JobID: "bootcert-rotation", Status: protocol.JobSucceeded, ExpectedVersion: &v1})
	if !errors.Is(err, ErrVersionMismatch) || JobsCode(err) != "VersionMismatch" {
		t.Fatalf("expectedVersion mismatch: %v", err)
	}
	// Step timeout: 5 minutes later it is TIMED_OUT.
	clk.Advance(5 * time.Minute)
	got, err := r.DescribeJobExecution("bootcert-rotation", "gw-1", nil)
	if err != nil || got.Status != protocol.JobTimedOut {
		t.Fatalf("after step timeout: %+v %v", got, err)
	}
	_, _, err = r.UpdateJobExecution(UpdateJobExecutionInput{ThingName: "gw-1", JobID: "bootcert-rotation", Status: protocol.JobSucceeded})
	if !errors.Is(err, ErrInvalidStateTransition) {
		t.Fatalf("update of a terminal execution: %v", err)
	}
	// Rejoining queues nothing: AWS documents no second execution of a
	// continuous job for a thing that had one; a later rotation is a new
	// snapshot job.
	if err := r.RemoveThingFromThingGroup("bootcert-rotation", "gw-1"); err != nil {
		t.Fatal(err)
	}
	if err := r.AddThingToThingGroup("bootcert-rotation", "gw-1"); err != nil {
		t.Fatal(err)
	}
	if e, _, ok, _ := r.StartNextPendingJobExecution("gw-1", nil, nil); ok {
		t.Fatalf("rejoin queued %+v", e)
	}
	if _, err := r.CreateJob(CreateJobInput{JobID: "bootcert-r-2", Targets: []string{r.ThingARN("gw-1")}, Document: `{"operation":"rotate"}`}); err != nil {
		t.Fatal(err)
	}
	e, _, ok, _ = r.StartNextPendingJobExecution("gw-1", nil, nil)
	if !ok || e.JobID != "bootcert-r-2" || e.ExecutionNumber != 1 {
		t.Fatalf("snapshot job: %+v", e)
	}
	e, _, err = r.UpdateJobExecution(UpdateJobExecutionInput{ThingName: "gw-1", JobID: "bootcert-r-2", Status: protocol.JobSucceeded, ExpectedVersion: &e.VersionNumber})
	if err != nil || e.Status != protocol.JobSucceeded {
		t.Fatalf("succeed: %+v %v", e, err)
	}
	if j, _, _ := r.DescribeJob("bootcert-r-2"); j.Status != JobCompleted {
		t.Errorf("snapshot job %s after its only execution ended", j.Status)
	}
	want := []string{"/QUEUED", "QUEUED/IN_PROGRESS", "IN_PROGRESS/TIMED_OUT", "/QUEUED", "QUEUED/IN_PROGRESS", "IN_PROGRESS/SUCCEEDED"}
	if len(changes) != len(want) {
		t.Fatalf("%d changes, want %d", len(changes), len(want))
	}
	for i, c := range changes {
		if got := string(c.OldStatus + "/" + c.Exec.Status); got != want[i] {
			t.Errorf("change %d = %s, want %s", i, got, want[i])
		}
	}
	// Leaving the group removes a QUEUED execution.
	if _, err := r.CreateThing("gw-2", "", nil); err != nil {
		t.Fatal(err)
	}
	_ = r.AddThingToThingGroup("bootcert-rotation", "gw-2")
	_ = r.RemoveThingFromThingGroup("bootcert-rotation", "gw-2")
	if e, _ := r.DescribeJobExecution("bootcert-rotation", "gw-2", nil); e.Status != protocol.JobRemoved {
		t.Fatalf("after leaving: %s", e.Status)
	}
}

func TestStatusDetailsLimits(t *testing.T) {
	many := map[string]string{}
	for i := range 11 {
		many[string(rune('a'+i))] = "v"
	}
	long := make([]byte, 1025)
	for i := range long {
		long[i] = 'x'
	}
	for _, tc := range []struct {
		name string
		d    map[string]string
		ok   bool
	}{
		{"ok/nil", nil, true},
		{"ok/ten", map[string]string{"progress": "started", "a": "1"}, true},
		{"fail/eleven", many, false},
		{"fail/long-value", map[string]string{"k": string(long)}, false},
		{"fail/empty-value", map[string]string{"k": ""}, false},
		{"fail/bad-key", map[string]string{"a b": "v"}, false},
		{"fail/control", map[string]string{"k": "a\nb"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckStatusDetails(tc.d)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestWriteBehindRestart(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(Config{Dir: dir, WriteBehind: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := r.CreateThing(fmt.Sprintf("gw-%d", i), "", nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := open(t, dir, nil)
	if got := len(r2.Snapshot().Things); got != 50 {
		t.Fatalf("%d things after restart, want 50", got)
	}
}

// TestConcurrentJITR runs device registrations from many goroutines against
// a persisted registry: every change must be there after a restart, and
// events must arrive once per change.
func TestConcurrentJITR(t *testing.T) {
	dir := t.TempDir()
	r := open(t, dir, clock.NewFake(t0))
	ca := newCA(t, "factory")
	cac := registerCA(t, r, ca)
	setupRotation(t, r)
	var mu sync.Mutex
	queued := 0
	r.AddListener(func(e Event) {
		if c, ok := e.(JobExecutionChanged); ok && c.OldStatus == "" {
			mu.Lock()
			queued++
			mu.Unlock()
		}
	})
	const n = 40
	ders := make([][]byte, n)
	for i := range ders {
		ders[i], _ = ca.issue(t, fmt.Sprintf("gw-%d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := r.RegisterPendingCertificate(ders[i], cac.ID)
			if err != nil {
				errs <- err
				return
			}
			name := fmt.Sprintf("gw-%d", i)
			if _, err := r.CreateThing(name, "bootcert-gateway", nil); err != nil {
				errs <- err
				return
			}
			for _, err := range []error{r.UpdateCertificate(c.ID, StatusActive), r.AttachThingPrincipal(name, c.ARN),
				r.AddThingToThingGroup("bootcert-rotation", name)} {
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if queued != n {
		t.Fatalf("%d executions queued, want %d", queued, n)
	}
	s := open(t, dir, nil).Snapshot()
	if s.Counts["certificates.ACTIVE"] != n || s.Counts["jobExecutions.QUEUED"] != n || len(s.ThingPrincipals) != n {
		t.Fatalf("after restart: %v", s.Counts)
	}
}

// TestRestartKeepsEverything: every kind of state survives a reopen
// unchanged.
func TestRestartKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(t0)
	r := open(t, dir, clk)
	ca := newCA(t, "factory")
	cac := registerCA(t, r, ca)
	setupRotation(t, r)
	der, _ := ca.issue(t, "gw-1")
	c, _, err := r.RegisterPendingCertificate(der, cac.ID)
	if err != nil {
		t.Fatal(err)
	}
	steps := []error{
		func() error {
			_, err := r.CreateThing("gw-1", "bootcert-gateway", map[string]string{"a": "b"})
			return err
		}(),
		func() error {
			_, err := r.CreatePolicy("bootcert-bootstrap", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}`)
			return err
		}(),
		func() error { _, err := r.CreateThingGroup("child", "bootcert-rotation", "d", nil); return err }(),
		r.AttachThingPrincipal("gw-1", c.ARN),
		r.AttachPolicy("bootcert-bootstrap", c.ARN),
		r.AttachPolicy("bootcert-bootstrap", r.ThingGroupARN("child")),
		r.AddThingToThingGroup("child", "gw-1"), // parent group's continuous job applies
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := int64(10)
	if _, _, ok, err := r.StartNextPendingJobExecution("gw-1", map[string]string{"progress": "started"}, &st); err != nil || !ok {
		t.Fatalf("start-next through the parent group: %v %v", ok, err)
	}
	before, _ := json.Marshal(r.Snapshot())
	r2 := open(t, dir, clk)
	after, _ := json.Marshal(r2.Snapshot())
	if string(before) != string(after) {
		t.Fatalf("state changed across restart:\nbefore %s\nafter  %s", before, after)
	}
	// The step timeout still fires after the restart.
	clk.Advance(11 * time.Minute)
	if e, _ := r2.DescribeJobExecution("bootcert-rotation", "gw-1", nil); e.Status != protocol.JobTimedOut {
		t.Fatalf("after restart and step timeout: %s", e.Status)
	}
}

func TestCorruptStateFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), FileName) {
		t.Fatalf("corrupt registry.json: %v", err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, FileName)); string(data) != "{not json" {
		t.Fatal("the corrupt file was overwritten")
	}
}

func TestGroupQuotas(t *testing.T) {
	r := open(t, "", nil)
	if _, err := r.CreateThing("gw", "", nil); err != nil {
		t.Fatal(err)
	}
	for i := range MaxGroupsPerThing + 1 {
		name := fmt.Sprintf("g%d", i)
		if _, err := r.CreateThingGroup(name, "", "", nil); err != nil {
			t.Fatal(err)
		}
		err := r.AddThingToThingGroup(name, "gw")
		if i < MaxGroupsPerThing && err != nil {
			t.Fatal(err)
		}
		if i == MaxGroupsPerThing && !errors.Is(err, ErrInvalidRequest) {
			t.Fatalf("11th group: %v", err)
		}
	}
	parent := ""
	for i := range MaxGroupDepth + 1 {
		name := fmt.Sprintf("level%d", i)
		_, err := r.CreateThingGroup(name, parent, "", nil)
		if i < MaxGroupDepth && err != nil {
			t.Fatalf("level %d: %v", i, err)
		}
		if i == MaxGroupDepth && !errors.Is(err, ErrInvalidRequest) {
			t.Fatalf("level %d: %v", i, err)
		}
		parent = name
	}
}

// TestWriteBehindCloseWhileBusy: changes racing with Close neither panic
// nor get lost.
func TestWriteBehindCloseWhileBusy(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(Config{Dir: dir, WriteBehind: true})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.CreateThing(fmt.Sprintf("gw-%d", i), "", nil); err != nil {
				t.Error(err)
			}
		}()
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if got := len(open(t, dir, nil).Snapshot().Things); got != 20 {
		t.Fatalf("%d things after restart, want 20", got)
	}
}

func TestJobRolloutAndAbort(t *testing.T) {
	clk := clock.NewFake(t0)
	r := open(t, t.TempDir(), clk)
	var targets []string
	for i := range 5 {
		n := "gw-" + string(rune('a'+i))
		if _, err := r.CreateThing(n, "", nil); err != nil {
			t.Fatal(err)
		}
		targets = append(targets, r.ThingARN(n))
	}
	_, err := r.CreateJob(CreateJobInput{JobID: "wave", Targets: targets, Document: `{}`, MaxPerMinute: 2,
		Abort: []AbortCriteria{{FailureType: "ALL", Action: "CANCEL", Threshold: 50, MinExecuted: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	queued := func() (n int) {
		for _, tg := range targets {
			if _, err := r.DescribeJobExecution("wave", nameFromARN("thing", tg), nil); err == nil {
				n++
			}
		}
		return n
	}
	if n := queued(); n != 2 {
		t.Fatalf("%d executions right after CreateJob, want 2 (maximumPerMinute)", n)
	}
	clk.Advance(59 * time.Second)
	if n := queued(); n != 2 {
		t.Fatalf("%d executions before a minute passed, want 2", n)
	}
	clk.Advance(time.Second)
	if n := queued(); n != 4 {
		t.Fatalf("%d executions after a minute, want 4", n)
	}
	// Two executions end FAILED: 100 % of 2 executed >= 50 %: the job is
	// canceled, its QUEUED executions canceled, the held one never queued.
	for _, thing := range []string{"gw-a", "gw-b"} {
		if _, _, err := r.UpdateJobExecution(UpdateJobExecutionInput{ThingName: thing, JobID: "wave", Status: protocol.JobFailed}); err != nil {
			t.Fatal(err)
		}
	}
	j, counts, _ := r.DescribeJob("wave")
	if j.Status != JobCanceled || counts[protocol.JobCanceled] != 2 || counts[protocol.JobFailed] != 2 {
		t.Fatalf("after the abort threshold: job %s, executions %v", j.Status, counts)
	}
	clk.Advance(time.Hour)
	if n := queued(); n != 4 {
		t.Errorf("%d executions after the abort, want 4 (the held one dropped)", n)
	}
	if _, err := r.CreateJob(CreateJobInput{JobID: "bad", Targets: targets, Document: `{}`, MaxPerMinute: 1001}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("maximumPerMinute 1001: %v", err)
	}
	if _, err := r.CreateJob(CreateJobInput{JobID: "bad", Targets: targets, Document: `{}`, Abort: []AbortCriteria{{FailureType: "ALL", Action: "CANCEL", Threshold: 0, MinExecuted: 1}}}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("threshold 0: %v", err)
	}
}

// TestAttachThingPrincipalExclusive: a principal attached with
// EXCLUSIVE_THING cannot be attached to another thing, and a principal
// attached to another thing cannot be attached exclusively (AWS's
// API_AttachThingPrincipal.html); detaching frees it.
func TestAttachThingPrincipalExclusive(t *testing.T) {
	r := open(t, "", nil)
	for _, n := range []string{"a", "b"} {
		if _, err := r.CreateThing(n, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	ca := newCA(t, "factory")
	cac := registerCA(t, r, ca)
	cert := func() Certificate {
		der, _ := ca.issue(t, "gw")
		c, _, err := r.RegisterPendingCertificate(der, cac.ID)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1, c2 := cert(), cert()
	if err := r.AttachThingPrincipal("a", c1.ARN, ExclusiveThing); err != nil {
		t.Fatalf("ok/exclusive: %v", err)
	}
	if err := r.AttachThingPrincipal("a", c1.ARN, ExclusiveThing); err != nil {
		t.Fatalf("ok/again-same-thing: %v", err)
	}
	if err := r.AttachThingPrincipal("b", c1.ARN); err == nil {
		t.Fatal("fail/exclusive-to-another: attached")
	}
	if err := r.AttachThingPrincipal("b", c1.ARN, ExclusiveThing); err == nil {
		t.Fatal("fail/exclusive-to-another-exclusive: attached")
	}
	if err := r.AttachThingPrincipal("a", c2.ARN, NonExclusiveThing); err != nil {
		t.Fatal(err)
	}
	if err := r.AttachThingPrincipal("b", c2.ARN, ExclusiveThing); err == nil {
		t.Fatal("fail/exclusive-while-attached-elsewhere: attached")
	}
	if err := r.AttachThingPrincipal("b", c2.ARN, "SOMETIMES"); err == nil {
		t.Fatal("fail/bad-type accepted")
	}
	if err := r.DetachThingPrincipal("a", c1.ARN); err != nil {
		t.Fatal(err)
	}
	if err := r.AttachThingPrincipal("b", c1.ARN); err != nil {
		t.Fatalf("ok/after-detach: %v", err)
	}
}
