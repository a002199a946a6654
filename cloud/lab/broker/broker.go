// Package broker is the lab's MQTT broker: an embedded mochi-mqtt server on
// TLS with client certificates that behaves like AWS IoT Core for the parts
// bootcert uses: just-in-time registration (JITR), certificate status, IoT
// policy checks for iot:Connect/Publish/Subscribe/Receive with the effects
// AWS documents for MQTT 3.1.1, the Jobs device MQTT API on the reserved
// $aws/things/{thing}/jobs/... topics, the events the rules use, and a hook
// that hands every accepted message to the rule engine.
//
// The broker owns small interfaces for what it needs (Registry, Authorizer,
// Jobs, ConnectLimiter); the lab assembly adapts the registry, policy and
// limits packages to them.
package broker

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Certificate statuses as AWS IoT names them.
const (
	StatusActive            = "ACTIVE"
	StatusInactive          = "INACTIVE"
	StatusRevoked           = "REVOKED"
	StatusPendingActivation = "PENDING_ACTIVATION"
	StatusPendingTransfer   = "PENDING_TRANSFER"
)

// ALPNProtocol is the ALPN name AWS IoT Core uses for MQTT with X.509 client
// certificates on port 443; the lab accepts it on its MQTT port too.
const ALPNProtocol = "x-amzn-mqtt-ca"

// Registry is what the broker needs to know about certificates and CAs.
type Registry interface {
	// CertificateStatus returns the status of a registered certificate by
	// ID (lower-hex SHA-256 of its DER); ok is false when it is unknown.
	CertificateStatus(id string) (status string, ok bool)
	// FindCA looks for a registered CA that issued chain[0] (chain[1:] are
	// intermediates the client sent, possibly including the CA itself). It
	// returns the CA's ID and whether that CA is ACTIVE with
	// auto-registration enabled; ok is false when no registered CA issued it.
	FindCA(chain []*x509.Certificate) (caID string, autoRegister bool, ok bool)
	// RegisterPendingCertificate registers a certificate as
	// PENDING_ACTIVATION under a CA; created is false when it already was.
	RegisterPendingCertificate(der []byte, caID string) (created bool, err error)
}

// Action is an IoT policy action the broker checks.
type Action string

// The MQTT policy actions.
const (
	ActionConnect   Action = "iot:Connect"
	ActionPublish   Action = "iot:Publish"
	ActionSubscribe Action = "iot:Subscribe"
	ActionReceive   Action = "iot:Receive"
)

// Principal is the authenticated client an authorization is for.
type Principal struct {
	CertificateID string // lower-hex SHA-256 of the certificate's DER
	ClientID      string
	CommonName    string // subject CN of the client certificate
}

// Decision is an authorization result with what decided it, for the log.
type Decision struct {
	Allowed   bool
	Policy    string // name of the deciding policy ("" when none matched)
	Statement int    // index of the deciding statement, -1 when none
	Sid       string // Sid of the deciding statement, if it has one
	Effect    string // "Allow", "Deny" (explicit) or "" (no statement allowed it)
	Reason    string // e.g. "explicit deny", "no matching allow"
}

// Authorizer evaluates the IoT policies attached to a principal.
type Authorizer interface {
	Authorize(p Principal, action Action, resource string) Decision
}

// ConnectLimiter refuses connects beyond the configured rates (AWS's
// "Connect requests per second" quotas).
type ConnectLimiter interface {
	AllowConnect(clientID string) bool
}

// PublishLimiter throttles publishes per connection (AWS's "Publish
// requests per second per connection"). A throttled publish is dropped
// without a PUBACK and the connection stays open, as AWS IoT Core does.
type PublishLimiter interface {
	AllowPublish(connection string) bool
}

// Message is a message the broker accepted, as the rule engine sees it.
// Principal and ClientID are empty for messages the lab itself published.
type Message struct {
	Topic     string
	Payload   []byte
	QoS       byte
	ClientID  string
	Principal string
	Timestamp time.Time
}

