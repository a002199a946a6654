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
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
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

func knownVariable(name string) bool {
	_, ok := canonical(name)
	return ok
}

// canonical returns the Variables spelling of a name: IAM treats condition
// key names case-insensitively (IAM "Condition element": "Condition key
// names are not case-sensitive").
func canonical(name string) (string, bool) {
	for _, v := range Variables {
		if strings.EqualFold(v, name) {
			return v, true
		}
	}
	return "", false
}

var operators = map[string]bool{
	"StringEquals": true, "StringNotEquals": true,
	"StringEqualsIgnoreCase": true, "StringNotEqualsIgnoreCase": true,
	"StringLike": true, "StringNotLike": true,
	"Bool": true,
}

// Parse parses and validates a policy document.
func Parse(doc []byte) (*Document, error) {
	if len(compact(doc)) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: document is %d bytes without white space, AWS IoT allows %d", ErrInvalid, len(compact(doc)), MaxDocumentSize)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(doc, &top); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrInvalid, err)
	}
	d := &Document{}
	for _, k := range sortedKeys(top) {
		v := top[k]
		switch k {
		case "Version":
			if err := json.Unmarshal(v, &d.Version); err != nil {
				return nil, fmt.Errorf("%w: Version must be a string", ErrInvalid)
			}
			if d.Version != "2012-10-17" && d.Version != "2008-10-17" {
				return nil, fmt.Errorf("%w: Version %q is not a policy language version (use \"2012-10-17\")", ErrInvalid, d.Version)
			}
		case "Id":
			if err := json.Unmarshal(v, &d.ID); err != nil {
				return nil, fmt.Errorf("%w: Id must be a string", ErrInvalid)
			}
		case "Statement":
			var list []json.RawMessage
			if t := bytes.TrimSpace(v); len(t) > 0 && t[0] == '{' {
				list = []json.RawMessage{v}
			} else if err := json.Unmarshal(v, &list); err != nil {
				return nil, fmt.Errorf("%w: Statement must be an object or a list of objects", ErrInvalid)
			}
			if len(list) == 0 {
				return nil, fmt.Errorf("%w: Statement is empty", ErrInvalid)
			}
			for i, raw := range list {
				st, err := parseStatement(raw)
				if err != nil {
					return nil, fmt.Errorf("%w: Statement[%d]: %v", ErrInvalid, i, err)
				}
				d.Statements = append(d.Statements, st)
			}
		default:
			return nil, fmt.Errorf("%w: unknown top-level element %q (allowed: Version, Id, Statement)", ErrInvalid, k)
		}
	}
	if d.Version == "" {
		return nil, fmt.Errorf("%w: Version is missing (use \"2012-10-17\")", ErrInvalid)
	}
	if d.Statements == nil {
		return nil, fmt.Errorf("%w: Statement is missing", ErrInvalid)
	}
	return d, nil
}

func compact(doc []byte) []byte {
	var b bytes.Buffer
	if json.Compact(&b, doc) != nil {
		return doc
	}
	return b.Bytes()
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func parseStatement(raw json.RawMessage) (Statement, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return Statement{}, errors.New("not a JSON object")
	}
	var st Statement
	var err error
	for _, k := range sortedKeys(m) {
		v := m[k]
		switch k {
		case "Sid":
			if json.Unmarshal(v, &st.Sid) != nil {
				//lint:ignore ST1005 "Sid" is the policy element's name
				return st, errors.New("Sid must be a string")
			}
		case "Effect":
			var e string
			if json.Unmarshal(v, &e) != nil || (e != string(Allow) && e != string(Deny)) {
				return st, fmt.Errorf("Effect must be \"Allow\" or \"Deny\", got %s", clip(v))
			}
			st.Effect = Effect(e)
		case "Action":
			st.Actions, err = stringOrList(k, v)
		case "NotAction":
			st.NotActions, err = stringOrList(k, v)
		case "Resource":
			st.Resources, err = stringOrList(k, v)
		case "NotResource":
			st.NotResources, err = stringOrList(k, v)
		case "Condition":
			st.Conditions, err = parseConditions(v)
		case "Principal", "NotPrincipal":
			return st, fmt.Errorf("%s is not allowed in an IoT policy (the policy applies to the principal it is attached to)", k)
		default:
			return st, fmt.Errorf("unknown element %q", k)
		}
		if err != nil {
			return st, err
		}
	}
	if st.Effect == "" {
		return st, errors.New("Effect is missing")
	}
	if (st.Actions == nil) == (st.NotActions == nil) {
		return st, errors.New("exactly one of Action and NotAction is required")
	}
	if (st.Resources == nil) == (st.NotResources == nil) {
		return st, errors.New("exactly one of Resource and NotResource is required")
	}
	for _, a := range append(append([]string{}, st.Actions...), st.NotActions...) {
		if a != "*" && !validAction(a) {
			return st, fmt.Errorf("action %q is not of the form service:Name (e.g. iot:Publish)", a)
		}
	}
	for _, r := range append(append([]string{}, st.Resources...), st.NotResources...) {
		if err := checkVariables(r); err != nil {
			return st, fmt.Errorf("resource %q: %v", r, err)
		}
	}
	return st, nil
}

