package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrPayloadNotObject is returned by Apply when a SELECT list adds keys to `*`
// but the payload is neither empty nor a JSON object. "Working with binary
// payloads" (binary-payloads.html): "If you have an empty or a JSON payload,
// the resulting payload can have data added using the rule."
var ErrPayloadNotObject = errors.New("payload is neither empty nor a JSON object, so the rule cannot add keys to it")

// Message is an MQTT message as the rule engine sees it.
type Message struct {
	Topic     string
	Payload   []byte
	ClientID  string    // clientid(); "" (clientid() = "n/a") for messages not sent over MQTT
	Principal string    // principal(): the certificate ID for X.509 clients
	Timestamp time.Time // timestamp() = Timestamp in milliseconds since the epoch
}

// Matches reports whether a topic matches the statement's FROM filter.
func (s *Statement) Matches(topic string) bool { return MatchTopic(s.Filter, topic) }

// Apply runs the statement on a message. matched is false when the topic
// does not match the FROM filter or the WHERE condition is not true (false
// or undefined); out is then nil. On a match out is the rule's output:
//   - `SELECT *` alone: the payload unchanged, whatever it is ("SELECT
//     clause", iot-sql-select.html: "use SELECT * to retrieve the entire incoming message
//     payload"; "Working with binary payloads").
//   - otherwise a JSON object: with `*`, the payload object's keys, then each
//     further item in order (an item overrides a payload key of the same
//     name); items whose value is undefined (a missing field, topic(n) past
//     the last level, an empty principal) are left out, as AWS leaves out
//     undefined values.
//
// Field references in a non-JSON payload are undefined; a WHERE condition on
// them is not true, so the rule does not fire.
func (s *Statement) Apply(m Message) (out []byte, matched bool, err error) {
	if !s.Matches(m.Topic) {
		return nil, false, nil
	}
	env := &env{msg: m}
	if json.Valid(m.Payload) {
		d := json.NewDecoder(bytes.NewReader(m.Payload))
		d.UseNumber()
		var v any
		if d.Decode(&v) == nil {
			env.obj, env.isObj = v.(map[string]any)
		}
	}
	if s.where != nil && s.where.eval(env) != isTrue {
		return nil, false, nil
	}
	if len(s.Items) == 1 && s.Items[0].Star {
		return bytes.Clone(m.Payload), true, nil
	}
	result := map[string]any{}
	for _, it := range s.Items {
		if it.Star {
			switch {
			case env.isObj:
				for k, v := range env.obj {
					result[k] = v
				}
			case len(bytes.TrimSpace(m.Payload)) == 0:
			default:
				return nil, true, fmt.Errorf("rule %q on topic %q: %w", s.SQL, m.Topic, ErrPayloadNotObject)
			}
			continue
		}
		v := it.term.value(env)
		if _, undef := v.(undefined); undef {
			delete(result, it.Alias)
			continue
		}
		result[it.Alias] = v
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(result); err != nil {
		return nil, true, fmt.Errorf("rule %q on topic %q: encoding the output: %w", s.SQL, m.Topic, err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), true, nil
}

type env struct {
	msg   Message
	obj   map[string]any
	isObj bool
}

// undefined is AWS IoT SQL's Undefined value.
type undefined struct{}

type term interface{ value(*env) any }

type literal struct{ v any }

type number struct {
	f    float64
	text string
}

func (l literal) value(*env) any {
	if n, ok := l.v.(number); ok {
		return json.Number(strconv.FormatFloat(n.f, 'g', -1, 64))
	}
	return l.v
}

type field struct{ path []string }

func (f field) value(e *env) any {
	if !e.isObj {
		return undefined{}
	}
	var cur any = e.obj
	for _, k := range f.path {
		m, ok := cur.(map[string]any)
		if !ok {
			return undefined{}
		}
		cur, ok = m[k]
		if !ok {
			return undefined{}
		}
	}
	return cur
}

type call struct {
	fn string
	n  int
}

// Functions: "Functions" in the AWS IoT SQL reference (iot-sql-functions.html).
func (c call) value(e *env) any {
	switch c.fn {
	case "topic":
		if c.n == 0 {
			return e.msg.Topic
		}
		levels := strings.Split(e.msg.Topic, "/")
		if c.n > len(levels) {
			return undefined{}
		}
		return levels[c.n-1]
	case "principal":
		if e.msg.Principal == "" {
			return undefined{}
		}
		return e.msg.Principal
	case "clientid":
		// "Returns the ID of the MQTT client sending the message, or n/a if
		// the message wasn't sent over MQTT."
		if e.msg.ClientID == "" {
			return "n/a"
		}
		return e.msg.ClientID
	case "timestamp":
		return json.Number(strconv.FormatInt(e.msg.Timestamp.UnixMilli(), 10))
	}
	return undefined{}
}

type tri int

const (
	isFalse tri = iota
	isTrue
	isUndefined
)

type expr interface{ eval(*env) tri }

type logical struct {
	op   string
	l, r expr
}

// eval follows "Operators" (iot-sql-operators.html): AND and OR need
// Boolean operands (or the strings "true"/"false"); any other operand,
// Undefined included, makes the result Undefined.
func (x logical) eval(e *env) tri {
	l, r := x.l.eval(e), x.r.eval(e)
	if l == isUndefined || r == isUndefined {
		return isUndefined
	}
	if x.op == "AND" {
		return boolTri(l == isTrue && r == isTrue)
	}
	return boolTri(l == isTrue || r == isTrue)
}

func boolTri(b bool) tri {
	if b {
		return isTrue
	}
	return isFalse
}

type not struct{ x expr }

func (x not) eval(e *env) tri {
	switch x.x.eval(e) {
	case isTrue:
		return isFalse
	case isFalse:
		return isTrue
	}
	return isUndefined
}

// truth is a bare term used as a condition: a Boolean, or the string
// "true" or "false" (case-insensitive); anything else is Undefined.
type truth struct{ t term }

func (x truth) eval(e *env) tri {
	switch v := x.t.value(e).(type) {
	case bool:
		return boolTri(v)
	case string:
		switch strings.ToLower(v) {
		case "true":
			return isTrue
		case "false":
			return isFalse
		}
	}
	return isUndefined
}

type compare struct {
	op   string
	l, r term
}

// eval compares two values. "Operators" (iot-sql-operators.html): for >,
// <, >= and <= "both operands are converted to a Decimal, and then
// compared" (a string converts when it is a number; anything else is
// Undefined). = and <> compare numbers numerically, strings byte-wise and
// Booleans; any other pairing (Undefined, mixed types, objects, arrays,
// null) is Undefined in the lab, so a WHERE on it does not fire.
func (x compare) eval(e *env) tri {
	l, r := x.l.value(e), x.r.value(e)
	if x.op != "=" && x.op != "<>" {
		a, ok1 := toDecimal(l)
		b, ok2 := toDecimal(r)
		if !ok1 || !ok2 {
			return isUndefined
		}
		c := cmpFloat(a, b)
		switch x.op {
		case "<":
			return boolTri(c < 0)
		case ">":
			return boolTri(c > 0)
		case "<=":
			return boolTri(c <= 0)
		}
		return boolTri(c >= 0)
	}
	eq, ok := false, false
	switch lv := l.(type) {
	case json.Number:
		if rv, isNum := r.(json.Number); isNum {
			a, _ := toDecimal(lv)
			b, _ := toDecimal(rv)
			eq, ok = a == b, true
		}
	case string:
		if rv, isStr := r.(string); isStr {
			eq, ok = lv == rv, true
		}
	case bool:
		if rv, isBool := r.(bool); isBool {
			eq, ok = lv == rv, true
		}
	}
	if !ok {
		return isUndefined
	}
	if x.op == "=" {
		return boolTri(eq)
	}
	return boolTri(!eq)
}

func toDecimal(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	}
	return 0, false
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
