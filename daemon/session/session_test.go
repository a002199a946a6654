package session

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/internal/testbroker"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
)

func cfgFor(t *testing.T, m *testbroker.Mosquitto, clientID string) Config {
	pem, _ := os.ReadFile(m.CAFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return Config{Address: m.Addr(), ServerName: "localhost", RootCAs: pool, ClientID: clientID, KeepAlive: 30 * time.Second, Timeout: 10 * time.Second}
}

func credFor(t *testing.T, ca *testca.CA, cn string) Credential {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return Credential{Chain: [][]byte{ca.Issue(t, cn, k.Public()).Raw}, Signer: k}
}

func TestDial(t *testing.T) {
	ca := testca.New(t, "device CA")
	other := testca.New(t, "unknown CA")
	m := testbroker.Start(t, ca)
	ctx := context.Background()

	t.Run("ok/roundtrip", func(t *testing.T) {
		s, err := Dial(ctx, cfgFor(t, m, "gw-1"), credFor(t, ca, "gw-1"))
		if err != nil {
			t.Fatalf("Dial: %v\n%s", err, m.Log())
		}
		defer s.Close(time.Second)
		got := make(chan string, 1)
		if err := s.Subscribe(ctx, "test/gw-1/+", func(topic string, p []byte) { got <- topic + " " + string(p) }); err != nil {
			t.Fatal(err)
		}
		if err := s.Publish(ctx, "test/gw-1/x", []byte("hello")); err != nil {
			t.Fatal(err)
		}
		select {
		case msg := <-got:
			if msg != "test/gw-1/x hello" {
				t.Errorf("got %q", msg)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no message")
		}
	})
	t.Run("fail/unknown-ca-refused", func(t *testing.T) {
		_, err := Dial(ctx, cfgFor(t, m, "gw-2"), credFor(t, other, "gw-2"))
		ce, ok := err.(*ConnectError)
		if !ok || !ce.Refused() {
			t.Fatalf("Dial with an unknown CA: %v, want a refusal", err)
		}
	})
	t.Run("fail/closed-port-not-refused", func(t *testing.T) {
		cfg := cfgFor(t, m, "gw-3")
		cfg.Address = "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
		_, err := Dial(ctx, cfg, credFor(t, ca, "gw-3"))
		ce, ok := err.(*ConnectError)
		if !ok || ce.Refused() {
			t.Fatalf("Dial to a closed port: %v, want a non-refusal error", err)
		}
	})
	t.Run("fail/wrong-server-name", func(t *testing.T) {
		cfg := cfgFor(t, m, "gw-4")
		cfg.ServerName = "not-the-broker.example"
		_, err := Dial(ctx, cfg, credFor(t, ca, "gw-4"))
		if err == nil {
			t.Fatal("Dial accepted a server certificate for another name")
		}
		if ce := err.(*ConnectError); ce.Refused() {
			t.Errorf("server verification failure counted as a credential refusal: %v", err)
		}
	})
	t.Run("ok/close-returns-when-closed", func(t *testing.T) {
		// the engine connects again at once after Close (credential
		// switch): the old connection must be gone by then
		for i := 0; i < 20; i++ {
			s, err := Dial(ctx, cfgFor(t, m, "gw-6"), credFor(t, ca, "gw-6"))
			if err != nil {
				t.Fatal(err)
			}
			s.Close(0)
			s.mu.Lock()
			nc := s.nc
			s.mu.Unlock()
			if _, err := nc.Write([]byte{}); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("round %d: connection still open after Close(0) (write: %v)", i, err)
			}
		}
	})
	t.Run("ok/lost-is-reported", func(t *testing.T) {
		s, err := Dial(ctx, cfgFor(t, m, "gw-5"), credFor(t, ca, "gw-5"))
		if err != nil {
			t.Fatal(err)
		}
		// a second client with the same ID takes the session over
		s2, err := Dial(ctx, cfgFor(t, m, "gw-5"), credFor(t, ca, "gw-5"))
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close(0)
		select {
		case <-s.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("session take-over not reported as lost")
		}
		if err := s.Publish(ctx, "test/gw-5/x", nil); err == nil {
			t.Error("Publish on a lost session succeeded")
		}
	})
}

// TestClosedByPeer: a session the broker ends (here a take-over by the
// same client ID) is ClosedByPeer, a live one or one closed on this side is
// not. (A SUBACK 0x80 is a DeniedError: mosquitto grants filters its ACL
// refuses, so daemon/e2e tests that against the lab's broker.)
func TestClosedByPeer(t *testing.T) {
	ca := testca.New(t, "device CA")
	m := testbroker.Start(t, ca)
	ctx := context.Background()
	s, err := Dial(ctx, cfgFor(t, m, "gw-d"), credFor(t, ca, "gw-d"))
	if err != nil {
		t.Fatal(err)
	}
	if s.ClosedByPeer() {
		t.Error("ClosedByPeer on a live session")
	}
	s2, err := Dial(ctx, cfgFor(t, m, "gw-d"), credFor(t, ca, "gw-d"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("take-over not reported")
	}
	if !s.ClosedByPeer() {
		t.Errorf("a session the broker closed is not ClosedByPeer (err %v)", s.Err())
	}
	s2.Close(0)
	if s2.ClosedByPeer() {
		t.Error("a session closed on this side is ClosedByPeer")
	}
	de := &DeniedError{Op: "subscribing to", Topic: "certificates/gw-d/x/+"}
	if !de.Denied() || !strings.Contains(de.Error(), "certificates/gw-d/x/+") || !strings.Contains(de.Error(), "0x80") {
		t.Errorf("DeniedError %q", de)
	}
}
