package daemon

// The configuration reload: SIGHUP, which `systemctl reload bootcertd`
// sends (ExecReload=/bin/kill -HUP $MAINPID in systemd/bootcertd.service).
//
// bootcertd re-reads the file it was started with, checks it as at start
// (config.Load, then Check) and compares it with the running configuration
// (diffConfig). It applies the new file whole or not at all:
//
//   - a file that does not load or check is refused: one log line naming
//     the file, the key and the problem; the running configuration stays;
//   - a file that changes a setting only a restart can change (the thing,
//     the keys, the state directory, the control socket, the identity
//     export) is refused the same way, naming those keys and the restart;
//   - otherwise it is applied: the log level and the metrics textfile at
//     once (nothing the rotation depends on), everything the engine and its
//     connections use when no rotation is in progress (engine.Reconfigure:
//     a rotation ends with the settings it began with). A change to the
//     broker's address, CA, ALPN, proxy or keepalive ends the session and
//     reconnects at once with the same credential.
//
// The outcome is in `bootcertctl status` (control.Reload). docs/bootcertd.md
// has the table of what changes live.

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/metrics"
	"github.com/bootcert/bootcert/daemon/session"
)

// Reload is what makes bootcertd reloadable (cmd/bootcertd sets it up).
type Reload struct {
	// Signals receives SIGHUP (signal.Notify before the daemon starts,
	// so that an early SIGHUP does not end the process).
	Signals <-chan os.Signal
	// Level is the logger's level, which log.level sets.
	Level *slog.LevelVar
}

// RunReloadable is Run with the configuration reloaded on every signal
// from r.Signals.
func RunReloadable(ctx context.Context, c *config.Config, log *slog.Logger, r Reload) error {
	ck, err := Check(c)
	if err != nil {
		return err
	}
	ck.reload = &r
	return ck.Run(ctx, log)
}

// How a setting changes (diffConfig).
type change int

const (
	// changeNow: applied at once (log level, metrics textfile).
	changeNow change = iota
	// changeIdle: applied by the engine once no rotation is in progress.
	changeIdle
	// changeReconnect: changeIdle, then the session reconnects with the
	// same credential (the broker's address, CA, ALPN, proxy, keepalive).
	changeReconnect
	// changeRestart: only a restart changes it; a reload is refused.
	changeRestart
)

// liveKeys classifies the keys a reload may change. A key or section not
// listed here (identity.*, provisioning.*, state.dir, control.socket,
// export.*, and any key added later) needs a restart.
var liveKeys = map[string]change{
	"log.level":        changeNow,
	"metrics.textfile": changeNow,

	"broker.endpoint":    changeReconnect,
	"broker.port":        changeReconnect,
	"broker.root_ca":     changeReconnect, // the path, and the file's content
	"broker.alpn":        changeReconnect,
	"broker.proxy":       changeReconnect,
	"timeouts.keepalive": changeReconnect,

	"timeouts.connect":            changeIdle,
	"timeouts.reply":              changeIdle,
	"timeouts.shutdown":           changeIdle,
	"backoff.initial":             changeIdle,
	"backoff.max":                 changeIdle,
	"backoff.reset_after":         changeIdle,
	"fallback.refusals":           changeIdle,
	"fallback.window":             changeIdle,
	"fallback.bootstrap":          changeIdle,
	"rotation.phase_sessions":     changeIdle,
	"rotation.request_after_life": changeIdle,
	"rotation.max_age":            changeIdle,
	"rotation.request_interval":   changeIdle,
	"verify.issuer_sha256":        changeIdle,
	"verify.location_hosts":       changeIdle,
	"verify.location_ca":          changeIdle, // the path, and the file's content
}

// classify is how a key changes.
func classify(key string) change {
	if c, ok := liveKeys[key]; ok {
		return c
	}
	return changeRestart
}

// keyChange is one changed key and how it changes.
type keyChange struct {
	Key string
	How change
}

// configDiff is what a reload would change.
type configDiff []keyChange

// keys lists the changed keys of at least how (changeNow: all).
func (d configDiff) keys(how change) []string {
	var out []string
	for _, k := range d {
		if k.How == how || how == changeNow {
			out = append(out, k.Key)
		}
	}
	return out
}

func (d configDiff) has(how change) bool {
	for _, k := range d {
		if k.How == how {
			return true
		}
	}
	return false
}

// diffConfig compares the running configuration with a newly checked one:
// every TOML key whose value differs, and the files read at start whose
// content differs under the same path (the bootstrap or claim certificate,
// the broker's and the location CA). Keys are in file order.
func diffConfig(old, new *Checked) configDiff {
	var d configDiff
	seen := map[string]bool{}
	add := func(key string) {
		if !seen[key] {
			seen[key] = true
			d = append(d, keyChange{key, classify(key)})
		}
	}
	walkKeys("", reflect.ValueOf(*old.Config), reflect.ValueOf(*new.Config), add)
	if !chainEqual(old.Bootstrap, new.Bootstrap) {
		if new.Config.Identity.Mode == config.ModeFleetProvisioning {
			add("provisioning.claim_cert")
		} else {
			add("identity.bootstrap_cert")
		}
	}
	if old.Thing != new.Thing {
		add("identity.thing_name")
	}
	if !poolEqual(old.RootCAs, new.RootCAs) {
		add("broker.root_ca")
	}
	if !poolEqual(old.LocationCAs, new.LocationCAs) {
		add("verify.location_ca")
	}
	return d
}