func validAction(a string) bool {
	svc, name, ok := strings.Cut(a, ":")
	if !ok || svc == "" || name == "" {
		return false
	}
	for _, r := range svc {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '*' || r == '?' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func clip(v []byte) string {
	s := string(v)
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}

func stringOrList(key string, v json.RawMessage) ([]string, error) {
	var s string
	if json.Unmarshal(v, &s) == nil {
		return []string{s}, nil
	}
	var l []string
	if json.Unmarshal(v, &l) != nil {
		return nil, fmt.Errorf("%s must be a string or a list of strings, got %s", key, clip(v))
	}
	if len(l) == 0 {
		return nil, fmt.Errorf("%s is an empty list", key)
	}
	return l, nil
}

func parseConditions(v json.RawMessage) ([]Condition, error) {
	var ops map[string]map[string]json.RawMessage
	if err := json.Unmarshal(v, &ops); err != nil {
		return nil, fmt.Errorf("Condition must be an object of operator -> {key: value(s)}, got %s", clip(v))
	}
	var out []Condition
	for _, opName := range sortedKeys(ops) {
		op, ifExists := strings.CutSuffix(opName, "IfExists")
		if !operators[op] {
			return nil, fmt.Errorf("Condition operator %q is not supported by the lab (supported: Bool, StringEquals, StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase, StringLike, StringNotLike, each optionally ...IfExists)", opName)
		}
		keys := ops[opName]
		if len(keys) == 0 {
			return nil, fmt.Errorf("Condition operator %q has no keys", opName)
		}
		for _, key := range sortedKeys(keys) {
			if !knownVariable(key) {
				return nil, fmt.Errorf("Condition key %q is not supported by the lab (supported: %s)", key, strings.Join(Variables, ", "))
			}
			vals, err := conditionValues(keys[key])
			if err != nil {
				return nil, fmt.Errorf("Condition %s %s: %v", opName, key, err)
			}
			for _, val := range vals {
				if op == "Bool" && !strings.EqualFold(val, "true") && !strings.EqualFold(val, "false") {
					return nil, fmt.Errorf("Condition %s %s: value %q is not \"true\" or \"false\"", opName, key, val)
				}
				if err := checkVariables(val); err != nil {
					return nil, fmt.Errorf("Condition %s %s value %q: %v", opName, key, val, err)
				}
			}
			out = append(out, Condition{Operator: opName, Key: key, Values: vals, op: op, ifExists: ifExists})
		}
	}
	return out, nil
}

// conditionValues accepts a string, a bool or number (IAM allows them and
// compares their string form), or a non-empty list of those.
func conditionValues(v json.RawMessage) ([]string, error) {
	one := func(r json.RawMessage) (string, bool) {
		var s string
		if json.Unmarshal(r, &s) == nil {
			return s, true
		}
		var b bool
		if json.Unmarshal(r, &b) == nil {
			return strconv.FormatBool(b), true
		}
		var n json.Number
		if json.Unmarshal(r, &n) == nil {
			return n.String(), true
		}
		return "", false
	}
	if s, ok := one(v); ok {
		return []string{s}, nil
	}
	var l []json.RawMessage
	if json.Unmarshal(v, &l) != nil || len(l) == 0 {
		return nil, fmt.Errorf("value must be a string, bool, number or a non-empty list of them, got %s", clip(v))
	}
	var out []string
	for _, r := range l {
		s, ok := one(r)
		if !ok {
			return nil, fmt.Errorf("value must be a string, bool or number, got %s", clip(r))
		}
		out = append(out, s)
	}
	return out, nil
}

// checkVariables rejects malformed or unknown ${...} references.
func checkVariables(s string) error {
	_, err := expand(s, func(name string) (string, bool) {
		return "", knownVariable(name)
	}, true)
	return err
}

// Vars are the values of the policy variables for one connection.
type Vars struct {
	ClientID      string // iot:ClientId
	ThingName     string // iot:Connection.Thing.ThingName; "" when no thing is attached
	ThingTypeName string // iot:Connection.Thing.ThingTypeName; "" when none
	IsAttached    bool   // iot:Connection.Thing.IsAttached
	CertificateCN string // iot:Certificate.Subject.CommonName; "" when the certificate has none
	CertificateID string // iot:CertificateId (lab extension)
}

// Lookup returns the value of a policy variable; ok is false when the
// variable has no value for this connection (e.g. the thing name when no
// thing is attached), which makes a resource that names it match nothing.
func (v Vars) Lookup(name string) (string, bool) {
	name, _ = canonical(name)
	switch name {
	case "iot:ClientId":
		return v.ClientID, v.ClientID != ""
	case "iot:Connection.Thing.ThingName":
		return v.ThingName, v.ThingName != "" && v.IsAttached
	case "iot:Connection.Thing.ThingTypeName":
		return v.ThingTypeName, v.ThingTypeName != "" && v.IsAttached
	case "iot:Connection.Thing.IsAttached":
		return strconv.FormatBool(v.IsAttached), true
	case "iot:Certificate.Subject.CommonName":
		return v.CertificateCN, v.CertificateCN != ""
	case "iot:CertificateId":
		return v.CertificateID, v.CertificateID != ""
	}
	return "", false
}

// Request is one authorization question.
type Request struct {
	Action   string // iot:Connect, iot:Publish, iot:Subscribe, iot:Receive
	Resource string // arn:aws:iot:REGION:ACCOUNT:client/ID, topic/T or topicfilter/F
	Vars     Vars
}

// Named is a policy attached to the principal, with its name.
type Named struct {
	Name string
	Doc  *Document
}

// Decision is the result of an evaluation and what decided it.
type Decision struct {
	Allowed   bool
	Policy    string // name of the deciding policy; "" for the default deny
	Statement int    // index of the deciding statement; -1 for the default deny
	Sid       string // Sid of the deciding statement, if it has one
	Effect    string // "Allow", "Deny" (explicit) or "" (default deny)
	Reason    string
}

// LogValue makes a Decision a structured slog group.
func (d Decision) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.Bool("allowed", d.Allowed),
		slog.String("effect", d.Effect),
		slog.String("policy", d.Policy),
		slog.Int("statement", d.Statement),
	}
	if d.Sid != "" {
		attrs = append(attrs, slog.String("sid", d.Sid))
	}
	attrs = append(attrs, slog.String("reason", d.Reason))
	return slog.GroupValue(attrs...)
}

