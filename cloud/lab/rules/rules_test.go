package rules

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The three statements of bootcert's template (shared names).
const (
	sqlJITR    = `SELECT * FROM '$aws/events/certificates/registered/+'`
	sqlVendor  = `SELECT *, topic(2) AS thingName, topic(3) AS operation, principal() AS principal, clientid() AS clientId, timestamp() AS receivedAt FROM 'certificates/+/+'`
	sqlReaper  = `SELECT * FROM '$aws/events/jobExecution/+/+'`
	certID     = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	deviceName = "gw-0001"
)

var ts = time.Date(2026, 11, 26, 12, 0, 0, 123_000_000, time.UTC)

func mustParse(t testing.TB, sql string) *Statement {
	t.Helper()
	s, err := Parse(sql)
	if err != nil {
		t.Fatalf("Parse(%q): %v", sql, err)
	}
	return s
}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("output %q is not a JSON object: %v", b, err)
	}
	return m
}

func TestVendorRule(t *testing.T) {
	s := mustParse(t, sqlVendor)
	msg := Message{Topic: "certificates/" + deviceName + "/get", Payload: []byte(`{"jobId":"bootcert-rotation","clientToken":"t1","csr":"MII","thingName":"spoofed"}`),
		ClientID: deviceName, Principal: certID, Timestamp: ts}
	out, ok, err := s.Apply(msg)
	if err != nil || !ok {
		t.Fatalf("Apply: ok=%v err=%v", ok, err)
	}
	got := decode(t, out)
	want := map[string]any{"jobId": "bootcert-rotation", "clientToken": "t1", "csr": "MII",
		"thingName": deviceName, // the topic overrides a payload key of the same name
		"operation": "get", "principal": certID, "clientId": deviceName, "receivedAt": float64(ts.UnixMilli())}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	for _, topic := range []string{"certificates/" + deviceName + "/get/accepted", "certificates/" + deviceName, "other/x/get"} {
		if _, ok, _ := s.Apply(Message{Topic: topic, Payload: []byte(`{}`)}); ok {
			t.Errorf("rule fired on %s", topic)
		}
	}
}

func TestSelectStarPassesPayloadUnchanged(t *testing.T) {
	s := mustParse(t, sqlJITR)
	for _, payload := range []string{
		`{"certificateId":"abc","caCertificateId":"ca1","timestamp":1,"certificateStatus":"PENDING_ACTIVATION","awsAccountId":"123456789012"}`,
		"\x00\x01binary", ``, `[1,2]`,
	} {
		out, ok, err := s.Apply(Message{Topic: "$aws/events/certificates/registered/ca1", Payload: []byte(payload)})
		if err != nil || !ok || string(out) != payload {
			t.Errorf("payload %q: out=%q ok=%v err=%v", payload, out, ok, err)
		}
	}
	if s.Matches("$aws/events/certificates/registered/ca1/x") || !s.Matches("$aws/events/certificates/registered/ca1") {
		t.Error("FROM filter")
	}
}

