// Package policy parses AWS IoT Core policy documents and evaluates them for
// the MQTT actions the lab's broker checks: iot:Connect, iot:Publish,
// iot:Subscribe and iot:Receive.
//
// Semantics follow the AWS IoT Core developer guide:
//   - "AWS IoT Core policies" (iot-policies.html) and IAM "Policy evaluation
//     logic" (reference_policies_evaluation-logic.html): everything is
//     denied by default, an Allow grants, an explicit Deny in any attached
//     policy overrides every Allow.
//   - "AWS IoT Core policy variables" (iot-policy-variables.html): `*` matches
//     any run of characters and `?` one character, IAM style; "The characters
//   - and # are treated as literal strings in a policy". $(*), $(?) and $($)
//     stand for the literal characters.
//   - "Thing policy examples" (thing-policy-examples.html): "If the device
//     certificate is not associated with the thing, this variable won't be
//     resolved and will result in an access denied error": a resource (or a
//     condition value) that names a variable without a value matches nothing.
//   - "Thing policy variables" (thing-policy-variables.html):
//     iot:Connection.Thing.IsAttached is "true" only when the certificate is
//     attached to the thing named by the client ID.
//
// Supported document elements: Version, Id, Statement (object or list); in a
// statement Sid, Effect (Allow|Deny), Action or NotAction, Resource or
// NotResource (string or list), Condition with the operators StringEquals,
// StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase,
// StringLike, StringNotLike and Bool (each optionally ...IfExists) on the
// condition keys listed in Variables. Anything else (Principal, ForAnyValue:,
// an unknown key or operator) is rejected by Parse with an error naming it:
// the lab must never silently grant or refuse what AWS would not.
package policy

import (
	"errors"
)

// ErrInvalid is wrapped by every Parse error.
var ErrInvalid = errors.New("invalid IoT policy document")

// MaxDocumentSize is the largest policy document AWS IoT accepts (2048
// characters without white space; the lab allows 2048 bytes of JSON with
// white space removed). "AWS IoT Core endpoints and quotas"
// (general/latest/gr/iot-core.html): "Maximum size of a policy document".
const MaxDocumentSize = 2048

// The MQTT actions the broker authorizes.
const (
	ActionConnect   = "iot:Connect"
	ActionPublish   = "iot:Publish"
	ActionSubscribe = "iot:Subscribe"
	ActionReceive   = "iot:Receive"
)

// Effect is Allow or Deny.
type Effect string

// The two effects.
const (
	Allow Effect = "Allow"
	Deny  Effect = "Deny"
)

// Document is a parsed policy document.
type Document struct {
	Version    string
	ID         string
	Statements []Statement
}

// Statement is one statement. Exactly one of Actions/NotActions and one of
// Resources/NotResources is set.
type Statement struct {
	Sid          string
	Effect       Effect
	Actions      []string
	NotActions   []string
	Resources    []string
	NotResources []string
	Conditions   []Condition // all must hold
}

// Condition is one (operator, key) pair of a Condition block: it holds when
// the key's value matches any of Values.
type Condition struct {
	Operator string // as written, e.g. "StringLike", "BoolIfExists"
	Key      string // e.g. "iot:Connection.Thing.IsAttached"
	Values   []string

	op       string // operator without IfExists
	ifExists bool
}

// Variables lists the policy variables (and condition keys) the lab resolves.
// "AWS IoT Core policy variables", "Basic AWS IoT Core policy variables",
// "Thing policy variables", "X.509 Certificate AWS IoT Core policy variables".
var Variables = []string{
	"iot:ClientId",
	"iot:Connection.Thing.ThingName",
	"iot:Connection.Thing.ThingTypeName",
	"iot:Connection.Thing.IsAttached",
	"iot:Certificate.Subject.CommonName",
	"iot:CertificateId", // lab extension: the certificate ID (principal())
}
