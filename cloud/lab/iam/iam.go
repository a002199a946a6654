// Package iam evaluates AWS IAM identity-based policies for the lab: the
// role policies cloud/template.yaml gives each function, and the policy of
// the --credentials key pair. The lab's S3 asks it before every request, so
// a function that reaches outside its role is refused as AWS refuses it.
//
// Semantics ("Policy evaluation logic",
// https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html):
// a request is denied unless a statement allows it, and an explicit Deny
// overrides every Allow. Action names match case-insensitively, resources
// case-sensitively, both with the * and ? wildcards
// (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html).
// Conditions: the String*, Arn* and Bool operators, each with ...IfExists,
// and Null. A condition key absent from the request makes a positive
// operator false and a negated one (StringNotEquals, StringNotLike,
// ArnNotEquals, ArnNotLike) true, and ...IfExists true
// (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html).
// Anything else (Principal, NotPrincipal, policy variables, set
// operators ForAnyValue:/ForAllValues:) is refused when the policy is
// parsed: the lab must never grant or refuse what AWS would not.
package iam

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// ErrInvalid is wrapped by every Parse error.
var ErrInvalid = errors.New("invalid IAM policy document")

// Document is a parsed identity-based policy.
type Document struct {
	Statements []Statement
}

// Statement is one statement of a policy.
type Statement struct {
	Sid          string
	Allow        bool // Effect Allow; false: Deny
	Actions      []string
	NotActions   []string
	Resources    []string
	NotResources []string
	Conditions   []Condition // all must hold
}

// Condition is one operator/key pair of a Condition block.
type Condition struct {
	Operator string // as written
	Key      string
	Values   []string

	op       string
	ifExists bool
}

var operators = map[string]bool{
	"StringEquals": true, "StringNotEquals": true, "StringEqualsIgnoreCase": true, "StringNotEqualsIgnoreCase": true,
	"StringLike": true, "StringNotLike": true, "ArnEquals": true, "ArnLike": true, "ArnNotEquals": true, "ArnNotLike": true,
	"Bool": true, "Null": true,
}

// Parse parses a policy document (JSON).
func Parse(doc []byte) (*Document, error) {
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		return nil, fmt.Errorf("%w: not JSON: %v", ErrInvalid, err)
	}
	return FromValue(v)
}

// FromValue parses a policy document already decoded from JSON or YAML (a
// map[string]any), as a template holds it.
func FromValue(v any) (*Document, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: a policy document is an object", ErrInvalid)
	}
	d := &Document{}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		switch k {
		case "Version":
			if s, _ := m[k].(string); s != "2012-10-17" && s != "2008-10-17" {
				return nil, fmt.Errorf("%w: Version %v (use \"2012-10-17\")", ErrInvalid, m[k])
			}
		case "Id":
		case "Statement":
			sts, ok := m[k].([]any)
			if !ok {
				sts = []any{m[k]}
			}
			for i, s := range sts {
				st, err := parseStatement(s)
				if err != nil {
					return nil, fmt.Errorf("%w: Statement[%d]: %v", ErrInvalid, i, err)
				}
				d.Statements = append(d.Statements, st)
			}
		default:
			return nil, fmt.Errorf("%w: unknown top-level key %q", ErrInvalid, k)
		}
	}
	if len(d.Statements) == 0 {
		return nil, fmt.Errorf("%w: no Statement", ErrInvalid)
	}
	return d, nil
}

func strings1(key string, v any) ([]string, error) {
	switch x := v.(type) {
	case string:
		return []string{x}, nil
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s: %v is not a string", key, e)
			}
			out = append(out, s)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%s is empty", key)
		}
		return out, nil
	case bool:
		return []string{fmt.Sprint(x)}, nil
	}
	return nil, fmt.Errorf("%s must be a string or a list of strings, got %v", key, v)
}

func parseStatement(v any) (Statement, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return Statement{}, errors.New("not an object")
	}
	var st Statement
	for _, k := range slices.Sorted(maps.Keys(m)) {
		var err error
		switch k {
		case "Sid":
			st.Sid, _ = m[k].(string)
		case "Effect":
			switch m[k] {
			case "Allow":
				st.Allow = true
			case "Deny":
			default:
				return st, fmt.Errorf("the Effect %v is not Allow or Deny", m[k])
			}
		case "Action":
			st.Actions, err = strings1(k, m[k])
		case "NotAction":
			st.NotActions, err = strings1(k, m[k])
		case "Resource":
			st.Resources, err = strings1(k, m[k])
		case "NotResource":
			st.NotResources, err = strings1(k, m[k])
		case "Condition":
			st.Conditions, err = parseConditions(m[k])
		default:
			return st, fmt.Errorf("%s is not supported by the lab's IAM", k)
		}
		if err != nil {
			return st, err
		}
	}
	if m["Effect"] == nil {
		return st, errors.New("the Effect is missing")
	}
	if (st.Actions == nil) == (st.NotActions == nil) {
		return st, errors.New("exactly one of Action and NotAction is required")
	}
	if (st.Resources == nil) == (st.NotResources == nil) {
		return st, errors.New("exactly one of Resource and NotResource is required")
	}
	for _, s := range append(append([]string{}, st.Resources...), st.NotResources...) {
		if strings.Contains(s, "${") {
			return st, fmt.Errorf("resource %q: policy variables are not supported by the lab's IAM", s)
		}
	}
	return st, nil
}