func TestApplyTable(t *testing.T) {
	obj := `{"a":1,"b":{"c":"x","d":2.5},"s":"hello","flag":true,"n":null}`
	cases := []struct {
		name    string
		sql     string
		topic   string
		payload string
		fire    bool
		want    string // JSON; "" when not fired
	}{
		{"ok/fields", `SELECT a, b.c FROM 't/#'`, "t/1", obj, true, `{"a":1,"c":"x"}`},
		{"ok/alias", `select a as A, b.d AS D from 't/#'`, "t", obj, true, `{"A":1,"D":2.5}`},
		{"ok/literals", `SELECT 'it''s' AS s, 42 AS n, -1.5 AS m, true AS t, FALSE AS f FROM 't'`, "t", obj, true, `{"s":"it's","n":42,"m":-1.5,"t":true,"f":false}`},
		{"ok/topic-whole-and-out-of-range", `SELECT topic() AS t, topic(9) AS none FROM 'a/+/c'`, "a/b/c", obj, true, `{"t":"a/b/c"}`},
		{"ok/missing-field-omitted", `SELECT zz, a FROM 't'`, "t", obj, true, `{"a":1}`},
		{"ok/where-number", `SELECT a FROM 't' WHERE a = 1`, "t", obj, true, `{"a":1}`},
		{"fail/where-number-false", `SELECT a FROM 't' WHERE a > 1`, "t", obj, false, ""},
		{"ok/where-float-int", `SELECT a FROM 't' WHERE b.d >= 2.5 AND b.d < 3`, "t", obj, true, `{"a":1}`},
		{"ok/where-string", `SELECT a FROM 't' WHERE s <> 'bye' AND s = 'hello'`, "t", obj, true, `{"a":1}`},
		{"ok/where-greater-numeric-string", `SELECT a FROM 't' WHERE '10' > 9 AND b.d < '3'`, "t", obj, true, `{"a":1}`},
		{"fail/where-greater-non-numeric-strings", `SELECT a FROM 't' WHERE s > 'a'`, "t", obj, false, ""},
		{"fail/where-not-of-undefined-and", `SELECT a FROM 't' WHERE NOT (a = 2 AND missing = 1)`, "t", obj, false, ""},
		{"ok/where-string-boolean", `SELECT a FROM 't' WHERE tf AND NOT 'FALSE'`, "t", `{"a":1,"tf":"True"}`, true, `{"a":1}`},
		{"fail/where-number-is-not-boolean", `SELECT a FROM 't' WHERE a`, "t", obj, false, ""},
		{"ok/where-or-not-parens", `SELECT a FROM 't' WHERE NOT (a = 2 OR s = 'x') AND (flag)`, "t", obj, true, `{"a":1}`},
		{"fail/where-bare-false", `SELECT a FROM 't' WHERE NOT flag`, "t", obj, false, ""},
		{"fail/where-undefined", `SELECT a FROM 't' WHERE missing = 1`, "t", obj, false, ""},
		{"fail/where-not-undefined", `SELECT a FROM 't' WHERE NOT missing = 1`, "t", obj, false, ""},
		{"fail/where-or-undefined", `SELECT a FROM 't' WHERE missing = 1 OR a = 1`, "t", obj, false, ""},
		{"fail/where-mixed-types", `SELECT a FROM 't' WHERE a = '1'`, "t", obj, false, ""},
		{"ok/where-topic", `SELECT topic(2) AS op FROM 'certificates/+/+' WHERE topic(3) = 'ack'`, "certificates/ack/ack", "", true, `{"op":"ack"}`},
		{"fail/where-topic", `SELECT topic(2) AS op FROM 'certificates/+/+' WHERE topic(3) = 'ack'`, "certificates/x/get", "", false, ""},
		{"ok/where-clientid", `SELECT * FROM 't' WHERE clientid() = 'c1'`, "t", `raw`, true, `raw`},
		{"ok/star-empty-payload-adds", `SELECT *, topic(1) AS t FROM '#'`, "x", ``, true, `{"t":"x"}`},
		{"ok/non-json-fields-undefined", `SELECT a, topic() AS t FROM '#'`, "x", `not json`, true, `{"t":"x"}`},
		{"fail/non-json-where-field", `SELECT * FROM '#' WHERE a = 1`, "x", `not json`, false, ""},
		{"ok/html-not-escaped", `SELECT s FROM 't'`, "t", `{"s":"<a&b>"}`, true, `{"s":"<a&b>"}`},
		{"ok/principal-empty-omitted", `SELECT principal() AS p, a FROM 't'`, "t", obj, true, `{"a":1}`},
		{"ok/nested-object", `SELECT b FROM 't'`, "t", obj, true, `{"b":{"c":"x","d":2.5}}`},
		{"ok/null", `SELECT n FROM 't'`, "t", obj, true, `{"n":null}`},
		{"fail/dollar-topic-not-matched-by-hash", `SELECT * FROM '#'`, "$aws/events/x", obj, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := mustParse(t, c.sql)
			out, ok, err := s.Apply(Message{Topic: c.topic, Payload: []byte(c.payload), ClientID: "c1", Timestamp: ts})
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if ok != c.fire {
				t.Fatalf("fired=%v want %v (out %s)", ok, c.fire, out)
			}
			if !c.fire {
				if out != nil {
					t.Fatalf("output %q without a match", out)
				}
				return
			}
			if !json.Valid([]byte(c.want)) {
				if string(out) != c.want {
					t.Fatalf("out %q want %q", out, c.want)
				}
				return
			}
			var g, w any
			if err := json.Unmarshal(out, &g); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			json.Unmarshal([]byte(c.want), &w)
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("out %s want %s", out, c.want)
			}
		})
	}
}