// Evaluate decides a request against the policies attached to the
// principal: an explicit Deny in any of them wins, else the first Allow
// grants, else the request is denied by default.
func Evaluate(policies []Named, req Request) Decision {
	var allow *Decision
	for _, p := range policies {
		if p.Doc == nil {
			continue
		}
		for i, st := range p.Doc.Statements {
			if !st.applies(req) {
				continue
			}
			d := Decision{Policy: p.Name, Statement: i, Sid: st.Sid, Effect: string(st.Effect)}
			if st.Effect == Deny {
				d.Reason = fmt.Sprintf("explicitly denied by policy %q statement %d", p.Name, i)
				return d
			}
			if allow == nil {
				d.Allowed = true
				d.Reason = fmt.Sprintf("allowed by policy %q statement %d", p.Name, i)
				allow = &d
			}
		}
	}
	if allow != nil {
		return *allow
	}
	names := make([]string, 0, len(policies))
	for _, p := range policies {
		names = append(names, p.Name)
	}
	reason := "no policy attached to the principal"
	if len(names) > 0 {
		reason = fmt.Sprintf("no statement of policies [%s] allows %s on %s (default deny)", strings.Join(names, ", "), req.Action, req.Resource)
	}
	return Decision{Statement: -1, Reason: reason}
}

func (st *Statement) applies(req Request) bool {
	if st.Actions != nil {
		if !matchAny(st.Actions, req.Action, nil, true) {
			return false
		}
	} else if matchAny(st.NotActions, req.Action, nil, true) {
		return false
	}
	if st.Resources != nil {
		if !matchAny(st.Resources, req.Resource, req.Vars.Lookup, false) {
			return false
		}
	} else if matchAny(st.NotResources, req.Resource, req.Vars.Lookup, false) {
		return false
	}
	for _, c := range st.Conditions {
		if !c.holds(req.Vars) {
			return false
		}
	}
	return true
}