func parseConditions(v any) ([]Condition, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("the Condition must be an object")
	}
	var out []Condition
	for _, opName := range slices.Sorted(maps.Keys(m)) {
		op, ifExists := strings.CutSuffix(opName, "IfExists")
		if !operators[op] || (op == "Null" && ifExists) {
			return nil, fmt.Errorf("condition operator %s is not supported by the lab's IAM", opName)
		}
		keys, ok := m[opName].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("Condition %s must map keys to values", opName)
		}
		for _, key := range slices.Sorted(maps.Keys(keys)) {
			vals, err := strings1("Condition "+opName+" "+key, keys[key])
			if err != nil {
				return nil, err
			}
			out = append(out, Condition{Operator: opName, Key: key, Values: vals, op: op, ifExists: ifExists})
		}
	}
	return out, nil
}

// Request is one authorization question.
type Request struct {
	Action   string            // e.g. s3:GetObject
	Resource string            // e.g. arn:aws:s3:::bucket/key
	Context  map[string]string // condition keys present in the request (lower-cased names)
}

// Decision is the outcome of an evaluation.
type Decision struct {
	Allowed bool
	// Explicit: a Deny statement decided (an explicit deny), rather than the
	// absence of an Allow (an implicit deny).
	Explicit bool
	Reason   string
}

// Evaluate decides req against the policies.
func Evaluate(policies []*Document, req Request) Decision {
	allowed := ""
	for pi, d := range policies {
		for i, st := range d.Statements {
			if !st.applies(req) {
				continue
			}
			where := fmt.Sprintf("policy %d statement %d", pi, i)
			if st.Sid != "" {
				where += " (" + st.Sid + ")"
			}
			if !st.Allow {
				return Decision{Explicit: true, Reason: "explicitly denied by " + where}
			}
			if allowed == "" {
				allowed = where
			}
		}
	}
	if allowed != "" {
		return Decision{Allowed: true, Reason: "allowed by " + allowed}
	}
	return Decision{Reason: "no statement allows " + req.Action + " on " + req.Resource}
}

func (st *Statement) applies(req Request) bool {
	if st.Actions != nil && !matchAny(st.Actions, req.Action, true) {
		return false
	}
	if st.NotActions != nil && matchAny(st.NotActions, req.Action, true) {
		return false
	}
	if st.Resources != nil && !matchAny(st.Resources, req.Resource, false) {
		return false
	}
	if st.NotResources != nil && matchAny(st.NotResources, req.Resource, false) {
		return false
	}
	for _, c := range st.Conditions {
		if !c.holds(req.Context) {
			return false
		}
	}
	return true
}

func matchAny(patterns []string, s string, fold bool) bool {
	for _, p := range patterns {
		if fold {
			if Match(strings.ToLower(p), strings.ToLower(s)) {
				return true
			}
		} else if Match(p, s) {
			return true
		}
	}
	return false
}

func (c *Condition) holds(ctx map[string]string) bool {
	v, present := ctx[strings.ToLower(c.Key)]
	if c.op == "Null" {
		// Null "true": the key is absent; "false": it is present.
		for _, want := range c.Values {
			if (want == "true") == !present {
				return true
			}
		}
		return false
	}
	negated := strings.Contains(c.op, "Not")
	if !present {
		return c.ifExists || negated
	}
	any := false
	for _, want := range c.Values {
		var m bool
		switch c.op {
		case "StringEquals", "StringNotEquals", "ArnEquals", "ArnNotEquals":
			m = v == want
		case "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase":
			m = strings.EqualFold(v, want)
		case "StringLike", "StringNotLike", "ArnLike", "ArnNotLike":
			m = Match(want, v)
		case "Bool":
			m = strings.EqualFold(v, want)
		}
		any = any || m
	}
	if negated {
		return !any
	}
	return any
}

// Match matches s against an IAM pattern: * any run of characters, ? one.
func Match(p, s string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for len(p) > 0 && p[0] == '*' {
				p = p[1:]
			}
			if p == "" {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if Match(p, s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
			s, p = s[1:], p[1:]
		default:
			if s == "" || s[0] != p[0] {
				return false
			}
			s, p = s[1:], p[1:]
		}
	}
	return s == ""
}