// walkKeys calls add with the dotted TOML key of every leaf field that
// differs between a and b (structs of the same type).
func walkKeys(prefix string, a, b reflect.Value, add func(string)) {
	t := a.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" || name == "" || !f.IsExported() {
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		av, bv := a.Field(i), b.Field(i)
		if f.Type.Kind() == reflect.Struct {
			walkKeys(key, av, bv, add)
			continue
		}
		if !reflect.DeepEqual(av.Interface(), bv.Interface()) && !(isEmpty(av) && isEmpty(bv)) {
			add(key)
		}
	}
}

// isEmpty: a nil and an empty list or map are the same setting.
func isEmpty(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Slice, reflect.Map:
		return v.Len() == 0
	}
	return false
}

func chainEqual(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return bytes.Equal(x.Raw, y.Raw) })
}

func poolEqual(a, b *x509.CertPool) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(b)
}

// sessionConfig is the MQTT session's configuration.
func (ck *Checked) sessionConfig(log *slog.Logger) session.Config {
	c := ck.Config
	var alpn []string
	if c.Broker.ALPN != "" {
		alpn = []string{c.Broker.ALPN}
	}
	return session.Config{Address: c.Address(), ServerName: c.Broker.Endpoint, RootCAs: ck.RootCAs, ALPN: alpn,
		ClientID: ck.Thing, KeepAlive: c.Timeouts.KeepAlive.D(), Timeout: c.Timeouts.Connect.D(), Logger: log, Proxy: ck.Proxy}
}

// locationFetcher is the certificate downloader, nil when
// verify.location_hosts is empty.
func (ck *Checked) locationFetcher() *locationFetcher {
	c := ck.Config
	if len(c.Verify.LocationHosts) == 0 {
		return nil
	}
	return &locationFetcher{allowed: c.Verify.LocationHosts, roots: ck.LocationCAs, timeout: c.Timeouts.Reply.D(), proxy: ck.Proxy}
}

// tunables are the engine's settings a reload may change.
func (ck *Checked) tunables() engine.Tunables {
	c := ck.Config
	return engine.Tunables{
		Endpoint: c.Address(), ReplyTimeout: c.Timeouts.Reply.D(), Backoff: engine.Backoff{Initial: c.Backoff.Initial.D(), Max: c.Backoff.Max.D()},
		RollbackRefusals: c.Fallback.Refusals, RollbackWindow: c.Fallback.Window.D(), FallbackToBoot: c.Fallback.Bootstrap,
		IssuerSHA256: c.Verify.IssuerSHA256, ShutdownQuiesce: c.Timeouts.Shutdown.D(), PhaseSessions: c.Rotation.PhaseSessions,
		StableAfter: c.Backoff.ResetAfter.D(), RequestAfterLife: c.Rotation.RequestAfterLife, MaxAge: c.Rotation.MaxAge.D(),
		RequestInterval: c.Rotation.RequestInterval.D(),
	}
}

// dialer adapts session.Dial to engine.Dialer; a reload swaps its
// settings (on the engine's goroutine, between sessions).
type dialer struct {
	cfg atomic.Pointer[session.Config]
}

func newDialer(cfg session.Config) *dialer {
	d := &dialer{}
	d.cfg.Store(&cfg)
	return d
}