// Config configures a Server.
type Config struct {
	// Addr is the listen address (default 127.0.0.1:8883; port 0 picks a
	// free port). Ignored when Listener is set.
	Addr     string
	Listener net.Listener // optional, already bound (plain TCP; TLS is added)

	ServerCert tls.Certificate // the lab's TLS server certificate

	Registry   Registry
	Authorizer Authorizer
	Jobs       Jobs // optional: the Jobs MQTT API is refused without it
	// Provisioning serves the fleet provisioning MQTT API (provisioning.go);
	// optional: requests are rejected without it.
	Provisioning Provisioning
	Limiter      ConnectLimiter // optional
	Publishes    PublishLimiter // optional
	// OnMessage receives every accepted message (device or lab published);
	// it must not block (the rule engine queues its work).
	OnMessage func(Message)
	// DataPlane, when set, serves HTTPS requests that arrive on the MQTT
	// port (AWS's data endpoint serves MQTT and POST /topics/... on one
	// host).
	DataPlane http.Handler
	// Fault, when set, may refuse a connection whose certificate passed
	// every check (lab fault injection; see FaultFunc).
	Fault FaultFunc

	Region    string // default us-east-1
	AccountID string // default 123456789012

	Clock  clock.Clock
	Logger *slog.Logger
}

// Server is a running broker.
type Server struct {
	cfg  Config
	log  *slog.Logger
	mq   *mqtt.Server
	ln   *muxListener
	http *http.Server
	addr string

	sessions sync.Map // *mqtt.Client -> *session

	mu     sync.Mutex
	byCert map[string]map[*mqtt.Client]struct{} // certificate ID -> live clients

	stats struct {
		connects, refused, jitr, throttled atomic.Int64
	}
	closeOnce sync.Once
}

// session is what the broker knows about one connected client.
type session struct {
	principal Principal
	id        string // sessionIdentifier of the lifecycle events

	mu    sync.Mutex
	subOK map[string]int // filters OnSubscribe allowed, consumed by the ACL check
}

// Start binds the listener and serves MQTT over TLS until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Registry == nil || cfg.Authorizer == nil {
		return nil, errors.New("broker: Registry and Authorizer are required")
	}
	if len(cfg.ServerCert.Certificate) == 0 {
		return nil, errors.New("broker: ServerCert is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:8883"
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.AccountID == "" {
		cfg.AccountID = "123456789012"
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "broker"), byCert: map[string]map[*mqtt.Client]struct{}{}}

	ln := cfg.Listener
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("broker: listening on %s: %w (is another lab or broker running? use port 0 for a free one)", cfg.Addr, err)
		}
	}
	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{cfg.ServerCert},
		// The broker verifies client certificates itself against the
		// registered CAs (JITR must see certificates nobody knows yet)
		// and refuses an MQTT CONNECT without one; HTTPS data-plane
		// clients on the same port sign with SigV4 instead.
		ClientAuth: tls.RequestClientCert,
		MinVersion: tls.VersionTLS12,
		// x-amzn-http-ca and http/1.1: HTTPS data plane on the same port.
		NextProtos: []string{ALPNProtocol, "mqtt", "x-amzn-http-ca", "http/1.1"},
	}
	s.ln = newMux(ln, tlsConf, cfg.DataPlane != nil)
	s.addr = ln.Addr().String()

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1                     // AWS IoT Core supports QoS 0 and 1
	caps.MaximumPacketSize = 128<<10 + 1024 // AWS: 128 KiB payload
	caps.MaximumClientWritesPending = 256   // memory per client matters for the fleet benchmark
	caps.MaximumInflight = 256
	caps.ReceiveMaximum = 100 // AWS: 100 in-flight unacknowledged messages
	caps.SharedSubAvailable = 0
	// AWS keeps a persistent session (clean session false) for 1 hour
	// after the client disconnects (default "Persistent session expiry
	// period" quota).
	caps.MaximumSessionExpiryInterval = 3600
	s.mq = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true,
		// mochi logs every refused connection at WARN; the broker logs its
		// own decisions, so keep mochi quiet.
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// $SYS topics are not AWS behaviour; publish them rarely.
		SysTopicResendInterval: 3600,
	})
	if err := s.mq.AddHook(&hook{s: s}, nil); err != nil {
		ln.Close()
		return nil, fmt.Errorf("broker: adding hook: %w", err)
	}
	if err := s.mq.AddListener(listeners.NewNet("mqtts", s.ln.mqtt)); err != nil {
		ln.Close()
		return nil, fmt.Errorf("broker: adding listener: %w", err)
	}
	if err := s.mq.Serve(); err != nil {
		ln.Close()
		return nil, fmt.Errorf("broker: serving: %w", err)
	}
	if cfg.DataPlane != nil {
		s.http = &http.Server{Handler: cfg.DataPlane, ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
		go s.http.Serve(s.ln.http)
	}
	s.log.Info("broker listening", "addr", s.addr)
	return s, nil
}

