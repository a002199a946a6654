package broker

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bootcert/bootcert/protocol"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Reasons a connection is closed before CONNACK. For MQTT 3.1.1 the lab
// follows AWS IoT Core: an unauthorized CONNECT closes the connection (no
// refusing CONNACK), an unauthorized PUBLISH disconnects the client, an
// unauthorized SUBSCRIBE gets a SUBACK failure (0x80) for that filter and a
// message the subscriber may not receive is not delivered. AWS reports such
// disconnects with disconnectReason AUTH_ERROR, "the client failed to
// authenticate or authorization failed" (AWS IoT Core developer guide,
// "Lifecycle events", life-cycle-events.html); MQTT differences:
// "AWS IoT differences from MQTT specifications" (mqtt.html).
var (
	ErrNoClientCertificate = errors.New("no client certificate")
	ErrUnknownCertificate  = errors.New("certificate not registered and not issued by a registered CA with auto-registration")
	ErrJITR                = errors.New("certificate registered as PENDING_ACTIVATION (just-in-time registration); connect again once it is ACTIVE")
	ErrNotActive           = errors.New("certificate is not ACTIVE")
	ErrExpired             = errors.New("certificate is outside its validity period")
	ErrConnectDenied       = errors.New("iot:Connect not allowed by the attached policies")
	ErrThrottled           = errors.New("connect rate exceeded")
)

// deniedFilter replaces a topic filter the policies refuse: mochi then
// answers the SUBACK with a failure code, which MQTT 3.1.1 sends as 0x80
// (AWS: an unauthorized SUBSCRIBE gets a SUBACK failure for that filter).
const deniedFilter = "#/denied"

type hook struct {
	mqtt.HookBase
	s *Server
}

func (h *hook) ID() string { return "bootcert-lab" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSubscribe, mqtt.OnPublish, mqtt.OnDisconnect,
	}, []byte{b})
}

// OnConnect authenticates the client certificate and decides iot:Connect.
// Returning an error makes mochi close the connection without a CONNACK.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	s := h.s
	if cl.Net.Inline {
		return nil
	}
	err := s.connect(cl)
	if err != nil {
		s.stats.refused.Add(1)
		return err
	}
	s.stats.connects.Add(1)
	return nil
}

