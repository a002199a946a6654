// Package daemon wires bootcertd together: configuration, the rotation
// engine over a real MQTT session and the keystore, the control socket and
// systemd notifications. cmd/bootcertd only parses flags and signals.
package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/provisioning"
	"github.com/bootcert/bootcert/daemon/proxy"
	"github.com/bootcert/bootcert/daemon/session"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// Checked is a configuration with the files it names read and validated:
// what Check found, and what Run starts from.
type Checked struct {
	Config    *config.Config
	RootCAs   *x509.CertPool      // broker.root_ca
	Bootstrap []*x509.Certificate // identity.bootstrap_cert, leaf first
	Thing     string              // identity.thing_name, else the bootstrap CN
	// LocationCAs is verify.location_ca (nil: the system roots).
	LocationCAs *x509.CertPool
	Algorithm   keystore.Algorithm
	// Proxy is broker.proxy (nil: direct).
	Proxy *url.URL

	reload *Reload // RunReloadable (reload.go); nil: SIGHUP not handled here
}

// Check validates a configuration and the files it names, without touching
// keys or the network. It is `bootcertd --check-config`; Run starts from what
// it returns.
func Check(c *config.Config) (*Checked, error) {
	pool, err := loadPool(c.Broker.RootCA)
	if err != nil {
		return nil, err
	}
	chain, err := loadBootstrap(c)
	if err != nil {
		return nil, err
	}
	thing, err := thingName(c, chain[0])
	if err != nil {
		return nil, err
	}
	ck := &Checked{Config: c, RootCAs: pool, Bootstrap: chain, Thing: thing}
	if c.Verify.LocationCA != "" {
		if ck.LocationCAs, err = loadPool(c.Verify.LocationCA); err != nil {
			return nil, err
		}
	}
	if c.Broker.Proxy != "" {
		if ck.Proxy, err = proxy.Parse(c.Broker.Proxy); err != nil {
			return nil, fmt.Errorf("broker.proxy: %w", err)
		}
	}
	if ck.Algorithm, err = keystore.ParseAlgorithm(c.Identity.KeyAlgorithm); err != nil {
		return nil, fmt.Errorf("identity.key_algorithm: %w", err)
	}
	if err := checkKeyFiles(c); err != nil {
		return nil, err
	}
	return ck, nil
}

func loadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA file %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", path)
	}
	return pool, nil
}

func loadBootstrap(c *config.Config) ([]*x509.Certificate, error) {
	if c.Identity.Mode == config.ModeFleetProvisioning {
		// the claim certificate stands in generation 0's place; the engine
		// never falls back to it (it only reaches the provisioning topics)
		data, err := os.ReadFile(c.Provisioning.ClaimCert)
		if err != nil {
			return nil, fmt.Errorf("reading the claim certificate %s (provisioning.claim_cert): %w", c.Provisioning.ClaimCert, err)
		}
		chain, err := protocol.ParseChain(data)
		if err != nil {
			return nil, fmt.Errorf("claim certificate %s: %w", c.Provisioning.ClaimCert, err)
		}
		return chain, nil
	}
	data, err := os.ReadFile(c.Identity.BootstrapCert)
	if err != nil {
		return nil, fmt.Errorf("reading the bootstrap certificate %s (identity.bootstrap_cert): %w", c.Identity.BootstrapCert, err)
	}
	chain, err := protocol.ParseChain(data)
	if err != nil {
		return nil, fmt.Errorf("bootstrap certificate %s: %w", c.Identity.BootstrapCert, err)
	}
	return chain, nil
}

func thingName(c *config.Config, leaf *x509.Certificate) (string, error) {
	if c.Identity.Mode == config.ModeFleetProvisioning {
		return c.Provisioning.SerialNumber, nil
	}
	if c.Identity.ThingName != "" {
		return c.Identity.ThingName, nil
	}
	cn := leaf.Subject.CommonName
	if err := protocol.ValidThingName(cn); err != nil {
		return "", fmt.Errorf("bootstrap certificate %s: its CN cannot be the thing name: %w (set identity.thing_name)", c.Identity.BootstrapCert, err)
	}
	return cn, nil
}

// Run checks a configuration (Check) and runs bootcertd until ctx ends
// (SIGTERM).
func Run(ctx context.Context, c *config.Config, log *slog.Logger) error {
	ck, err := Check(c)
	if err != nil {
		return err
	}
	return ck.Run(ctx, log)
}

