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

// ParseJobDocument decodes and validates a rotation job document for a thing.
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
	for name, t := range map[string]string{"get.subscribe": d.Get.Subscribe, "get.publish": d.Get.Publish, "ack.subscribe": d.Ack.Subscribe, "ack.publish": d.Ack.Publish} {
		if t == "" {
			return d, fmt.Errorf("job document: %s is missing", name)
		}
		if strings.HasPrefix(t, "$") || strings.ContainsAny(t, "#\x00") {
			return d, fmt.Errorf("job document: %s %q is not an allowed topic", name, t)
		}
		if strings.HasSuffix(name, ".publish") && strings.Contains(t, "+") {
			return d, fmt.Errorf("job document: %s %q has a wildcard", name, t)
		}
		if !strings.Contains(t, "{thingName}") {
			return d, fmt.Errorf("job document: %s %q does not contain {thingName}", name, t)
		}
	}
	return d, nil
}