func (s *Server) connect(cl *mqtt.Client) error {
	log := s.log.With("clientId", cl.ID, "remote", cl.Net.Remote)
	tc, ok := cl.Net.Conn.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		log.Info("connect refused", "reason", "not a TLS connection")
		return ErrNoClientCertificate
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		log.Info("connect refused", "reason", ErrNoClientCertificate.Error())
		return ErrNoClientCertificate
	}
	if s.cfg.Limiter != nil && !s.cfg.Limiter.AllowConnect(cl.ID) {
		log.Info("connect refused", "reason", ErrThrottled.Error())
		return ErrThrottled
	}
	leaf := st.PeerCertificates[0]
	id := protocol.CertificateID(leaf.Raw)
	log = log.With("certificateId", id)
	status, known := s.cfg.Registry.CertificateStatus(id)
	if !known {
		caID, auto, found := s.cfg.Registry.FindCA(st.PeerCertificates)
		if !found {
			log.Info("connect refused", "reason", ErrUnknownCertificate.Error())
			return ErrUnknownCertificate
		}
		if !auto {
			log.Info("connect refused", "reason", "issuing CA is not ACTIVE or has auto-registration disabled", "caCertificateId", caID)
			return ErrUnknownCertificate
		}
		created, err := s.cfg.Registry.RegisterPendingCertificate(leaf.Raw, caID)
		if err != nil {
			log.Error("jitr failed", "caCertificateId", caID, "err", err)
			return ErrUnknownCertificate
		}
		if created {
			s.stats.jitr.Add(1)
			s.publishRegistered(id, caID)
		}
		log.Info("jitr", "caCertificateId", caID, "registered", created, "decision", "connection closed")
		return ErrJITR
	}
	if status != StatusActive {
		log.Info("connect refused", "reason", ErrNotActive.Error(), "status", status)
		return ErrNotActive
	}
	now := s.cfg.Clock.Now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		log.Info("connect refused", "reason", ErrExpired.Error(), "notBefore", leaf.NotBefore, "notAfter", leaf.NotAfter)
		return ErrExpired
	}
	if why, refuse := s.fault(leaf); refuse {
		log.Info("connect refused", "reason", ErrRefusedByFault.Error(), "fault", why)
		return ErrRefusedByFault
	}
	p := Principal{CertificateID: id, ClientID: cl.ID, CommonName: leaf.Subject.CommonName}
	d := s.cfg.Authorizer.Authorize(p, ActionConnect, s.arn("client", cl.ID))
	if !d.Allowed {
		logDecision(log, "connect refused", ActionConnect, s.arn("client", cl.ID), d)
		return ErrConnectDenied
	}
	if atomic.LoadUint32(&cl.Properties.Will.Flag) == 1 {
		// mochi publishes a will without the publish checks: decide
		// iot:Publish on its topic now and drop a will the policies
		// refuse (it is never delivered).
		res := s.arn("topic", cl.Properties.Will.TopicName)
		if wd := s.cfg.Authorizer.Authorize(p, ActionPublish, res); !wd.Allowed {
			logDecision(log, "will dropped", ActionPublish, res, wd)
			atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
		}
	}
	s.retirePrevious(cl)
	sess := &session{principal: p, subOK: map[string]int{}, id: randomID()}
	s.addSession(cl, sess)
	log.Info("connected", "policy", d.Policy, "statement", d.Statement)
	s.publishPresence(cl, sess, "connected", nil)
	return nil
}

// retireTimeout bounds the wait for the previous connection of a client ID
// to be torn down (retirePrevious).
const retireTimeout = 5 * time.Second

// retirePrevious ends the previous connection with cl's client ID, if any,
// and waits until mochi has torn it down, before mochi takes the session
// over. AWS IoT Core ends the old connection (DUPLICATE_CLIENTID) and serves
// the new one. mochi 2.7.9 races here for clean sessions: when the old
// connection's own teardown checks "taken over" just before the new
// connection's takeover sets it, the teardown deletes the client ID from
// mochi's client table after the new client was added to it; the new
// connection then keeps its SUBACKs, PUBACKs and PINGRESPs while every
// message for it is dropped (a device that reconnects at once after
// switching credentials never heard its acknowledgement).
func (s *Server) retirePrevious(cl *mqtt.Client) {
	old, ok := s.mq.Clients.Get(cl.ID)
	if !ok || old == cl || old.Net.Inline {
		return
	}
	// Only a clean session's teardown deletes the client ID (a persistent
	// one stays in the table for the next connection to inherit).
	clean := (old.Properties.ProtocolVersion < 5 && old.Properties.Clean) ||
		(old.Properties.ProtocolVersion == 5 && old.Properties.Props.SessionExpiryInterval == 0)
	if !clean {
		return
	}
	if !old.Closed() {
		old.Stop(packets.ErrSessionTakenOver)
	}
	deadline := time.Now().Add(retireTimeout)
	for time.Now().Before(deadline) {
		if cur, ok := s.mq.Clients.Get(cl.ID); !ok || cur != old {
			return
		}
		time.Sleep(time.Millisecond)
	}
	s.log.Warn("previous connection of the client ID not torn down in time; taking it over anyway", "clientId", cl.ID, "oldRemote", old.Net.Remote)
}

