// Package session is bootcertd's MQTT 3.1.1 connection to AWS IoT Core:
// mutual TLS with a hardware key (through tls.Config.GetClientCertificate),
// SNI, ALPN on port 443, client ID = thing name, QoS 1, and a clear verdict
// on a failed connect: refused (the broker does not accept these credentials
// now: TLS alert, CONNACK refusal, or the connection closed during connect)
// or unreachable (network). Each Dial is one attempt; reconnection, backoff
// and the choice of credential belong to the caller.
//
// The MQTT client is this package's own (packet.go): a clean-session QoS 0/1
// client is small, and a general-purpose client library would link
// net/http and websockets into the daemon (about 0.5 MiB of binary, and as
// much resident memory).
package session

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
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
	conn    net.Conn
	timeout time.Duration
	log     *slog.Logger

	out     chan []byte   // encoded packets, written in order by writer
	flushed chan struct{} // closed when writer has stopped

	mu      sync.Mutex
	nextID  uint16
	pending map[uint16]chan []byte // acks awaited, by packet id
	subs    map[string]func(topic string, payload []byte)
	pingAt  time.Time // zero: no PINGREQ outstanding

	done chan struct{}
	once sync.Once
	err  error
}

// connackError is a CONNACK with a non-zero return code.
type connackError byte

func (e connackError) Error() string {
	names := map[connackError]string{1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable", 4: "bad user name or password", 5: "not Authorized"}
	if n, ok := names[e]; ok {
		return "CONNACK: " + n
	}
	return fmt.Sprintf("CONNACK: return code %d", byte(e))
}

// Refused: identifier rejected, bad user name or password, not authorised.
func (e connackError) refused() bool { return e == 2 || e == 4 || e == 5 }

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
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: cfg.Timeout}, Config: tlsCfg}
	c, err := d.DialContext(dctx, "tcp", cfg.Address)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, &ConnectError{Address: cfg.Address, IsRefused: isRefusal(err, true), Err: err}
	}
	if len(cfg.ALPN) > 0 {
		cfg.Logger.Debug("TLS established", "alpn", c.(*tls.Conn).ConnectionState().NegotiatedProtocol)
	}
	r := bufio.NewReaderSize(c, 4096)
	if err := connect(dctx, c, r, cfg); err != nil {
		c.Close()
		if ctx.Err() != nil {
			return nil, &ConnectError{Address: cfg.Address, Err: ctx.Err()}
		}
		return nil, &ConnectError{Address: cfg.Address, IsRefused: isRefusal(err, false), Err: err}
	}
	s := &Session{conn: c, timeout: cfg.Timeout, log: cfg.Logger, out: make(chan []byte, 64), flushed: make(chan struct{}),
		pending: map[uint16]chan []byte{}, subs: map[string]func(string, []byte){}, done: make(chan struct{})}
	go s.writer()
	go s.reader(r)
	go s.keepAlive(cfg.KeepAlive)
	return s, nil
}

