package e2e

import (
	"bytes"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/internal/testkit"
)

// forwarder is a TCP relay on a free loopback port to the lab's broker:
// the same broker under another address, for a reload to move to.
type forwarder struct {
	ln       net.Listener
	accepted atomic.Int64
	wg       sync.WaitGroup
}

func startForwarder(t *testing.T, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln}
	var mu sync.Mutex
	var conns []net.Conn
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.accepted.Add(1)
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			f.wg.Add(2)
			go func() { defer f.wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer f.wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *forwarder) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

// editConfig rewrites the device's configuration file as an operator
// would before `systemctl reload`.
func (d *device) editConfig(edit func(*config.Config)) {
	d.t.Helper()
	c, err := config.Load(d.cfgPath)
	if err != nil {
		d.t.Fatal(err)
	}
	edit(c)
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(d.cfgPath, b.Bytes(), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// reload sends SIGHUP (what ExecReload sends) and waits for the daemon to
// report the reload in status.
func (d *device) reload(after time.Time, what string, cond func(*control.Reload) bool) engine.Status {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		d.t.Fatal(err)
	}
	return d.waitFor(what, func(s engine.Status) bool {
		return s.Reload != nil && s.Reload.At.After(after) && cond(s.Reload)
	})
}

// keyFiles is the content of the device's key directory (TPM blobs).
func keyFiles(t *testing.T, d *device) map[string]string {
	t.Helper()
	out := map[string]string{}
	dir := filepath.Join(d.dir, "keys")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// TestReload (issue 14, items 4 and 6): `systemctl reload` (SIGHUP) on the
// real bootcertd, keys in swtpm, against the lab.
//
//   - a good file is applied without a new key and without giving up the
//     credential: the log level and the metrics textfile change at once;
//     the broker's address (the same lab under another name and port)
//     takes a reconnect with the same generation;
//   - a broken file is refused with one log line naming the file, the key
//     and the problem; the daemon keeps its configuration and runs on;
//   - a file that changes what only a restart may change (state.dir) is
//     refused whole, naming the key and the restart: its live changes are
//     not applied either;
//   - the daemon then still rotates, through the address the reload gave.
func TestReload(t *testing.T) {
	c := newCloud(t)
	metricsDir := t.TempDir()
	prom1, prom2 := filepath.Join(metricsDir, "one.prom"), filepath.Join(metricsDir, "two.prom")
	d := newDevice(t, c, "gw-reload", deviceOpts{kind: onTPM, configure: func(cfg *config.Config) {
		cfg.Log.Level = "info"
		cfg.Metrics.Textfile = prom1
	}})
	d.start()
	before := d.waitFor("operational generation 1", operational(1))
	if strings.Contains(d.Log(), "level=DEBUG") {
		t.Fatalf("a debug line at log.level info:\n%s", tail(d.Log(), 20))
	}
	reloadMark := len(d.Log())
	if !promWritten(prom1) {
		t.Fatalf("metrics textfile %s not written", prom1)
	}
	keysBefore := keyFiles(t, d)
	lab := c.lab.Endpoints().MQTT
	fwd := startForwarder(t, lab)
	newAddr := "localhost:" + strconv.Itoa(fwd.port())

	// (a) a good file: applied live
	{
		d.editConfig(func(cfg *config.Config) {
			cfg.Log.Level = "debug"
			cfg.Metrics.Textfile = prom2
			cfg.Broker.Endpoint, cfg.Broker.Port = "localhost", fwd.port()
			cfg.Backoff.Max = config.Duration(2 * time.Second)
		})
		st := d.reload(time.Time{}, "the reload applied", func(r *control.Reload) bool { return r.Result == control.ReloadApplied })
		want := []string{"broker.endpoint", "broker.port", "backoff.max", "log.level", "metrics.textfile"}
		for _, k := range want {
			if !slices.Contains(st.Reload.Changed, k) {
				t.Errorf("reload changed %v, want %v", st.Reload.Changed, want)
			}
		}
		st = d.waitFor("reconnected through the new address with generation 1", func(s engine.Status) bool {
			return s.Endpoint == newAddr && operational(1)(s) && fwd.accepted.Load() > 0
		})
		if st.Active.CertificateID != before.Active.CertificateID || st.Counters.Refusals != before.Counters.Refusals {
			t.Errorf("credential changed or refused by the reload: before %s %+v, after %s %+v", before.Active.CertificateID, before.Counters, st.Active.CertificateID, st.Counters)
		}
		if st.Counters.Connects <= before.Counters.Connects {
			t.Errorf("connects %d, want more than %d: the broker change takes a reconnect", st.Counters.Connects, before.Counters.Connects)
		}
		if got := keyFiles(t, d); !maps.Equal(got, keysBefore) {
			t.Errorf("key files changed by a reload: %v -> %v", names(keysBefore), names(got))
		}
		if !promWritten(prom2) {
			t.Errorf("metrics textfile %s not written after the reload", prom2)
		}
		if _, err := os.Stat(prom1); !os.IsNotExist(err) {
			t.Errorf("the previous metrics textfile is still there (%v): node_exporter would read stale figures", err)
		}
		if st.Phase != "idle" || st.PendingJob != "" {
			t.Errorf("a reload started a rotation: %+v", st)
		}
	}

	// (b) a broken file: refused, the running configuration kept
	{
		good, err := os.ReadFile(d.cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		broken := regexp.MustCompile(`(?m)^(\s*)initial = "50ms"$`).ReplaceAllString(string(good), `${1}initial = "soon"`)
		if broken == string(good) {
			t.Fatal("could not break the file")
		}
		os.WriteFile(d.cfgPath, []byte(broken), 0o600)
		prev, _ := d.status()
		mark := len(d.Log())
		st := d.reload(prev.Reload.At, "the broken file refused", func(r *control.Reload) bool { return r.Result == control.ReloadRefused })
		for _, want := range []string{d.cfgPath, "backoff.initial", `"soon" is not a duration`} {
			if !strings.Contains(st.Reload.Error, want) {
				t.Errorf("refusal %q does not name %q", st.Reload.Error, want)
			}
		}
		// the daemon's log reaches the test through a pipe: the status
		// can say refused before the line has arrived
		var lines []string
		testkit.Poll(10*time.Second, func() bool {
			lines = nil
			for _, l := range strings.Split(d.Log()[mark:], "\n") {
				if strings.Contains(l, "configuration reload refused") {
					lines = append(lines, l)
				}
			}
			return len(lines) > 0
		})
		if len(lines) != 1 || !strings.Contains(lines[0], "level=ERROR") || !strings.Contains(lines[0], d.cfgPath) || !strings.Contains(lines[0], "backoff.initial") {
			t.Errorf("want one error line naming the file and the key, got %q", lines)
		}
		st = d.waitFor("still connected with generation 1 at the reloaded address", func(s engine.Status) bool {
			return operational(1)(s) && s.Endpoint == newAddr
		})
		if st.Active.CertificateID != before.Active.CertificateID {
			t.Errorf("credential changed: %s", st.Active.CertificateID)
		}
		os.WriteFile(d.cfgPath, good, 0o600)
	}

	// (c) a change only a restart applies: refused whole
	{
		d.editConfig(func(cfg *config.Config) {
			cfg.State.Dir = filepath.Join(d.dir, "state-elsewhere")
			cfg.Broker.Endpoint, cfg.Broker.Port = splitHostPortInt(t, lab) // live, but not without the rest
		})
		prev, _ := d.status()
		accepted := fwd.accepted.Load()
		st := d.reload(prev.Reload.At, "the restart-only change refused", func(r *control.Reload) bool { return r.Result == control.ReloadRefused })
		for _, want := range []string{"state.dir changed", "only a restart applies it", "systemctl restart bootcertd", "nothing was applied"} {
			if !strings.Contains(st.Reload.Error, want) {
				t.Errorf("refusal %q lacks %q", st.Reload.Error, want)
			}
		}
		if strings.Contains(st.Reload.Error, "broker.port") {
			t.Errorf("refusal %q names a live key as needing a restart", st.Reload.Error)
		}
		st = d.waitFor("generation 1", operational(1))
		if st.Endpoint != newAddr || fwd.accepted.Load() != accepted {
			t.Errorf("the refused file's broker change was applied: endpoint %s, forwarder connections %d -> %d", st.Endpoint, accepted, fwd.accepted.Load())
		}
		if _, err := os.Stat(filepath.Join(d.dir, "state-elsewhere")); !os.IsNotExist(err) {
			t.Errorf("the refused state.dir was created: %v", err)
		}
	}

	// still healthy: it rotates, through the address the reload gave
	accepted := fwd.accepted.Load()
	c.addToRotation(d.name)
	st := d.waitFor("operational generation 2", operational(2))
	if st.Endpoint != newAddr || fwd.accepted.Load() <= accepted {
		t.Errorf("rotation not through the reloaded address: endpoint %s, forwarder connections %d -> %d", st.Endpoint, accepted, fwd.accepted.Load())
	}
	// the first rotation, at info, logged no debug line; this one, after
	// the reload to debug, does ("waiting for a reply")
	if after := d.Log()[reloadMark:]; !strings.Contains(after, "level=DEBUG") {
		t.Errorf("log.level debug not applied: no debug line in the rotation after the reload:\n%s", tail(after, 20))
	}
	d.stop()
}

// promWritten polls for the metrics textfile (a hang guard).
func promWritten(path string) bool {
	return testkit.Poll(30*time.Second, func() bool {
		b, err := os.ReadFile(path)
		return err == nil && bytes.Contains(b, []byte("bootcert_"))
	})
}

func splitHostPortInt(t *testing.T, hp string) (string, int) {
	h, p := splitHostPort(hp)
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, n
}

func names(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
