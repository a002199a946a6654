package identity

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/protocol"
)

var since = time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)

type rig struct {
	t     *testing.T
	x     *Exporter
	dir   string
	hooks string
	state string
	ca    *testca.CA
	stop  func()
}

func newRig(t *testing.T, timeout time.Duration) *rig {
	root := t.TempDir()
	r := &rig{t: t, dir: filepath.Join(root, "identity"), hooks: filepath.Join(root, "hooks.d"), state: filepath.Join(root, "state"), ca: testca.New(t, "factory CA")}
	os.MkdirAll(r.hooks, 0o755)
	boot := r.ca.Issue(t, "gw-1", testca.ECKey(t, elliptic.P256()).Public())
	x, err := New(Config{Dir: r.dir, HooksDir: r.hooks, HookTimeout: timeout, StateDir: r.state, Bootstrap: []*x509.Certificate{boot, r.ca.Cert}})
	if err != nil {
		t.Fatal(err)
	}
	r.x = x
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Run(ctx); close(done) }()
	r.stop = func() { cancel(); <-done }
	t.Cleanup(r.stop)
	return r
}

// store puts generation gen into the credential store and returns the
// status that makes it active.
func (r *rig) store(gen int, phase journal.Phase) control.Status {
	leaf := r.ca.Issue(r.t, "gw-1", testca.ECKey(r.t, elliptic.P256()).Public())
	st, _ := credset.Open(r.state)
	uri := "pkcs11:token=t;object=op-" + string(rune('0'+gen)) + "?pin-source=file:/etc/bootcert/pin"
	if err := st.Put(&credset.Credential{Generation: gen, KeyURI: uri, Chain: []*x509.Certificate{leaf, r.ca.Cert}}); err != nil {
		r.t.Fatal(err)
	}
	return control.Status{Thing: "gw-1", Endpoint: "iot.example:8883", Phase: phase, Counters: control.Counters{Since: since},
		Active: control.ActiveCredential{Generation: gen, CertificateID: protocol.CertificateID(leaf.Raw), KeyURI: uri, Backend: "pkcs11"}}
}

