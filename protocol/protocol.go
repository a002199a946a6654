// Package protocol defines the messages bootcertd and the cloud functions
// exchange over MQTT: the rotation job document and the certificate get and
// ack requests and replies (DESIGN.md, "Rotation"). Both sides import it, so
// the wire format has one definition.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// MaxPayload bounds every message decoded here (AWS IoT's MQTT payload limit
// is 128 KiB).
const MaxPayload = 128 << 10

// OperationRotate is the job document's operation.
const OperationRotate = "bootcert.rotate"

// Version is the job document version this code speaks.
const Version = "1"

// JobDocument is the rotation job's document.
type JobDocument struct {
	Operation string    `json:"operation"`
	Version   string    `json:"version"`
	Get       TopicPair `json:"get"`
	Ack       TopicPair `json:"ack"`
}

// TopicPair names the topic a device publishes to and the filter it
// subscribes to (before publishing) for the replies. {thingName} is replaced
// with the device's thing name.
type TopicPair struct {
	Subscribe string `json:"subscribe"`
	Publish   string `json:"publish"`
}

// DefaultJobDocument is the document `bootcertctl cloud setup` creates.
func DefaultJobDocument() JobDocument {
	return JobDocument{
		Operation: OperationRotate, Version: Version,
		Get: TopicPair{Subscribe: "certificates/{thingName}/get/+", Publish: "certificates/{thingName}/get"},
		Ack: TopicPair{Subscribe: "certificates/{thingName}/ack/+", Publish: "certificates/{thingName}/ack"},
	}
}

// Expand replaces {thingName} in both topics.
func (p TopicPair) Expand(thing string) TopicPair {
	return TopicPair{
		Subscribe: strings.ReplaceAll(p.Subscribe, "{thingName}", thing),
		Publish:   strings.ReplaceAll(p.Publish, "{thingName}", thing),
	}
}

// GetRequest asks the vendor for a certificate. CSR is PEM; it is empty in
// pre-provisioned mode.
type GetRequest struct {
	JobID       string `json:"jobId"`
	ClientToken string `json:"clientToken"`
	CSR         string `json:"csr,omitempty"`
	// Attestation proves the CSR's key lives in the device's TPM
	// (attestation.go); absent for keys that cannot be attested.
	Attestation *Attestation `json:"attestation,omitempty"`
}

// GetAccepted carries the new certificate. Location is a presigned HTTPS URL
// to the same certificate package, for devices that get no inline PEM.
type GetAccepted struct {
	ClientToken    string `json:"clientToken"`
	CertificateID  string `json:"certificateId"`
	CertificatePEM string `json:"certificatePem,omitempty"`
	Location       string `json:"location,omitempty"`
	// Attested is true when the vendor verified the new key's TPM
	// attestation and recorded it (docs/attestation.md); absent otherwise.
	Attested bool `json:"attested,omitempty"`
}

// AckRequest confirms the device is connected with the new certificate.
type AckRequest struct {
	JobID         string `json:"jobId"`
	ClientToken   string `json:"clientToken"`
	CertificateID string `json:"certificateId"`
}

// AckAccepted is the commit point.
type AckAccepted struct {
	ClientToken   string `json:"clientToken"`
	CertificateID string `json:"certificateId"`
}

// Rejected is the reply on get/rejected and ack/rejected.
type Rejected struct {
	ClientToken string `json:"clientToken"`
	Code        Code   `json:"code"`
	Message     string `json:"message"`
	Retryable   bool   `json:"retryable"`
}

// Code is a rejection code.
type Code string

// Rejection codes.
const (
	NotAllowed        Code = "NOT_ALLOWED"
	Revoked           Code = "REVOKED"
	NotActivated      Code = "NOT_ACTIVATED"
	BadCSR            Code = "BAD_CSR"
	NoRotationPending Code = "NO_ROTATION_PENDING"
	Throttled         Code = "THROTTLED"
	Internal          Code = "INTERNAL"
)

// Topic suffixes of replies.
const (
	SuffixAccepted = "accepted"
	SuffixRejected = "rejected"
)