// connect sends CONNECT and reads the CONNACK, within dctx.
func connect(dctx context.Context, c net.Conn, r *bufio.Reader, cfg Config) error {
	stop := context.AfterFunc(dctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	dl, _ := dctx.Deadline()
	c.SetDeadline(dl)
	defer c.SetDeadline(time.Time{})
	ka := min(cfg.KeepAlive/time.Second, 65535)
	if _, err := c.Write(connectPacket(cfg.ClientID, uint16(ka)).encode()); err != nil {
		return err
	}
	p, err := readPacket(r)
	if err != nil {
		return err
	}
	if p.typ != pktConnack || len(p.body) != 2 {
		return fmt.Errorf("%w: expected CONNACK, got packet type %d", errMalformed, p.typ)
	}
	if p.body[1] != 0 {
		return connackError(p.body[1])
	}
	return nil
}

// isRefusal tells a verdict on the credentials from a network failure.
func isRefusal(err error, duringDial bool) bool {
	var alert tls.AlertError
	if errors.As(err, &alert) {
		return true
	}
	var ce connackError
	if errors.As(err, &ce) {
		return ce.refused()
	}
	msg := err.Error()
	if strings.Contains(msg, "remote error: tls:") {
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

// lost ends the session once, with the first cause.
func (s *Session) lost(err error) {
	s.once.Do(func() {
		s.mu.Lock()
		if err == nil {
			err = ErrClosed
		}
		s.err = err
		s.mu.Unlock()
		close(s.done)
		s.conn.Close()
	})
}

// writer writes queued packets in order until the session ends.
func (s *Session) writer() {
	defer close(s.flushed)
	for {
		select {
		case b := <-s.out:
			s.conn.SetWriteDeadline(time.Now().Add(s.timeout))
			if _, err := s.conn.Write(b); err != nil {
				s.lost(fmt.Errorf("writing to the broker: %w", err))
				return
			}
			if b[0] == pktDisconnect<<4 {
				return
			}
		case <-s.done:
			return
		}
	}
}

// send queues a packet; it fails once the session has ended or when the
// queue stays full for the write timeout.
func (s *Session) send(p packet) error {
	select {
	case <-s.done:
		return ErrClosed
	default:
	}
	select {
	case s.out <- p.encode():
		return nil
	case <-s.done:
		return ErrClosed
	case <-time.After(s.timeout):
		return errors.New("write queue full")
	}
}

// reader dispatches incoming packets until the connection ends.
func (s *Session) reader(r *bufio.Reader) {
	for {
		p, err := readPacket(r)
		if err != nil {
			s.lost(err)
			return
		}
		switch p.typ {
		case pktPublish:
			topic, qos, id, payload, err := parsePublish(p)
			if err != nil {
				s.lost(err)
				return
			}
			s.mu.Lock()
			for f, h := range s.subs {
				if matches(f, topic) {
					go h(topic, payload) // a handler may publish and wait
				}
			}
			s.mu.Unlock()
			if qos == 1 {
				s.send(pubackPacket(id))
			}
		case pktPuback, pktSuback, pktUnsuback:
			if len(p.body) < 2 {
				s.lost(fmt.Errorf("%w: ack without packet id", errMalformed))
				return
			}
			id := binary.BigEndian.Uint16(p.body)
			s.mu.Lock()
			if ch, ok := s.pending[id]; ok {
				delete(s.pending, id)
				ch <- p.body[2:]
			}
			s.mu.Unlock()
		case pktPingresp:
			s.mu.Lock()
			s.pingAt = time.Time{}
			s.mu.Unlock()
		default:
			s.lost(fmt.Errorf("%w: unexpected packet type %d from the broker", errMalformed, p.typ))
			return
		}
	}
}

// keepAlive sends PINGREQ at half the keep-alive interval and ends the
// session when a PINGRESP is overdue.
func (s *Session) keepAlive(every time.Duration) {
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.done:
			return
		}
		s.mu.Lock()
		at := s.pingAt
		if at.IsZero() {
			s.pingAt = time.Now()
		}
		s.mu.Unlock()
		if !at.IsZero() {
			if time.Since(at) > s.timeout {
				s.lost(errors.New("no PINGRESP from the broker"))
				return
			}
			continue
		}
		s.send(packet{typ: pktPingreq})
	}
}

// track allocates a packet id and registers for its ack.
func (s *Session) track() (uint16, chan []byte) {
	ch := make(chan []byte, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		s.nextID++
		if _, busy := s.pending[s.nextID]; s.nextID != 0 && !busy {
			break
		}
	}
	s.pending[s.nextID] = ch
	return s.nextID, ch
}

func (s *Session) untrack(id uint16) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// request sends a packet that carries id and waits for its ack.
func (s *Session) request(ctx context.Context, what string, id uint16, ch chan []byte, p packet) ([]byte, error) {
	if err := s.send(p); err != nil {
		s.untrack(id)
		return nil, fmt.Errorf("%s: %w", what, s.closedErr(err))
	}
	select {
	case ack := <-ch:
		return ack, nil
	case <-s.done:
		return nil, fmt.Errorf("%s: %w", what, s.closedErr(ErrClosed))
	case <-ctx.Done():
		s.untrack(id)
		return nil, fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

func (s *Session) closedErr(err error) error {
	if err == ErrClosed {
		if cause := s.Err(); cause != nil && cause != ErrClosed {
			return fmt.Errorf("%w: %v", ErrClosed, cause)
		}
	}
	return err
}

// Done is closed when the connection is lost or closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why the session ended.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Subscribe subscribes at QoS 1 and waits for the SUBACK. A refused
// subscription (SUBACK 0x80) is an error.
func (s *Session) Subscribe(ctx context.Context, filter string, h func(topic string, payload []byte)) error {
	s.mu.Lock()
	s.subs[filter] = h
	s.mu.Unlock()
	id, ch := s.track()
	codes, err := s.request(ctx, "subscribing to "+filter, id, ch, subscribePacket(id, filter))
	if err == nil && (len(codes) != 1 || codes[0] == 0x80) {
		err = fmt.Errorf("subscribing to %s: refused by the broker (check the IoT policy)", filter)
	}
	if err != nil {
		s.mu.Lock()
		delete(s.subs, filter)
		s.mu.Unlock()
	}
	return err
}

// Unsubscribe removes a subscription.
func (s *Session) Unsubscribe(ctx context.Context, filter string) error {
	id, ch := s.track()
	_, err := s.request(ctx, "unsubscribing from "+filter, id, ch, unsubscribePacket(id, filter))
	s.mu.Lock()
	delete(s.subs, filter)
	s.mu.Unlock()
	return err
}

// Publish publishes at QoS 1 and waits for the PUBACK.
func (s *Session) Publish(ctx context.Context, topic string, payload []byte) error {
	id, ch := s.track()
	_, err := s.request(ctx, "publishing to "+topic, id, ch, publishPacket(topic, id, payload))
	return err
}

// PublishNoWait queues a QoS 1 publish without waiting for the PUBACK;
// publishes leave in the order they are queued.
func (s *Session) PublishNoWait(topic string, payload []byte) error {
	id, _ := s.track()
	if err := s.send(publishPacket(topic, id, payload)); err != nil {
		s.untrack(id)
		return fmt.Errorf("publishing to %s: %w", topic, err)
	}
	return nil
}

// Close disconnects gracefully: it waits up to quiesce for the queued
// packets to be written and the PUBACKs of in-flight publishes, then sends
// DISCONNECT.
func (s *Session) Close(quiesce time.Duration) {
	deadline := time.Now().Add(quiesce)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		busy := len(s.pending) > 0 || len(s.out) > 0
		s.mu.Unlock()
		if !busy {
			break
		}
		select {
		case <-s.done:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	if s.send(packet{typ: pktDisconnect}) == nil {
		select {
		case <-s.flushed: // DISCONNECT written
		case <-time.After(time.Second):
		}
	}
	s.lost(ErrClosed)
	<-s.flushed
}