// Addr is the address the broker listens on (host:port).
func (s *Server) Addr() string { return s.addr }

// Close disconnects every client and stops the broker.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if s.http.Shutdown(ctx) != nil {
				s.http.Close()
			}
			cancel()
		}
		err = s.mq.Close()
		s.ln.Close()
	})
	return err
}

// Publish publishes a message as the lab (like the data-plane Publish API or
// an AWS service publishing events). Receivers are still checked against
// iot:Receive. QoS above 1 is reduced to 1.
func (s *Server) Publish(topic string, payload []byte, qos byte) error {
	if qos > 1 {
		qos = 1
	}
	if err := s.mq.Publish(topic, payload, false, qos); err != nil {
		return fmt.Errorf("broker: publishing to %s: %w", topic, err)
	}
	return nil
}

// CertificateStatusChanged ends the live sessions of a certificate that is
// no longer ACTIVE (AWS: making a certificate INACTIVE or REVOKED
// disconnects its clients).
func (s *Server) CertificateStatusChanged(certID, status string) {
	if status == StatusActive {
		return
	}
	s.mu.Lock()
	var victims []*mqtt.Client
	for cl := range s.byCert[certID] {
		victims = append(victims, cl)
	}
	s.mu.Unlock()
	for _, cl := range victims {
		s.log.Info("disconnect", "reason", "certificate "+status, "certificateId", certID, "clientId", cl.ID)
		cl.Stop(errStatus{fmt.Sprintf("certificate %s is %s", certID, status)})
	}
}

// Stats is a snapshot of the broker for GET /lab/state.
type Stats struct {
	Addr     string   `json:"addr"`
	Clients  []Client `json:"clients"`
	Connects int64    `json:"connects"`
	Refused  int64    `json:"refused"`
	JITR     int64    `json:"jitrRegistrations"`
	// Throttled counts publishes dropped by the publish quota.
	Throttled int64 `json:"throttledPublishes"`
}

// Client is one connected client in Stats.
type Client struct {
	ClientID      string `json:"clientId"`
	CertificateID string `json:"certificateId"`
	Remote        string `json:"remote"`
}

// Stats returns counters and the connected clients.
func (s *Server) Stats() Stats {
	st := Stats{Addr: s.addr, Connects: s.stats.connects.Load(), Refused: s.stats.refused.Load(), JITR: s.stats.jitr.Load(), Throttled: s.stats.throttled.Load(), Clients: []Client{}}
	s.sessions.Range(func(k, v any) bool {
		cl := k.(*mqtt.Client)
		if cl.Closed() {
			// A connection that ended before its read loop (mochi
			// then calls no OnDisconnect).
			s.removeSession(cl)
			return true
		}
		st.Clients = append(st.Clients, Client{ClientID: cl.ID, CertificateID: v.(*session).principal.CertificateID, Remote: cl.Net.Remote})
		return true
	})
	return st
}

func (s *Server) arn(kind, name string) string {
	return "arn:aws:iot:" + s.cfg.Region + ":" + s.cfg.AccountID + ":" + kind + "/" + name
}

func (s *Server) addSession(cl *mqtt.Client, sess *session) {
	s.sessions.Store(cl, sess)
	s.mu.Lock()
	m := s.byCert[sess.principal.CertificateID]
	if m == nil {
		m = map[*mqtt.Client]struct{}{}
		s.byCert[sess.principal.CertificateID] = m
	}
	m[cl] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) removeSession(cl *mqtt.Client) {
	v, ok := s.sessions.LoadAndDelete(cl)
	if !ok {
		return
	}
	id := v.(*session).principal.CertificateID
	s.mu.Lock()
	if m := s.byCert[id]; m != nil {
		delete(m, cl)
		if len(m) == 0 {
			delete(s.byCert, id)
		}
	}
	s.mu.Unlock()
}

func (s *Server) sessionOf(cl *mqtt.Client) *session {
	v, ok := s.sessions.Load(cl)
	if !ok {
		return nil
	}
	return v.(*session)
}

func randomID() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