// publishPresence publishes AWS's lifecycle events,
// $aws/events/presence/{connected|disconnected}/{clientId} ("Lifecycle
// events", life-cycle-events.html).
func (s *Server) publishPresence(cl *mqtt.Client, sess *session, kind string, cause error) {
	ev := map[string]any{
		"clientId":            cl.ID,
		"timestamp":           s.cfg.Clock.Now().UnixMilli(),
		"eventType":           kind,
		"sessionIdentifier":   sess.id,
		"principalIdentifier": sess.principal.CertificateID,
		"versionNumber":       0,
	}
	if host, _, err := net.SplitHostPort(cl.Net.Remote); err == nil {
		ev["ipAddress"] = host
	}
	if kind == "disconnected" {
		reason := disconnectReason(cause)
		ev["clientInitiatedDisconnect"] = reason == "CLIENT_INITIATED_DISCONNECT"
		ev["disconnectReason"] = reason
	}
	b, _ := json.Marshal(ev)
	if strings.ContainsAny(cl.ID, "#+") {
		return // AWS: client IDs with # or + get no lifecycle events
	}
	if err := s.Publish("$aws/events/presence/"+kind+"/"+cl.ID, b, 1); err != nil {
		s.log.Debug("publishing lifecycle event", "err", err)
	}
}

// errStatus ends sessions whose certificate is no longer ACTIVE.
type errStatus struct{ msg string }

func (e errStatus) Error() string { return e.msg }

func disconnectReason(cause error) string {
	var st errStatus
	switch {
	case cause == nil, errors.Is(cause, packets.CodeDisconnect):
		return "CLIENT_INITIATED_DISCONNECT"
	case errors.Is(cause, packets.ErrNotAuthorized), errors.As(cause, &st):
		return "AUTH_ERROR"
	case errors.Is(cause, packets.ErrSessionTakenOver):
		return "DUPLICATE_CLIENTID"
	case errors.Is(cause, packets.ErrKeepAliveTimeout):
		return "MQTT_KEEP_ALIVE_TIMEOUT"
	case errors.Is(cause, packets.ErrServerShuttingDown):
		return "SERVER_INITIATED_DISCONNECT"
	}
	return "CONNECTION_LOST"
}

func logDecision(log interface {
	Info(string, ...any)
}, msg string, a Action, resource string, d Decision) {
	effect := d.Effect
	if effect == "" && !d.Allowed {
		effect = "implicit deny: no statement allowed it"
	}
	args := []any{"action", string(a), "resource", resource, "allowed", d.Allowed, "effect", effect, "policy", d.Policy, "statement", d.Statement}
	if d.Sid != "" {
		args = append(args, "sid", d.Sid)
	}
	log.Info(msg, append(args, "reason", d.Reason)...)
}

// OnConnectAuthenticate: OnConnect already decided.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return cl.Net.Inline || h.s.sessionOf(cl) != nil
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if sess := h.s.sessionOf(cl); sess != nil {
		cause := cl.StopCause()
		h.s.log.Info("disconnected", "clientId", cl.ID, "certificateId", sess.principal.CertificateID, "cause", errString(cause), "reason", disconnectReason(cause))
		h.s.removeSession(cl)
		h.s.publishPresence(cl, sess, "disconnected", cause)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// OnSubscribe decides iot:Subscribe per filter. Refused filters are replaced
// so that mochi answers them with a SUBACK failure (0x80 in MQTT 3.1.1).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	s := h.s
	sess := s.sessionOf(cl)
	if sess == nil {
		return pk
	}
	for i := range pk.Filters {
		f := pk.Filters[i].Filter
		res := s.arn("topicfilter", f)
		d := s.cfg.Authorizer.Authorize(sess.principal, ActionSubscribe, res)
		if !d.Allowed {
			logDecision(s.log.With("clientId", cl.ID, "certificateId", sess.principal.CertificateID), "subscribe denied", ActionSubscribe, res, d)
			pk.Filters[i].Filter = deniedFilter
			continue
		}
		sess.mu.Lock()
		sess.subOK[f]++
		sess.mu.Unlock()
	}
	return pk
}

