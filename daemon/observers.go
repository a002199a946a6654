package daemon

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/identity"
	"github.com/bootcert/bootcert/daemon/metrics"
	"github.com/bootcert/bootcert/keystore"
)

// observers are what follows the engine's status besides sd_notify: the
// identity export and hooks (export.*), the metrics textfile (metrics.*) and
// the TPM lockout reading. None of them runs on the engine's goroutine.
type observers struct {
	exp      *identity.Exporter
	textfile *metrics.Textfile // guarded by tfMu (a reload moves it)
	tfMu     sync.Mutex
	lockout  atomic.Pointer[control.Lockout]
	reload   atomic.Pointer[control.Reload] // the last configuration reload (reload.go)
	log      *slog.Logger
	cfg      *config.Config
	state    *credset.Store

	mu     sync.Mutex
	latest *engine.Status
	wake   chan struct{}
}

// lockoutEvery is how often the TPM's lockout counter is read besides at
// start and when the active key changes.
const lockoutEvery = 5 * time.Minute

func newObservers(ck *Checked, log *slog.Logger) (*observers, error) {
	c := ck.Config
	o := &observers{log: log, cfg: c, wake: make(chan struct{}, 1)}
	var err error
	if o.state, err = credset.Open(c.State.Dir); err != nil {
		return nil, err
	}
	if c.Export.Dir != "" || c.Export.HooksDir != "" {
		o.exp, err = identity.New(identity.Config{Dir: c.Export.Dir, HooksDir: c.Export.HooksDir, HookTimeout: c.Export.HookTimeout.D(),
			StateDir: c.State.Dir, Bootstrap: ck.Bootstrap, Log: log})
		if err != nil {
			return nil, err
		}
	}
	if c.Metrics.Textfile != "" {
		o.textfile = metrics.NewTextfile(c.Metrics.Textfile, nil, log)
	}
	return o, nil
}

// observe is called from the engine's OnStatus: it only hands over.
func (o *observers) observe(s engine.Status) {
	if o.exp != nil {
		o.exp.Observe(s)
	}
	o.mu.Lock()
	o.latest = &s
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// withLockout adds the last lockout reading to a status.
func (o *observers) withLockout(s engine.Status) engine.Status {
	s.Lockout = o.lockout.Load()
	s.Reload = o.reload.Load()
	return s
}

// run writes the textfile and reads the lockout counter until ctx ends.
func (o *observers) run(ctx context.Context) {
	var wg sync.WaitGroup
	if o.exp != nil {
		wg.Add(1)
		go func() { defer wg.Done(); o.exp.Run(ctx) }()
	}
	defer wg.Wait()
	tick := time.NewTicker(lockoutEvery)
	defer tick.Stop()
	var lastGen = -1
	var last engine.Status
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			o.readLockout(ctx, last.Active.Generation, last.Active.Backend)
		case <-o.wake:
			o.mu.Lock()
			s := *o.latest
			o.mu.Unlock()
			last = s
			if s.Active.Generation != lastGen && s.Active.CertificateID != "" {
				lastGen = s.Active.Generation
				o.readLockout(ctx, s.Active.Generation, s.Active.Backend)
			}
		}
		if last.Thing != "" {
			o.writeTextfile(o.withLockout(last))
		}
	}
}

// readLockout reads the dictionary-attack state of the TPM behind the
// active key, bounded by a few seconds (a hung TPM must not stop the
// figures).
func (o *observers) readLockout(ctx context.Context, gen int, backend string) {
	if backend != "tpm" {
		o.lockout.Store(nil)
		return
	}
	uri := o.cfg.Identity.BootstrapKey
	if gen > 0 {
		c, err := o.state.Get(gen)
		if err != nil {
			return
		}
		uri = c.KeyURI
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	done := make(chan struct{})
	var lo keystore.Lockout
	var err error
	go func() { lo, err = keystore.ReadLockout(ctx, uri); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		o.log.Warn("reading the TPM lockout counter timed out")
		return
	}
	if err != nil {
		o.log.Debug("reading the TPM lockout counter", "err", err)
		return
	}
	o.lockout.Store(&control.Lockout{Counter: lo.Counter, MaxTries: lo.MaxTries, InLockout: lo.InLockout, ReadAt: time.Now().UTC()})
}

// statusView is the control socket's view of the engine: its status plus
// what the daemon adds (the lockout reading).
type statusView struct {
	*engine.Engine
	o *observers
}

func (v statusView) Status() control.Status { return v.o.withLockout(v.Engine.Status()) }

func (v statusView) Watch() (<-chan control.Status, func()) {
	in, cancel := v.Engine.Watch()
	out := make(chan control.Status, 8)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-in:
				select {
				case out <- v.o.withLockout(s):
				default:
				}
			case <-stop:
				return
			}
		}
	}()
	var once sync.Once
	return out, func() { once.Do(func() { cancel(); close(stop) }) }
}
