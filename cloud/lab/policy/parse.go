package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

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
	for _, k := range slices.Sorted(maps.Keys(top)) {
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

func parseStatement(raw json.RawMessage) (Statement, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return Statement{}, errors.New("not a JSON object")
	}
	var st Statement
	var err error
	for _, k := range slices.Sorted(maps.Keys(m)) {
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
	for _, opName := range slices.Sorted(maps.Keys(ops)) {
		op, ifExists := strings.CutSuffix(opName, "IfExists")
		if !operators[op] {
			return nil, fmt.Errorf("Condition operator %q is not supported by the lab (supported: Bool, StringEquals, StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase, StringLike, StringNotLike, each optionally ...IfExists)", opName)
		}
		keys := ops[opName]
		if len(keys) == 0 {
			return nil, fmt.Errorf("Condition operator %q has no keys", opName)
		}
		for _, key := range slices.Sorted(maps.Keys(keys)) {
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
