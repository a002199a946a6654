// Package session is bootcertd's MQTT 3.1.1 connection to AWS IoT Core:
// mutual TLS with a hardware key (through tls.Config.GetClientCertificate),
// SNI, ALPN on port 443, client ID = thing name, QoS 1, and a clear verdict
// on a failed connect: refused (the broker does not accept these credentials
// now: TLS alert, CONNACK refusal, or the connection closed during connect)
// or unreachable (network). Each Dial is one attempt; reconnection, backoff
// and the choice of credential belong to the caller.
package session

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/bootcert/bootcert/daemon/proxy"
)

// Credential is what a session authenticates with.
type Credential struct {
	Chain  [][]byte // DER, leaf first
	Signer crypto.Signer
}

// Config is the connection setup.
type Config struct {
	Address    string // host:port
	ServerName string // SNI and the name verified in the server certificate
	RootCAs    *x509.CertPool
	ALPN       []string
	ClientID   string
	KeepAlive  time.Duration
	Timeout    time.Duration // TLS + CONNECT
	Logger     *slog.Logger
	// Proxy, when set, is an HTTP proxy the TCP connection is tunnelled
	// through (CONNECT); TLS runs end to end inside the tunnel.
	Proxy *url.URL
}

// ConnectError is a failed connect attempt.
type ConnectError struct {
	Address string
	// IsRefused: the broker reached a verdict on these credentials.
	IsRefused bool
	Err       error
}

func (e *ConnectError) Error() string {
	if e.IsRefused {
		return fmt.Sprintf("connecting to %s: refused: %v", e.Address, e.Err)
	}
	return fmt.Sprintf("connecting to %s: %v", e.Address, e.Err)
}

// Unwrap returns the cause.
func (e *ConnectError) Unwrap() error { return e.Err }

// Refused reports whether the broker refused the credentials (as opposed
// to a network failure). The rotation engine asks this.
func (e *ConnectError) Refused() bool { return e.IsRefused }

// ErrClosed is returned by operations on a closed or lost session.
var ErrClosed = errors.New("MQTT session closed")

// Session is one MQTT connection.
type Session struct {
	client mqtt.Client
	done   chan struct{}
	once   sync.Once
	mu     sync.Mutex
	err    error
	log    *slog.Logger
	nc     net.Conn // the connection paho opened (tests look at it)
}

// Dial makes one connection attempt with cred.
func Dial(ctx context.Context, cfg Config, cred Credential) (*Session, error) {
	if len(cred.Chain) == 0 || cred.Signer == nil {
		return nil, errors.New("connecting: no client certificate or key")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 60 * time.Second
	}
	tlsCert := &tls.Certificate{Certificate: cred.Chain, PrivateKey: cred.Signer}
	tlsCfg := &tls.Config{
		ServerName: cfg.ServerName,
		RootCAs:    cfg.RootCAs,
		NextProtos: cfg.ALPN,
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return tlsCert, nil
		},
	}
	s := &Session{done: make(chan struct{}), log: cfg.Logger}
	var dialErr error
	var dialMu sync.Mutex
	opts := mqtt.NewClientOptions().
		AddBroker("tls://" + cfg.Address).
		SetClientID(cfg.ClientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(cfg.Timeout).
		SetConnectTimeout(cfg.Timeout).
		SetWriteTimeout(cfg.Timeout).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			defer cancel()
			c, err := proxy.Dialer{URL: cfg.Proxy, Timeout: cfg.Timeout}.DialTLS(dctx, u.Host, tlsCfg)
			if err != nil {
				dialMu.Lock()
				dialErr = err
				dialMu.Unlock()
				return nil, err
			}
			if len(cfg.ALPN) > 0 {
				cfg.Logger.Debug("TLS established", "alpn", c.ConnectionState().NegotiatedProtocol)
			}
			s.mu.Lock()
			s.nc = c
			s.mu.Unlock()
			return c, nil
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { s.lost(err) })
	s.client = mqtt.NewClient(opts)
	tok := s.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		s.client.Disconnect(0)
		return nil, &ConnectError{Address: cfg.Address, Err: ctx.Err()}
	}
	if err := tok.Error(); err != nil {
		dialMu.Lock()
		de := dialErr
		dialMu.Unlock()
		if de != nil {
			err = de
		}
		return nil, &ConnectError{Address: cfg.Address, IsRefused: isRefusal(err, de != nil), Err: err}
	}
	return s, nil
}