// ErrTooLarge is returned for payloads over MaxPayload.
var ErrTooLarge = errors.New("payload larger than 128 KiB")

// Decode strictly decodes one JSON object: unknown fields are accepted (the
// other side may be newer) but trailing data, oversize payloads and wrong
// types are errors naming the message.
func Decode(what string, payload []byte, v any) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("decoding %s: %w (%d bytes)", what, ErrTooLarge, len(payload))
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding %s: %w", what, err)
	}
	if dec.More() {
		return fmt.Errorf("decoding %s: trailing data after the JSON object", what)
	}
	return nil
}

// ParseJobDocument decodes and validates a rotation job document. Every
// topic must lie under TopicNamespace (certificates/{thingName}/, the only
// bootcert topics the device policies grant, for the thing itself): a
// document naming anything else would make the device publish or subscribe
// where the broker refuses it, and AWS IoT answers that by disconnecting an
// MQTT 3.1.1 client (publish) or refusing the subscription (SUBACK 0x80).
// Each pair's subscribe filter must be its publish topic + "/+": the cloud
// replies on the request topic + "/accepted" or "/rejected". The error names
// the field and the rule it breaks.
func ParseJobDocument(payload []byte) (JobDocument, error) {
	var d JobDocument
	if err := Decode("job document", payload, &d); err != nil {
		return d, err
	}
	if d.Operation != OperationRotate {
		return d, fmt.Errorf("job document: operation %q is not %q", d.Operation, OperationRotate)
	}
	if d.Version != Version {
		return d, fmt.Errorf("job document: version %q not supported (want %q)", d.Version, Version)
	}
	for _, p := range []struct {
		name string
		tp   TopicPair
	}{{"get", d.Get}, {"ack", d.Ack}} {
		if err := checkRequestTopic(p.name+".publish", p.tp.Publish); err != nil {
			return d, err
		}
		if p.tp.Subscribe == "" {
			return d, fmt.Errorf("job document: %s.subscribe is missing", p.name)
		}
		if want := p.tp.Publish + "/+"; p.tp.Subscribe != want {
			return d, fmt.Errorf("job document: %s.subscribe %q is not %q (replies come on the request topic + /accepted or /rejected)", p.name, clip(p.tp.Subscribe), clip(want))
		}
	}
	if d.Get.Publish == d.Ack.Publish {
		return d, fmt.Errorf("job document: get.publish and ack.publish are the same topic %q", clip(d.Get.Publish))
	}
	return d, nil
}

// maxTopicLevels and maxLevelLen bound the part of a request topic after
// TopicNamespace: with a 128-character thing name and a reply suffix the
// expanded topic stays far below AWS IoT's 256-byte topic limit and 7
// forward slashes
// (https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits).
const (
	maxTopicLevels = 3
	maxLevelLen    = 32
)

// checkRequestTopic checks a publish topic of the job document:
// TopicNamespace, then 1 to maxTopicLevels levels of [A-Za-z0-9_-].
func checkRequestTopic(name, t string) error {
	if t == "" {
		return fmt.Errorf("job document: %s is missing", name)
	}
	rest, ok := strings.CutPrefix(t, TopicNamespace)
	if !ok {
		return fmt.Errorf("job document: %s %q is outside %s (the only topics the device policies grant)", name, clip(t), TopicNamespace)
	}
	levels := strings.Split(rest, "/")
	if len(levels) > maxTopicLevels {
		return fmt.Errorf("job document: %s %q has more than %d levels after %s", name, clip(t), maxTopicLevels, TopicNamespace)
	}
	for _, l := range levels {
		if l == "" || len(l) > maxLevelLen {
			return fmt.Errorf("job document: %s %q has an empty or over-long level (1-%d characters each)", name, clip(t), maxLevelLen)
		}
		for i := 0; i < len(l); i++ {
			if c := l[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return fmt.Errorf("job document: %s %q has %q after %s (allowed: A-Z a-z 0-9 _ -; no wildcard, no placeholder)", name, clip(t), string(rune(c)), TopicNamespace)
			}
		}
	}
	return nil
}

// clip bounds a value quoted in an error (a document can be 128 KiB).
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