func TestApplyNonObjectPayloadWithExtraKeys(t *testing.T) {
	s := mustParse(t, `SELECT *, topic(1) AS t FROM '#'`)
	for _, p := range []string{"\xff\xfe", `[1]`, `"str"`} {
		_, ok, err := s.Apply(Message{Topic: "x", Payload: []byte(p)})
		if !ok || !errors.Is(err, ErrPayloadNotObject) {
			t.Errorf("payload %q: ok=%v err=%v, want ErrPayloadNotObject", p, ok, err)
		}
	}
}

func TestClientIDNotMQTT(t *testing.T) {
	s := mustParse(t, `SELECT clientid() AS c FROM 't'`)
	out, _, _ := s.Apply(Message{Topic: "t"})
	if string(out) != `{"c":"n/a"}` {
		t.Fatalf("got %s", out)
	}
}

func TestTimestampIsMilliseconds(t *testing.T) {
	s := mustParse(t, `SELECT timestamp() AS ts FROM 't'`)
	out, _, _ := s.Apply(Message{Topic: "t", Timestamp: time.UnixMilli(1764158400123)})
	if string(out) != `{"ts":1764158400123}` {
		t.Fatalf("got %s", out)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, sql, token string
		pos              int
	}{
		{"fail/empty", ``, "", 0},
		{"fail/no-select", `DELETE * FROM 't'`, "DELETE", 0},
		{"fail/unknown-function", `SELECT upper(a) AS u FROM 't'`, "upper", 7},
		{"fail/function-no-alias", `SELECT topic(2) FROM 't'`, "topic", 7},
		{"fail/literal-no-alias", `SELECT 'x' FROM 't'`, "'x'", 7},
		{"fail/topic-zero", `SELECT topic(0) AS x FROM 't'`, "0", 13},
		{"fail/topic-two-args", `SELECT topic(1, 2) AS x FROM 't'`, "1", 13},
		{"fail/principal-arg", `SELECT principal(1) AS x FROM 't'`, "1", 17},
		{"fail/from-unquoted", `SELECT * FROM t`, "t", 14},
		{"fail/from-bad-filter", `SELECT * FROM 'a/#/b'`, "'a/#/b'", 14},
		{"fail/from-bad-plus", `SELECT * FROM 'a+/b'`, "'a+/b'", 14},
		{"fail/from-empty", `SELECT * FROM ''`, "''", 14},
		{"fail/bang-equals", `SELECT * FROM 't' WHERE a != 1`, "!=", 26},
		{"fail/arithmetic", `SELECT * FROM 't' WHERE a + 1 = 2`, "+", 26},
		{"fail/case", `SELECT CASE a WHEN 1 THEN 2 END AS x FROM 't'`, "CASE", 7},
		{"fail/double-quotes", `SELECT "a" FROM 't'`, `"`, 7},
		{"fail/array-index", `SELECT a[0] FROM 't'`, "[", 8},
		{"fail/trailing", `SELECT * FROM 't' LIMIT 1`, "LIMIT", 18},
		{"fail/unterminated-string", `SELECT * FROM 't`, "'t", 14},
		{"fail/missing-paren", `SELECT * FROM 't' WHERE (a = 1`, "", 30},
		{"fail/star-twice", `SELECT *, * FROM 't'`, "*", 10},
		{"fail/duplicate-key", `SELECT a, b.a FROM 't'`, "b", 10},
		{"fail/star-in-where", `SELECT * FROM 't' WHERE * = 1`, "*", 24},
		{"fail/alias-keyword", `SELECT a AS FROM FROM 't'`, "FROM", 12},
		{"fail/bad-number", `SELECT 1.2.3 AS x FROM 't'`, "1.2.3", 7},
		{"fail/nested-select", `SELECT (SELECT a FROM 'u') AS x FROM 't'`, "(", 7},
		{"fail/in", `SELECT * FROM 't' WHERE a IN (1)`, "IN", 26},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.sql)
			var se *SyntaxError
			if !errors.As(err, &se) || !errors.Is(err, ErrSyntax) {
				t.Fatalf("Parse(%q) = %v, want a *SyntaxError", c.sql, err)
			}
			if se.Token != c.token || se.Pos != c.pos {
				t.Fatalf("error %q names token %q at %d, want %q at %d", err, se.Token, se.Pos, c.token, c.pos)
			}
		})
	}
}