// isRefusal tells a verdict on the credentials from a network failure.
func isRefusal(err error, duringDial bool) bool {
	var alert tls.AlertError
	if errors.As(err, &alert) {
		return true
	}
	switch {
	case errors.Is(err, packets.ErrorRefusedNotAuthorised),
		errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword),
		errors.Is(err, packets.ErrorRefusedIDRejected):
		return true
	}
	msg := err.Error()
	if strings.Contains(msg, "remote error: tls:") || strings.Contains(msg, "not Authorized") || strings.Contains(msg, "bad user name") || strings.Contains(msg, "identifier rejected") {
		return true
	}
	// The TCP connection was made and then closed before a CONNACK: the
	// broker closed it on us (AWS IoT does that for a certificate it just
	// registered, or a policy that denies iot:Connect).
	if !duringDial && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(msg, "EOF") || strings.Contains(msg, "connection reset")) {
		return true
	}
	return false
}

func (s *Session) lost(err error) {
	s.once.Do(func() {
		s.mu.Lock()
		if err == nil {
			err = ErrClosed
		}
		s.err = err
		s.mu.Unlock()
		close(s.done)
	})
}

// Done is closed when the connection is lost or closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Session) wait(ctx context.Context, what string, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	case <-s.done:
		return fmt.Errorf("%s: %w: %v", what, ErrClosed, s.Err())
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// Subscribe subscribes at QoS 1 and waits for the SUBACK. A refused
// subscription (SUBACK 0x80) is an error.
func (s *Session) Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error {
	tok := s.client.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		h(m.Topic(), m.Payload())
	})
	if err := s.wait(ctx, "subscribing to "+filter, tok); err != nil {
		return err
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for _, code := range st.Result() {
			if code == 0x80 {
				return &DeniedError{Op: "subscribing to", Topic: filter}
			}
		}
	}
	return nil
}

// DeniedError is a request the broker refused: a SUBSCRIBE answered with
// the failure return code 0x80 (MQTT 3.1.1 section 3.9.3; AWS IoT Core
// answers a subscription its policies do not grant this way). The
// connection stays up.
type DeniedError struct {
	Op    string // "subscribing to"
	Topic string
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("%s %s: refused by the broker (SUBACK 0x80: the IoT policy does not grant it)", e.Op, e.Topic)
}

// Denied reports that the broker refused the request (the rotation engine
// asks this).
func (e *DeniedError) Denied() bool { return true }

// ClosedByPeer reports whether the session ended because the broker closed
// the connection (a clean end of stream), as opposed to a network failure
// (timeout, reset) or a Close on this side. AWS IoT Core closes the
// connection of an MQTT 3.1.1 client that publishes to a topic its policies
// do not grant; the rotation engine counts that against the topic it
// published to last.
func (s *Session) ClosedByPeer() bool {
	select {
	case <-s.done:
	default:
		return false
	}
	return closedByPeer(s.Err())
}

func closedByPeer(err error) bool {
	if err == nil || errors.Is(err, ErrClosed) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.HasSuffix(err.Error(), "EOF")
}

// Unsubscribe removes a subscription.
func (s *Session) Unsubscribe(ctx context.Context, filter string) error {
	return s.wait(ctx, "unsubscribing from "+filter, s.client.Unsubscribe(filter))
}

// Publish publishes at QoS 1 and waits for the PUBACK.
func (s *Session) Publish(ctx context.Context, topic string, payload []byte) error {
	return s.wait(ctx, "publishing to "+topic, s.client.Publish(topic, 1, false, payload))
}

// PublishNoWait queues a QoS 1 publish without waiting for the PUBACK;
// publishes leave in the order they are queued.
func (s *Session) PublishNoWait(topic string, payload []byte) error {
	select {
	case <-s.done:
		return fmt.Errorf("publishing to %s: %w", topic, ErrClosed)
	default:
	}
	s.client.Publish(topic, 1, false, payload)
	return nil
}

// closeWait bounds how long Close waits for the connection to be closed.
const closeWait = time.Second

// Close disconnects gracefully (DISCONNECT, waiting up to quiesce for
// in-flight work) and returns once the connection is closed, or after
// max(quiesce, 1s). paho's Disconnect returns after quiesce even while it is
// still closing the connection (at once for 0): the caller's next connect
// with the same client ID (after a credential switch) would then overlap
// this one, and the broker takes the session over instead of seeing a clean
// disconnect (AWS IoT ends the old connection with DUPLICATE_CLIENTID; the
// lab's mochi broker lost the new client's deliveries in that takeover).
func (s *Session) Close(quiesce time.Duration) {
	s.client.Disconnect(uint(max(quiesce, closeWait) / time.Millisecond))
	s.lost(ErrClosed)
}
