package e2e

import (
	"context"
	"crypto"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/daemon"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/daemon/session"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// The clock tests run the real engine in-process, on a fake clock, with the
// real MQTT session against the lab: bootcertd takes no injected clock (and
// the gateway's real clock is not ours to step), so this is the engine as
// daemon.Checked.Run builds it, with the clock the only thing replaced. The
// lab runs on real time, as AWS does: only the device's clock jumps.

// jumpConn sees the engine's publishes before they go out.
type jumpConn struct {
	engine.Conn
	hook func(topic string, payload []byte)
}

func (c jumpConn) Publish(ctx context.Context, topic string, payload []byte) error {
	c.hook(topic, payload)
	return c.Conn.Publish(ctx, topic, payload)
}

func (c jumpConn) PublishNoWait(topic string, payload []byte) error {
	c.hook(topic, payload)
	return c.Conn.PublishNoWait(topic, payload)
}

func (c jumpConn) ClosedByPeer() bool {
	p, ok := c.Conn.(interface{ ClosedByPeer() bool })
	return ok && p.ClosedByPeer()
}

type jumpDialer struct {
	sessionDialer
	hook func(topic string, payload []byte)
}

func (d jumpDialer) Dial(ctx context.Context, c *engine.Credential) (engine.Conn, error) {
	conn, err := d.sessionDialer.Dial(ctx, c)
	if err != nil {
		return nil, err
	}
	return jumpConn{conn, d.hook}, nil
}

// jumpKeys calls jump once the staged key is made.
type jumpKeys struct {
	engine.KeystoreKeys
	jump func()
}

func (k jumpKeys) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error) {
	s, err := k.KeystoreKeys.Generate(ctx, uri, alg)
	k.jump()
	return s, err
}

// TestClockJumpMidRotationLab (issue 14, done-when: "a ±24 h jump
// mid-rotation ends committed or rolled back"): against the lab, the
// device's clock steps a day forward or back at each moment of its first
// rotation. It ends: committed, or (a day back before the certificate is
// verified: the cloud's certificate is not yet valid on the device's
// clock) FAILED in the cloud with nothing switched; the device stays
// connected with a credential the broker accepts, and once its clock is
// right again the next rotation commits.
func TestClockJumpMidRotationLab(t *testing.T) {
	c := newCloud(t)
	points := []string{"key-staged", "get-awaited", "cert-staged", "switched", "ack-awaited"}
	for _, point := range points {
		for _, d := range []time.Duration{24 * time.Hour, -24 * time.Hour} {
			dir := map[bool]string{true: "forward", false: "back"}[d > 0]
			t.Run(point+"/"+dir, func(t *testing.T) {
				name := "gw-clk-" + point + "-" + dir
				dev := newDevice(t, c, name, deviceOpts{kind: onFile})
				clk := clock.NewFake(time.Now())
				var once sync.Once
				jump := func() { once.Do(func() { clk.Jump(d) }) }
				hook := func(topic string, payload []byte) {
					p := string(payload)
					switch {
					case point == "get-awaited" && topic == "certificates/"+name+"/get",
						point == "ack-awaited" && topic == "certificates/"+name+"/ack",
						(point == "cert-staged" || point == "switched") && strings.HasSuffix(topic, "/update") && strings.Contains(p, `"progress":"`+point+`"`):
						jump()
					}
				}
				var keys engine.Keys = engine.KeystoreKeys{}
				if point == "key-staged" {
					keys = jumpKeys{jump: jump}
				}
				eng := startClockEngine(t, dev, clk, keys, hook)
				s := waitEngine(t, eng, "the first rotation's end", func(s engine.Status) bool {
					return s.Phase == journal.Idle && s.LastResult != "" && s.Connection == "connected" && s.ConnectedWith == s.Active.Generation
				})
				wantFail := d < 0 && (point == "key-staged" || point == "get-awaited")
				js, det := c.jobStatus(name)
				if wantFail {
					if s.LastResult != protocol.JobFailed || s.Active.Generation != 0 || !strings.Contains(s.LastReason, "not valid before") || js != types.JobExecutionStatusFailed {
						t.Fatalf("want FAILED with nothing switched: status %+v; cloud %s %v", s, js, det)
					}
				} else if s.LastResult != protocol.JobSucceeded || s.Active.Generation != 1 || js != types.JobExecutionStatusSucceeded {
					t.Fatalf("want committed generation 1: status %+v; cloud %s %v", s, js, det)
				}
				if s.ClockWait != "" {
					t.Errorf("a clock a day off made the engine wait: %q", s.ClockWait)
				}
				t.Logf("%s: %s (%s), cloud %s", name, s.LastResult, s.LastReason, js)
				// the cloud settles the execution (the reaper, on the FAILED
				// event, retires what it issued and takes the thing out of the
				// rotation group): only then is another rotation queued
				testkit.Eventually(t, 60*time.Second, func() bool { return !inRotationGroup(c, name) }, "%s still in the rotation group", name)
				// the clock is right again: the next rotation commits
				clk.Jump(-d)
				gen := s.Active.Generation
				c.addToRotation(name)
				waitEngine(t, eng, "the next rotation", func(s engine.Status) bool {
					return s.Phase == journal.Idle && s.LastResult == protocol.JobSucceeded && s.Active.Generation > gen && s.Connection == "connected" && s.ConnectedWith == s.Active.Generation
				})
			})
		}
	}
}