// Run runs bootcertd with a checked configuration until ctx ends (SIGTERM).
func (ck *Checked) Run(ctx context.Context, log *slog.Logger) error {
	c, chain, thing := ck.Config, ck.Bootstrap, ck.Thing
	if err := os.MkdirAll(c.State.Dir, 0o700); err != nil {
		return fmt.Errorf("state directory %s (state.dir): %w", c.State.Dir, err)
	}
	for _, uri := range []string{c.Identity.BootstrapKey, c.Identity.OperationalKey, c.Identity.PreProvisioned, c.Provisioning.ClaimKey} {
		if strings.HasPrefix(uri, "file:") {
			log.Warn("a key is kept in software (file: URI): development only, not hardware-protected")
			break
		}
	}
	scfg := ck.sessionConfig(log)
	fetch := newFetcher(ck.locationFetcher())
	alg := ck.Algorithm
	bootKey, fallback := c.Identity.BootstrapKey, c.Fallback.Bootstrap
	if c.Identity.Mode == config.ModeFleetProvisioning {
		bootKey, fallback = c.Provisioning.ClaimKey, false
		if err := ck.provision(ctx, scfg, log); err != nil {
			return err
		}
	}
	ecfg := engine.Config{
		Thing: thing, Endpoint: c.Address(), BootstrapKey: bootKey, Bootstrap: chain,
		PreProvisionedKey: c.Identity.PreProvisioned, AttestationKey: c.Identity.AttestationKey, Algorithm: alg, StateDir: c.State.Dir,
		ReplyTimeout: c.Timeouts.Reply.D(), Backoff: engine.Backoff{Initial: c.Backoff.Initial.D(), Max: c.Backoff.Max.D()},
		RollbackRefusals: c.Fallback.Refusals, RollbackWindow: c.Fallback.Window.D(), FallbackToBoot: fallback,
		IssuerSHA256: c.Verify.IssuerSHA256, ShutdownQuiesce: c.Timeouts.Shutdown.D(),
		PhaseSessions: c.Rotation.PhaseSessions, StableAfter: c.Backoff.ResetAfter.D(),
		RequestAfterLife: c.Rotation.RequestAfterLife, MaxAge: c.Rotation.MaxAge.D(), RequestInterval: c.Rotation.RequestInterval.D(),
	}
	if c.Identity.OperationalKey != "" {
		ecfg.OperationalFn = c.OperationalKeyURI
	}
	dial := newDialer(scfg)
	eng, err := engine.New(ecfg, dial, engine.KeystoreKeys{}, fetch, clock.Real{}, log)
	if err != nil {
		return err
	}
	obs, err := newObservers(ck, log)
	if err != nil {
		return err
	}
	var last string
	var mu sync.Mutex
	eng.OnStatus(func(s engine.Status) {
		obs.observe(s)
		mu.Lock()
		defer mu.Unlock()
		if s.Summary != last {
			last = s.Summary
			sd.SdNotify(false, "STATUS="+s.Summary)
		}
	})
	obsCtx, obsStop := context.WithCancel(context.Background())
	obsDone := make(chan struct{})
	go func() { obs.run(obsCtx); close(obsDone) }()
	defer func() { obsStop(); <-obsDone }()
	if c.Control.Socket != "" {
		srv, err := control.Listen(c.Control.Socket, statusView{eng, obs}, log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	// after the engine has closed its signers: tpm2-pkcs11 flushes the keys
	// it loaded into the TPM only at logout (no resource manager: they
	// would stay loaded after exit)
	defer func() {
		if err := keystore.CloseAll(context.Background()); err != nil {
			log.Warn("closing keys at shutdown", "err", err)
		}
	}()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	// READY once the engine runs; it does not wait for the network.
	sd.SdNotify(false, sd.SdNotifyReady+"\nSTATUS=starting, thing "+thing)
	log.Info("bootcertd started", "thing", thing, "endpoint", c.Address(), "state", c.State.Dir)
	rl := ck.newReloader(log, eng, obs, dial, fetch)
	var tick <-chan time.Time
	iv, err := sd.SdWatchdogEnabled(false)
	if err == nil && iv > 0 {
		t := time.NewTicker(iv / 3)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		case <-tick:
			// fed only while the engine loop runs (a dial may hold it for
			// up to timeouts.connect, a SUBACK or PUBACK wait for up to
			// timeouts.reply: keep WatchdogSec above 1.5x the larger)
			if time.Since(eng.LastBeat()) < iv*2/3 {
				sd.SdNotify(false, sd.SdNotifyWatchdog)
			} else {
				log.Error("engine unresponsive; not feeding the watchdog", "since", time.Since(eng.LastBeat()).Round(time.Second))
			}
		case <-rl.signals():
			rl.reload()
		case <-ctx.Done():
			sd.SdNotify(false, sd.SdNotifyStopping)
			log.Info("stopping")
			cancel()
			err := <-done
			return err
		}
	}
}

// provision onboards by claim (identity.mode = "fleet-provisioning") before
// the engine starts; it returns at once on a device already onboarded.
func (ck *Checked) provision(ctx context.Context, scfg session.Config, log *slog.Logger) error {
	c := ck.Config
	params := map[string]string{}
	for k, v := range c.Provisioning.Parameters {
		params[k] = v
	}
	params[protocol.ParamSerialNumber] = c.Provisioning.SerialNumber // config refuses it in parameters
	sd.SdNotify(false, "STATUS=onboarding by claim (fleet provisioning template "+c.Provisioning.Template+")")
	return provisioning.Run(ctx, provisioning.Config{
		Thing: ck.Thing, Template: c.Provisioning.Template, Parameters: params,
		ClaimKey: c.Provisioning.ClaimKey, Claim: ck.Bootstrap, OperationalKey: c.OperationalKeyURI(1), Algorithm: ck.Algorithm,
		StateDir: c.State.Dir, Session: scfg, ReplyTimeout: c.Timeouts.Reply.D(), Retry: c.Backoff.Initial.D(), RetryMax: c.Backoff.Max.D(),
		Refusals: c.Fallback.Refusals, Clock: clock.Real{}, Log: log,
	})
}
