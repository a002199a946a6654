package policy

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"unicode/utf8"
)

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