func (d *dialer) Dial(ctx context.Context, c *engine.Credential) (engine.Conn, error) {
	s, err := session.Dial(ctx, *d.cfg.Load(), session.Credential{Chain: c.ChainDER(), Signer: c.Signer})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// fetcher is the engine's Fetcher; a reload swaps the downloader (nil:
// downloads not configured).
type fetcher struct {
	f atomic.Pointer[locationFetcher]
}

func newFetcher(f *locationFetcher) *fetcher {
	x := &fetcher{}
	x.f.Store(f)
	return x
}

func (x *fetcher) Fetch(ctx context.Context, raw string) ([]byte, error) {
	f := x.f.Load()
	if f == nil {
		return nil, fmt.Errorf("%w: downloads are not configured (verify.location_hosts)", engine.ErrLocation)
	}
	return f.Fetch(ctx, raw)
}

// reloader re-reads the configuration on SIGHUP (Checked.Run's loop).
type reloader struct {
	r     *Reload
	log   *slog.Logger
	eng   *engine.Engine
	obs   *observers
	dial  *dialer
	fetch *fetcher

	mu  sync.Mutex
	cur *Checked // the running configuration (applied or waiting for the engine)
}

func (ck *Checked) newReloader(log *slog.Logger, eng *engine.Engine, obs *observers, dial *dialer, fetch *fetcher) *reloader {
	return &reloader{r: ck.reload, log: log, eng: eng, obs: obs, dial: dial, fetch: fetch, cur: ck}
}

// signals is the channel Run's loop waits on (nil: never).
func (rl *reloader) signals() <-chan os.Signal {
	if rl.r == nil {
		return nil
	}
	return rl.r.Signals
}

// reload re-reads the configuration file and applies it whole or refuses
// it (see the top of this file). It tells systemd about the reload
// (RELOADING=1 with MONOTONIC_USEC=, then READY=1: sd_notify(3); what
// Type=notify-reload, systemd 253 on, waits for, and harmless with
// Type=notify and ExecReload=kill -HUP on 252).
func (rl *reloader) reload() {
	notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=reloading the configuration", monotonicUsec()))
	res := rl.apply()
	summary := rl.eng.Status().Summary
	switch res.Result {
	case control.ReloadRefused:
		summary = "configuration reload refused (" + res.Error + "); " + summary
	case control.ReloadPending:
		summary = "configuration reload waits for the rotation in progress; " + summary
	}
	notify("READY=1\nSTATUS=" + summary)
}

func notify(state string) { sd.SdNotify(false, state) }

// apply reloads and records the outcome for status (observers.reload).
func (rl *reloader) apply() *control.Reload {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	res := rl.try()
	rl.obs.reload.Store(res)
	return res
}

// try is apply's work, with rl.mu held.
func (rl *reloader) try() *control.Reload {
	path := rl.cur.Config.Path
	res := &control.Reload{At: time.Now().UTC(), File: path}
	refuse := func(err error) *control.Reload {
		res.Result, res.Error = control.ReloadRefused, err.Error()
		rl.log.Error("configuration reload refused; the running configuration is kept", "file", path, "err", err)
		return res
	}
	c, err := config.Load(path)
	if err != nil {
		return refuse(err)
	}
	nck, err := Check(c)
	if err != nil {
		return refuse(fmt.Errorf("config %s: %w", path, err))
	}
	d := diffConfig(rl.cur, nck)
	res.Changed = d.keys(changeNow)
	if restart := d.keys(changeRestart); len(restart) > 0 {
		return refuse(fmt.Errorf("config %s: %s changed: only a restart applies %s (systemctl restart bootcertd); nothing was applied",
			path, strings.Join(restart, ", "), map[bool]string{true: "it", false: "them"}[len(restart) == 1]))
	}
	if len(d) == 0 {
		res.Result = control.ReloadUnchanged
		rl.log.Info("configuration reloaded: nothing changed", "file", path)
		return res
	}
	old := rl.cur
	rl.cur = nck
	// at once: nothing a rotation depends on
	if rl.r.Level != nil && old.Config.Log.Level != c.Log.Level {
		rl.r.Level.UnmarshalText([]byte(c.Log.Level))
	}
	if old.Config.Metrics.Textfile != c.Metrics.Textfile {
		rl.obs.setTextfile(c.Metrics.Textfile)
	}
	res.Result, res.AppliedAt = control.ReloadApplied, res.At
	if d.has(changeIdle) || d.has(changeReconnect) {
		t := nck.tunables()
		t.Reconnect = d.has(changeReconnect)
		scfg, lf := nck.sessionConfig(rl.log), nck.locationFetcher()
		t.Apply = func() { rl.dial.cfg.Store(&scfg); rl.fetch.f.Store(lf) }
		// on the engine's goroutine; it waits for apply to have recorded
		// res (rl.mu) and changes it only if no later reload replaced it
		t.Done = func() {
			rl.mu.Lock()
			defer rl.mu.Unlock()
			if rl.obs.reload.Load() == res {
				a := *res
				a.Result, a.AppliedAt = control.ReloadApplied, time.Now().UTC()
				rl.obs.reload.Store(&a)
			}
		}
		rl.eng.Reconfigure(t)
		if rl.eng.ReconfigurePending() {
			res.Result, res.AppliedAt = control.ReloadPending, time.Time{}
		}
	}
	rl.log.Info("configuration reloaded", "file", path, "changed", strings.Join(res.Changed, ","), "result", res.Result)
	return res
}

// setTextfile moves the metrics textfile (metrics.textfile; "" turns it
// off): the old file is removed, so that node_exporter never reads stale
// figures, and the new one is written with the latest status.
func (o *observers) setTextfile(path string) {
	var tf *metrics.Textfile
	if path != "" {
		tf = metrics.NewTextfile(path, nil, o.log)
	}
	o.tfMu.Lock()
	old := o.textfile
	o.textfile = tf
	if old != nil {
		if err := old.Remove(); err != nil {
			o.log.Warn("removing the previous metrics textfile", "err", err)
		}
	}
	o.tfMu.Unlock()
	o.mu.Lock()
	latest := o.latest
	o.mu.Unlock()
	if latest != nil {
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}
}

// writeTextfile writes the metrics textfile, if any (never while a reload
// moves it).
func (o *observers) writeTextfile(s engine.Status) {
	o.tfMu.Lock()
	defer o.tfMu.Unlock()
	if o.textfile != nil {
		o.textfile.Update(s)
	}
}
