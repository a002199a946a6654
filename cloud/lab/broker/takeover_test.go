package broker

import (
	"context"
	"crypto/x509"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	mqttsession "github.com/bootcert/bootcert/daemon/session"
)

// pahoDialer returns a function that connects as dev-1 with bootcertd's
// MQTT session (paho) to the test broker, failing the test on an error.
func (e *env) pahoDialer(t *testing.T) (context.Context, func() *mqttsession.Session) {
	_, leaf := e.device("dev-1", StatusActive)
	pem, err := os.ReadFile(e.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := mqttsession.Config{Address: e.srv.Addr(), ServerName: "localhost", RootCAs: pool, ClientID: "dev-1", KeepAlive: 30 * time.Second, Timeout: 10 * time.Second}
	cred := mqttsession.Credential{Chain: [][]byte{leaf.Cert.Raw}, Signer: leaf.Key}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx, func() *mqttsession.Session {
		t.Helper()
		s, err := mqttsession.Dial(ctx, cfg, cred)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// receives subscribes s to devices/dev-1/in, has the lab publish there and
// reports whether the message arrived.
func (e *env) receives(t *testing.T, ctx context.Context, s *mqttsession.Session) bool {
	t.Helper()
	got := make(chan struct{}, 1)
	if err := s.Subscribe(ctx, "devices/dev-1/in", func(string, []byte) {
		select {
		case got <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Publish("devices/dev-1/in", []byte("x"), 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
		return true
	case <-time.After(3 * time.Second): // a hang guard, not a timing assertion
		return false
	}
}

// slowTeardown holds the teardown of a closed connection that still has
// subscriptions (mochi unsubscribes it between its "taken over" check and
// deleting its client ID), widening the window of mochi's takeover race.
type slowTeardown struct {
	mqtt.HookBase
	armed   atomic.Bool
	entered chan struct{}
	left    chan struct{}
}

func (h *slowTeardown) ID() string { return "slow-teardown" }
func (h *slowTeardown) Provides(b byte) bool {
	return b == mqtt.OnUnsubscribed
}
func (h *slowTeardown) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if len(pk.Filters) == 0 || !cl.Closed() || !h.armed.CompareAndSwap(true, false) {
		return
	}
	close(h.entered)
	time.Sleep(300 * time.Millisecond)
	close(h.left)
}

// TestReconnectSameClientIDDuringTeardown: a device that closes its
// connection and connects again at once with the same client ID (bootcertd
// switching credentials) while the broker is still tearing the old
// connection down gets the messages of its new subscriptions. AWS IoT Core
// serves the new connection; mochi's teardown of the old one deleted the new
// client from its client table, and every delivery to it was dropped while
// SUBACKs, PUBACKs and pings went on.
func TestReconnectSameClientIDDuringTeardown(t *testing.T) {
	e := newEnv(t)
	h := &slowTeardown{entered: make(chan struct{}), left: make(chan struct{})}
	if err := e.srv.mq.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	ctx, dial := e.pahoDialer(t)
	a := dial()
	if !e.receives(t, ctx, a) {
		t.Fatal("first connection: no message")
	}
	h.armed.Store(true)
	a.Close(0)
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the broker did not tear the first connection down")
	}
	b := dial()
	defer b.Close(0)
	<-h.left
	// the old connection's teardown ends right after the hook
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if _, ok := e.srv.mq.Clients.Get("dev-1"); !ok {
			break
		}
	}
	if cl, ok := e.srv.mq.Clients.Get("dev-1"); !ok || cl.Closed() {
		t.Errorf("the live second connection is not in the broker's client table")
	}
	if !e.receives(t, ctx, b) {
		t.Fatal("second connection: the message for its subscription was dropped")
	}
}

// TestReconnectSameClientID: the same, many times, with the broker's own
// timing (the race the test above makes certain).
func TestReconnectSameClientID(t *testing.T) {
	e := newEnv(t)
	ctx, dial := e.pahoDialer(t)
	for i := 0; i < 300; i++ {
		s := dial()
		ok := e.receives(t, ctx, s)
		s.Close(0) // and connect again at once, as bootcertd does after a switch
		if !ok {
			t.Fatalf("round %d: the new connection got no message for its subscription", i)
		}
	}
}

// TestDuplicateClientIDTakesOver: a second live connection with the same
// client ID ends the first (disconnectReason DUPLICATE_CLIENTID, as AWS IoT
// Core reports it) and is served.
func TestDuplicateClientIDTakesOver(t *testing.T) {
	e := newEnv(t)
	ctx, dial := e.pahoDialer(t)
	a := dial()
	defer a.Close(0)
	b := dial()
	defer b.Close(0)
	select {
	case <-a.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the first connection was not ended")
	}
	if !e.receives(t, ctx, b) {
		t.Fatal("the second connection got no message")
	}
	for end := time.After(10 * time.Second); ; {
		select {
		case m := <-e.msgs:
			if m.Topic == "$aws/events/presence/disconnected/dev-1" {
				if !strings.Contains(string(m.Payload), `"disconnectReason":"DUPLICATE_CLIENTID"`) {
					t.Errorf("disconnected event %s", m.Payload)
				}
				return
			}
		case <-end:
			t.Fatal("no disconnected event")
		}
	}
}