func TestParseShape(t *testing.T) {
	s := mustParse(t, sqlVendor)
	var aliases []string
	for _, it := range s.Items {
		aliases = append(aliases, it.Alias)
	}
	if s.Filter != "certificates/+/+" || !s.Items[0].Star || strings.Join(aliases, ",") != ",thingName,operation,principal,clientId,receivedAt" {
		t.Fatalf("filter %q items %v", s.Filter, aliases)
	}
	mustParse(t, sqlReaper)
}

func TestMatchTopic(t *testing.T) {
	cases := []struct {
		f, t string
		want bool
	}{
		{"a/b", "a/b", true}, {"a/+", "a/b", true}, {"a/+", "a/b/c", false}, {"a/#", "a", true}, {"a/#", "a/b/c", true},
		{"#", "a", true}, {"+", "$SYS", false}, {"$aws/events/+", "$aws/events/x", true}, {"a/+/c", "a//c", true},
		{"+/+", "/x", true}, {"a", "a/", false},
	}
	for _, c := range cases {
		if got := MatchTopic(c.f, c.t); got != c.want {
			t.Errorf("MatchTopic(%q, %q) = %v", c.f, c.t, got)
		}
	}
}

var fuzzSeeds = []string{
	sqlJITR, sqlVendor, sqlReaper,
	`SELECT a.b.c AS x, 'lit' AS l, 1e3 AS n FROM 'a/#' WHERE NOT (a < 2 OR b >= 'x') AND c <> true`,
	`select topic() as t from '+'`, `SELECT`, `SELECT * FROM`, `'`, `SELECT ((((`,
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		s, err := Parse(sql)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Pos < 0 || se.Pos > len(sql) {
				t.Fatalf("bad error %v", err)
			}
			return
		}
		if ValidateFilter(s.Filter) != nil || len(s.Items) == 0 {
			t.Fatalf("accepted %q with filter %q, %d items", sql, s.Filter, len(s.Items))
		}
	})
}

func FuzzApply(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s, "certificates/gw/get", []byte(`{"a":{"b":{"c":1}},"jobId":"x"}`))
	}
	f.Add(sqlVendor, "certificates/gw/get", []byte("\x00binary"))
	f.Fuzz(func(t *testing.T, sql, topic string, payload []byte) {
		s, err := Parse(sql)
		if err != nil {
			return
		}
		out, ok, err := s.Apply(Message{Topic: topic, Payload: payload, ClientID: "gw", Principal: "p", Timestamp: ts})
		if !ok && (out != nil || err != nil) {
			t.Fatalf("no match but out=%q err=%v", out, err)
		}
		if ok && !s.Matches(topic) {
			t.Fatal("fired on a topic the filter does not match")
		}
		if ok && err == nil && !(len(s.Items) == 1 && s.Items[0].Star) && !json.Valid(out) {
			t.Fatalf("output is not JSON: %q", out)
		}
		if ok && err != nil && !errors.Is(err, ErrPayloadNotObject) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}

// A parsed Statement is read-only: the rule engine applies it from many
// goroutines (run with -race).
func TestApplyConcurrent(t *testing.T) {
	s := mustParse(t, sqlVendor)
	done := make(chan bool)
	for i := 0; i < 8; i++ {
		go func() {
			ok := true
			for j := 0; j < 200; j++ {
				out, fired, err := s.Apply(Message{Topic: "certificates/gw/get", Payload: []byte(`{"jobId":"j"}`), ClientID: "gw", Timestamp: ts})
				ok = ok && fired && err == nil && strings.Contains(string(out), `"thingName":"gw"`)
			}
			done <- ok
		}()
	}
	for i := 0; i < 8; i++ {
		if !<-done {
			t.Fatal("a concurrent Apply failed")
		}
	}
}
