package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/bootcert/bootcert/protocol"
)

// The fleet provisioning device MQTT API ("Device provisioning MQTT API",
// https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html):
//
//	$aws/certificates/create-from-csr/json                     CreateCertificateFromCsr
//	$aws/certificates/create/json                              CreateKeysAndCertificate
//	$aws/provisioning-templates/{template}/provision/json      RegisterThing
//
// answered on the request topic + "/accepted" or "/rejected" through the
// connection that published the request only ("IoT Core Fleet Provisioning
// returns the device provisioning MQTT API results through the same MQTT
// connection used to publish the API request"): another claim holder
// subscribed to the same reply topic never sees a certificate or an
// ownership token that is not its own. The reply is delivered only if the
// client subscribed to it first ("If you don't subscribe to the response
// topics before you publish a request, you might not receive the results")
// and iot:Receive allows it. The iot:Publish check on the request already
// ran (OnACLCheck).

// Provisioning runs the fleet provisioning operations; the lab's
// provisioning package implements it. A nil *ProvisioningError is success.
type Provisioning interface {
	CreateCertificateFromCSR(ctx context.Context, p Principal, req protocol.CreateCertificateFromCSRRequest) (protocol.CreateCertificateFromCSRResponse, *protocol.ProvisioningError)
	CreateKeysAndCertificate(ctx context.Context, p Principal) (protocol.CreateKeysAndCertificateResponse, *protocol.ProvisioningError)
	RegisterThing(ctx context.Context, p Principal, template string, req protocol.RegisterThingRequest) (protocol.RegisterThingResponse, *protocol.ProvisioningError)
}

// isProvisioningRequest reports whether topic is a fleet provisioning
// request (not a reply).
func isProvisioningRequest(topic string) bool {
	if topic == protocol.TopicCreateFromCSR || topic == protocol.TopicCreateKeys {
		return true
	}
	_, ok := protocol.ParseProvisionTopic(topic)
	return ok
}

// handleProvisioning answers one request off the client's read loop (the
// pre-provisioning hook may take seconds).
func (s *Server) handleProvisioning(cl *mqtt.Client, sess *session, topic string, payload []byte) {
	payload = bytes.Clone(payload)
	go func() {
		log := s.log.With("clientId", cl.ID, "certificateId", sess.principal.CertificateID, "request", topic)
		var out any
		var perr *protocol.ProvisioningError
		bad := func(msg string) *protocol.ProvisioningError {
			return &protocol.ProvisioningError{StatusCode: 400, ErrorCode: protocol.ProvisioningInvalidRequest, ErrorMessage: msg}
		}
		ctx := context.Background()
		p := s.cfg.Provisioning
		switch {
		case p == nil:
			perr = &protocol.ProvisioningError{StatusCode: 404, ErrorCode: protocol.ProvisioningTemplateNotFound, ErrorMessage: "fleet provisioning is not available in this lab (no provisioning template loaded)"}
		case topic == protocol.TopicCreateFromCSR:
			var req protocol.CreateCertificateFromCSRRequest
			if err := protocol.Decode("CreateCertificateFromCsr request", payload, &req); err != nil {
				perr = bad(err.Error())
				break
			}
			out, perr = p.CreateCertificateFromCSR(ctx, sess.principal, req)
		case topic == protocol.TopicCreateKeys:
			out, perr = p.CreateKeysAndCertificate(ctx, sess.principal)
		default:
			tmpl, _ := protocol.ParseProvisionTopic(topic)
			var req protocol.RegisterThingRequest
			if err := protocol.Decode("RegisterThing request", payload, &req); err != nil {
				perr = bad(err.Error())
				break
			}
			out, perr = p.RegisterThing(ctx, sess.principal, tmpl, req)
		}
		suffix := "/accepted"
		if perr != nil {
			suffix, out = "/rejected", perr
			log.Info("fleet provisioning request rejected", "statusCode", perr.StatusCode, "errorCode", perr.ErrorCode, "errorMessage", perr.ErrorMessage)
		} else {
			log.Info("fleet provisioning request accepted")
		}
		b, err := json.Marshal(out)
		if err != nil {
			log.Error("encoding fleet provisioning reply", "err", err)
			return
		}
		s.replyToClient(cl, sess, topic+suffix, b)
	}()
}

// replyToClient publishes a reply to one connection only, if it subscribed
// to the topic and may receive it.
func (s *Server) replyToClient(cl *mqtt.Client, sess *session, topic string, payload []byte) {
	log := s.log.With("clientId", cl.ID, "topic", topic)
	subscribed := false
	for filter := range cl.State.Subscriptions.GetAll() {
		subscribed = subscribed || topicMatches(filter, topic)
	}
	if !subscribed {
		log.Info("fleet provisioning reply not delivered: the client did not subscribe to it before the request")
		return
	}
	res := s.arn("topic", topic)
	if d := s.cfg.Authorizer.Authorize(sess.principal, ActionReceive, res); !d.Allowed {
		logDecision(log, "receive denied, message not delivered", ActionReceive, res, d)
		return
	}
	// QoS 0 on the wire: the reply is written straight to the connection
	// (no inflight tracking), which MQTT allows for any subscription QoS.
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: payload}
	if err := cl.WritePacket(pk); err != nil {
		log.Info("fleet provisioning reply not delivered", "err", err)
	}
}

// topicMatches reports whether an MQTT topic filter matches a topic name.
func topicMatches(filter, topic string) bool {
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) {
			return false
		}
		if f != "+" && f != ts[i] {
			return false
		}
	}
	return len(fs) == len(ts)
}