// startClockEngine runs dev's engine in-process on clk (time flows with
// real time: 10 ms a 10 ms, so backoffs and retries fire), stopped at the
// test's end.
func startClockEngine(t *testing.T, dev *device, clk *clock.Fake, keys engine.Keys, hook func(string, []byte)) *engine.Engine {
	t.Helper()
	cfg, err := config.Load(dev.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := daemon.Check(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ecfg := engine.Config{
		Thing: ck.Thing, Endpoint: cfg.Address(), BootstrapKey: cfg.Identity.BootstrapKey, Bootstrap: ck.Bootstrap,
		Algorithm: ck.Algorithm, StateDir: cfg.State.Dir, OperationalFn: cfg.OperationalKeyURI,
		ReplyTimeout: cfg.Timeouts.Reply.D(), Backoff: engine.Backoff{Initial: cfg.Backoff.Initial.D(), Max: cfg.Backoff.Max.D()},
		RollbackRefusals: cfg.Fallback.Refusals, RollbackWindow: cfg.Fallback.Window.D(), FallbackToBoot: cfg.Fallback.Bootstrap,
		ShutdownQuiesce: cfg.Timeouts.Shutdown.D(), PhaseSessions: cfg.Rotation.PhaseSessions, StableAfter: cfg.Backoff.ResetAfter.D(),
	}
	lg := slog.New(slog.NewTextHandler(syncWriter{&dev.logMu, dev.log}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	scfg := session.Config{Address: cfg.Address(), ServerName: cfg.Broker.Endpoint, RootCAs: ck.RootCAs, ClientID: ck.Thing,
		KeepAlive: cfg.Timeouts.KeepAlive.D(), Timeout: cfg.Timeouts.Connect.D(), Logger: lg}
	eng, err := engine.New(ecfg, jumpDialer{sessionDialer{scfg}, hook}, keys, nil, clk, lg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	go func() {
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				clk.Advance(10 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("engine: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("the engine did not stop")
		}
		keystore.CloseAll(context.Background())
		if t.Failed() {
			t.Logf("log:\n%s", tail(dev.Log(), 40))
		}
	})
	return eng
}

// waitEngine waits for a status condition (a hang guard).
func waitEngine(t *testing.T, eng *engine.Engine, what string, cond func(engine.Status) bool) engine.Status {
	t.Helper()
	var s engine.Status
	if !testkit.Poll(90*time.Second, func() bool { s = eng.Status(); return cond(s) }) {
		t.Fatalf("timed out waiting for %s; status %+v", what, s)
	}
	return s
}

// inRotationGroup reports whether the lab has thing in the rotation group.
func inRotationGroup(c *cloudEnv, thing string) bool {
	gs, err := c.api.ListThingGroupsForThing(context.Background(), &iot.ListThingGroupsForThingInput{ThingName: aws.String(thing)})
	if err != nil {
		return true
	}
	for _, g := range gs.ThingGroups {
		if aws.ToString(g.GroupName) == "bootcert-rotation" {
			return true
		}
	}
	return false
}

// TestRotationWaitsForClockLab: a new gateway whose clock says 1970 does not
// connect to the lab (its TLS check of the broker and every certificate
// judgement would be wrong); it says why, and once the clock is set it
// registers and rotates.
func TestRotationWaitsForClockLab(t *testing.T) {
	c := newCloud(t)
	dev := newDevice(t, c, "gw-clk-1970", deviceOpts{kind: onFile})
	clk := clock.NewFake(time.Unix(0, 0).UTC())
	eng := startClockEngine(t, dev, clk, engine.KeystoreKeys{}, func(string, []byte) {})
	s := waitEngine(t, eng, "the clock wait", func(s engine.Status) bool { return s.ClockWait != "" })
	if !strings.HasPrefix(s.Summary, "waiting for the system clock: the system clock says 1970-01-01") {
		t.Errorf("summary %q", s.Summary)
	}
	// ten seconds of engine time at 1970 (the flow moves it): still waiting
	testkit.Eventually(t, 30*time.Second, func() bool { return clk.Now().After(time.Unix(10, 0)) }, "the fake clock does not flow")
	if s := eng.Status(); s.ClockWait == "" || s.Counters.Connects != 0 || s.Counters.Refusals != 0 {
		t.Fatalf("at 1970: %+v", s)
	}
	if n := strings.Count(dev.Log(), "waiting for the system clock"); n != 1 {
		t.Errorf("%d log lines about the clock, want 1", n)
	}
	set := time.Now()
	clk.Set(set)
	s = waitEngine(t, eng, "generation 1", operational(1))
	if s.LastResult != protocol.JobSucceeded || s.ClockWait != "" {
		t.Errorf("status %+v", s)
	}
	t.Logf("committed %s (engine clock) after the clock was set", s.LastResultAt.Sub(set).Round(time.Millisecond))
}