func matchAny(patterns []string, s string, lookup func(string) (string, bool), fold bool) bool {
	for _, p := range patterns {
		if Match(p, s, lookup, fold) {
			return true
		}
	}
	return false
}

func (c *Condition) holds(v Vars) bool {
	actual, present := v.Lookup(c.Key)
	negated := strings.Contains(c.op, "Not")
	if !present {
		// IAM "Condition operators" (reference_policies_elements_condition_operators.html):
		// a missing key makes a condition false,
		// except ...IfExists (true) and the negated operators (true).
		return c.ifExists || negated
	}
	matched := false
	for _, want := range c.Values {
		var m bool
		switch c.op {
		case "Bool":
			m = strings.EqualFold(actual, want)
		case "StringEquals", "StringNotEquals":
			w, ok := expandValue(want, v.Lookup)
			m = ok && actual == w
		case "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase":
			w, ok := expandValue(want, v.Lookup)
			m = ok && strings.EqualFold(actual, w)
		case "StringLike", "StringNotLike":
			m = Match(want, actual, v.Lookup, false)
		}
		if m {
			matched = true
			break
		}
	}
	if negated {
		return !matched
	}
	return matched
}

func expandValue(s string, lookup func(string) (string, bool)) (string, bool) {
	toks, err := expand(s, lookup, false)
	if err != nil {
		return "", false
	}
	var b strings.Builder
	for _, t := range toks {
		b.WriteRune(t.r)
	}
	return b.String(), true
}

// literalPrefix is the length of pattern's prefix before the first
// wildcard, ${variable} or $(c) escape.
func literalPrefix(pattern string) int {
	for i := 0; i < len(pattern); i++ {
		switch pattern[i] {
		case '*', '?':
			return i
		case '$':
			if i+1 < len(pattern) && (pattern[i+1] == '{' || pattern[i+1] == '(') {
				return i
			}
		}
	}
	return len(pattern)
}

type tok struct {
	r    rune
	wild byte // 0 literal, '*' or '?'
}

var errUnresolved = errors.New("unresolved policy variable")

// expand turns a pattern into tokens: substituted variable values and
// $(*), $(?), $($) are literal; bare * and ? are wildcards.
func expand(s string, lookup func(string) (string, bool), strict bool) ([]tok, error) {
	out := make([]tok, 0, len(s))
	for i := 0; i < len(s); {
		c := s[i]
		if c == '$' && i+1 < len(s) && s[i+1] == '{' {
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return nil, errors.New("unterminated ${...} policy variable")
			}
			name := s[i+2 : i+end]
			val, ok := lookup(name)
			if !ok {
				if strict {
					return nil, fmt.Errorf("unknown policy variable ${%s} (the lab knows: %s)", name, strings.Join(Variables, ", "))
				}
				return nil, errUnresolved
			}
			for _, r := range val {
				out = append(out, tok{r: r})
			}
			i += end + 1
			continue
		}
		if c == '$' && i+3 < len(s) && s[i+1] == '(' && s[i+3] == ')' && strings.IndexByte("*?$", s[i+2]) >= 0 {
			out = append(out, tok{r: rune(s[i+2])})
			i += 4
			continue
		}
		if c == '*' || c == '?' {
			out = append(out, tok{r: rune(c), wild: c})
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		out = append(out, tok{r: r})
		i += n
	}
	return out, nil
}

// Match reports whether s matches an IAM-style pattern: * matches any run of
// characters (including /), ? exactly one; MQTT's + and # are literal.
// lookup resolves ${...} variables (nil: no variables); a pattern with an
// unresolved variable matches nothing. fold compares case-insensitively
// (action names).
func Match(pattern, s string, lookup func(string) (string, bool), fold bool) bool {
	if !fold {
		// Fast path: the literal prefix before any variable or wildcard.
		i := literalPrefix(pattern)
		if i == len(pattern) {
			return pattern == s
		}
		if !strings.HasPrefix(s, pattern[:i]) {
			return false
		}
	}
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	p, err := expand(pattern, lookup, false)
	if err != nil {
		return false
	}
	str := []rune(s)
	eq := func(a, b rune) bool {
		if fold {
			return a == b || strings.EqualFold(string(a), string(b))
		}
		return a == b
	}
	// Iterative wildcard matching with single-star backtracking: O(len(p)*len(s)).
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(str) {
		switch {
		case pi < len(p) && p[pi].wild == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && (p[pi].wild == '?' || (p[pi].wild == 0 && eq(p[pi].r, str[si]))):
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi].wild == '*' {
		pi++
	}
	return pi == len(p)
}