// OnACLCheck runs for publishes (write), for each filter of a SUBSCRIBE that
// OnSubscribe allowed, and for every delivery (iot:Receive).
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	s := h.s
	if cl.Net.Inline {
		return true
	}
	sess := s.sessionOf(cl)
	if sess == nil {
		return false
	}
	if write {
		res := s.arn("topic", topic)
		d := s.cfg.Authorizer.Authorize(sess.principal, ActionPublish, res)
		if d.Allowed {
			return true
		}
		// AWS: an unauthorized PUBLISH disconnects an MQTT 3.1.1 client
		// (mochi would silently drop a QoS 0 one).
		logDecision(s.log.With("clientId", cl.ID, "certificateId", sess.principal.CertificateID), "publish denied, client disconnected", ActionPublish, res, d)
		cl.Stop(packets.ErrNotAuthorized)
		return false
	}
	sess.mu.Lock()
	if n := sess.subOK[topic]; n > 0 {
		if n == 1 {
			delete(sess.subOK, topic)
		} else {
			sess.subOK[topic] = n - 1
		}
		sess.mu.Unlock()
		return true
	}
	sess.mu.Unlock()
	if strings.ContainsAny(topic, "+#") {
		// A wildcard filter is never a topic name: a subscribe check
		// whose decision OnSubscribe already made.
		return true
	}
	res := s.arn("topic", topic)
	d := s.cfg.Authorizer.Authorize(sess.principal, ActionReceive, res)
	if !d.Allowed {
		logDecision(s.log.With("clientId", cl.ID, "certificateId", sess.principal.CertificateID), "receive denied, message not delivered", ActionReceive, res, d)
	}
	return d.Allowed
}

// OnPublish serves the Jobs MQTT API and hands accepted messages to the rule
// engine. It runs after the iot:Publish check.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	m := Message{Topic: pk.TopicName, Payload: pk.Payload, QoS: pk.FixedHeader.Qos, Timestamp: s.cfg.Clock.Now()}
	if !cl.Net.Inline {
		sess := s.sessionOf(cl)
		if sess == nil {
			return pk, packets.ErrRejectPacket
		}
		m.ClientID = sess.principal.ClientID
		m.Principal = sess.principal.CertificateID
		if s.cfg.Publishes != nil && !s.cfg.Publishes.AllowPublish(cl.ID) {
			s.stats.throttled.Add(1)
			s.log.Info("publish throttled, message dropped", "clientId", cl.ID, "topic", pk.TopicName)
			return pk, packets.ErrRejectPacket
		}
		if thing, op, ok := parseJobsTopic(pk.TopicName); ok {
			s.handleJobs(thing, op, pk.Payload)
		} else if isProvisioningRequest(pk.TopicName) {
			s.handleProvisioning(cl, sess, pk.TopicName, pk.Payload)
		}
	}
	if s.cfg.OnMessage != nil {
		// The handler must not keep the slice: mochi reuses buffers.
		m.Payload = bytes.Clone(m.Payload)
		s.cfg.OnMessage(m)
	}
	return pk, nil
}

// publishRegistered publishes the JITR event AWS IoT Core publishes to
// $aws/events/certificates/registered/{caCertificateId}.
// (AWS IoT Core developer guide, "Just-in-time registration".)
func (s *Server) publishRegistered(certID, caID string) {
	now := s.cfg.Clock.Now().UnixMilli()
	ev := map[string]any{
		"certificateId":                    certID,
		"caCertificateId":                  caID,
		"timestamp":                        now,
		"certificateStatus":                StatusPendingActivation,
		"awsAccountId":                     s.cfg.AccountID,
		"certificateRegistrationTimestamp": now,
	}
	b, _ := json.Marshal(ev)
	if err := s.Publish("$aws/events/certificates/registered/"+caID, b, 1); err != nil {
		s.log.Error("publishing registered event", "certificateId", certID, "err", err)
	}
}
