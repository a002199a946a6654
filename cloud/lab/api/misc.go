package api

import (
	"strconv"
	"strings"
)

// The endpoint, data-plane Publish and event configuration operations.

type endpointReply struct {
	Address string `json:"endpointAddress"`
}

type eventConfiguration struct {
	Enabled bool `json:"Enabled"`
}

func (s *Server) describeEndpoint(q *request) (any, error) {
	typ := q.query.Get("endpointType")
	switch typ {
	case "", "iot:Data", "iot:Data-ATS", "iot:CredentialProvider", "iot:Jobs":
	default:
		return nil, errInvalid("endpointType %q: one of iot:Data, iot:Data-ATS, iot:CredentialProvider, iot:Jobs", typ)
	}
	if typ == "" {
		typ = "iot:Data"
	}
	addr := s.cfg.Endpoints[typ]
	if addr == "" {
		addr = q.http.Host
	}
	q.res = typ
	return endpointReply{addr}, nil
}

// publish is the data-plane Publish
// (https://docs.aws.amazon.com/iot/latest/apireference/API_iotdata_Publish.html):
// POST /topics/{topic}?qos=0|1 with the payload as body. The topic may come
// %2F-escaped (as the SDKs send it) or with literal slashes.
func (s *Server) publish(q *request) (any, error) {
	topic := q.v("topic")
	if topic == "" || strings.ContainsAny(topic, "#+") || strings.ContainsRune(topic, 0) {
		return nil, errInvalid("topic %q is not a valid topic name", topic)
	}
	qos := byte(0)
	if v := q.query.Get("qos"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 1 {
			return nil, errInvalid("qos must be 0 or 1, got %q", v)
		}
		qos = byte(n)
	}
	if len(q.body) > 128<<10 {
		return nil, &apiError{Type: "RequestEntityTooLargeException", Status: 413, Message: "payload larger than 128 KiB"}
	}
	if s.cfg.Publisher == nil {
		return nil, &apiError{Type: "ServiceUnavailableException", Status: 503, Message: "the lab's broker is not attached"}
	}
	if err := s.cfg.Publisher.Publish(topic, q.body, qos); err != nil {
		return nil, &apiError{Type: "InternalFailureException", Status: 500, Message: "publishing to " + topic + ": " + err.Error()}
	}
	return rawResponse(nil), nil
}

func (s *Server) updateEventConfigurations(q *request) (any, error) {
	var in struct {
		EventConfigurations map[string]eventConfiguration `json:"eventConfigurations"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	cfg := map[string]bool{}
	for k, v := range in.EventConfigurations {
		cfg[k] = v.Enabled
	}
	return nil, s.reg.UpdateEventConfigurations(cfg)
}

func (s *Server) describeEventConfigurations(q *request) (any, error) {
	out := map[string]eventConfiguration{}
	for k, v := range s.reg.EventConfigurations() {
		out[k] = eventConfiguration{v}
	}
	return struct {
		Configurations map[string]eventConfiguration `json:"eventConfigurations"`
	}{out}, nil
}