func (r *rig) hook(name, script string) {
	if err := os.WriteFile(filepath.Join(r.hooks, name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) waitDone(n int) {
	r.t.Helper()
	if !testkit.Poll(30*time.Second, func() bool { return r.x.Done() >= n }) {
		r.t.Fatalf("exporter handled %d changes, want %d", r.x.Done(), n)
	}
}

func TestExportAndHooks(t *testing.T) {
	r := newRig(t, 10*time.Second)
	out := filepath.Join(t.TempDir(), "hook.log")
	// a failing hook first: the next one still runs
	r.hook("10-fails", "echo failing on purpose >&2; exit 3\n")
	r.hook("20-records", `echo "$BOOTCERT_EVENT $BOOTCERT_GENERATION $BOOTCERT_CERTIFICATE_ID $BOOTCERT_KEY_URI $(cat "$BOOTCERT_CERT_FILE" | grep -c BEGIN)" >> `+out+"\n")
	r.hook("30-not-executable", "exit 0\n")
	os.Chmod(filepath.Join(r.hooks, "30-not-executable"), 0o644)
	r.hook("40.dpkg-old", "echo must not run >> "+out+"\n")

	// start: generation 1 active, idle, the journal's last result from
	// before the start: exported, no hook
	s1 := r.store(1, journal.Idle)
	s1.LastResult, s1.LastResultAt = protocol.JobSucceeded, since.Add(-time.Hour)
	r.x.Observe(s1)
	r.waitDone(1)
	var id Identity
	data, err := os.ReadFile(filepath.Join(r.dir, JSONFile))
	if err != nil || json.Unmarshal(data, &id) != nil || id.Generation != 1 || id.CertificateID != s1.Active.CertificateID || id.CertFile != filepath.Join(r.dir, CertFile) {
		t.Fatalf("identity.json %s %v", data, err)
	}
	if uri, _ := os.ReadFile(filepath.Join(r.dir, KeyURIFile)); strings.TrimSpace(string(uri)) != s1.Active.KeyURI {
		t.Errorf("key.uri %q", uri)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a hook ran without a commit or rollback")
	}
	// a rotation: switched is not exported; committed is, then the hooks run
	s2 := r.store(2, journal.Switched)
	s2.LastResult, s2.LastResultAt = s1.LastResult, s1.LastResultAt
	r.x.Observe(s2)
	s2.Phase, s2.LastResult, s2.LastResultAt = journal.Idle, protocol.JobSucceeded, since.Add(time.Minute)
	r.x.Observe(s2)
	r.waitDone(2)
	pem, _ := os.ReadFile(filepath.Join(r.dir, CertFile))
	chain, err := protocol.ParseChain(pem)
	if err != nil || protocol.CertificateID(chain[0].Raw) != s2.Active.CertificateID || len(chain) != 2 {
		t.Errorf("cert.pem after the commit: %v", err)
	}
	log, _ := os.ReadFile(out)
	want := "commit 2 " + s2.Active.CertificateID + " " + s2.Active.KeyURI + " 2\n"
	if string(log) != want {
		t.Errorf("hook saw %q, want %q", log, want)
	}
	// the stable paths are links into the current generation; the
	// previous one is kept, older ones removed
	if l, _ := os.Readlink(filepath.Join(r.dir, CertFile)); l != filepath.Join(CurrentLink, CertFile) {
		t.Errorf("cert.pem -> %q", l)
	}
	s3 := r.store(3, journal.Switched)
	s3.LastResult, s3.LastResultAt = s2.LastResult, s2.LastResultAt
	r.x.Observe(s3)
	s3.Phase, s3.LastResult, s3.LastResultAt = journal.Idle, protocol.JobSucceeded, since.Add(2*time.Minute)
	r.x.Observe(s3)
	r.waitDone(3)
	ents, _ := os.ReadDir(r.dir)
	var gens []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "gen-") {
			gens = append(gens, e.Name())
		}
	}
	if len(gens) != 2 || !strings.HasPrefix(gens[0], "gen-2-") || !strings.HasPrefix(gens[1], "gen-3-") {
		t.Errorf("generation directories %v, want gen-2 and gen-3", gens)
	}
	// a rollback (a new result, not a new certificate: the hooks run, the
	// export is unchanged)
	s3.LastResult, s3.LastResultAt = protocol.ResultRolledBack, since.Add(3*time.Minute)
	r.x.Observe(s3)
	r.waitDone(4)
	log, _ = os.ReadFile(out)
	if !strings.HasSuffix(string(log), "rollback 3 "+s3.Active.CertificateID+" "+s3.Active.KeyURI+" 2\n") {
		t.Errorf("hook log after rollback:\n%s", log)
	}
}

// A hook that outlives export.hook_timeout is killed, with its children;
// the next hook runs and the result says why.
func TestHookTimeout(t *testing.T) {
	r := newRig(t, time.Second)
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	r.hook("10-hangs", "sleep 300 & echo $! > "+pidFile+"; wait\n")
	r.hook("20-ok", "exit 0\n")
	s := r.store(1, journal.Idle)
	res := r.x.RunHooks(context.Background(), Commit, Identity{Generation: 1}, s)
	if len(res) != 2 || res[0].Err == nil || !strings.Contains(res[0].Err.Error(), "export.hook_timeout") || res[1].Err != nil {
		t.Fatalf("results %+v", res)
	}
	pid, _ := os.ReadFile(pidFile)
	if !testkit.Poll(10*time.Second, func() bool {
		_, err := os.Stat("/proc/" + strings.TrimSpace(string(pid)))
		return err != nil
	}) {
		t.Errorf("the hook's child %s outlived the timeout", pid)
	}
}
