package policy

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

const arn = "arn:aws:iot:us-east-1:123456789012:"

func mustParse(t testing.TB, doc string) *Document {
	t.Helper()
	d, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, doc)
	}
	return d
}

// attached is a device whose certificate is attached to thing "dev-1" and
// which connects with client ID = thing name.
var attached = Vars{ClientID: "dev-1", ThingName: "dev-1", IsAttached: true, CertificateCN: "dev-1", CertificateID: "abc123"}

// unattached: the certificate is not attached to any thing.
var unattached = Vars{ClientID: "dev-1", CertificateCN: "dev-1", CertificateID: "abc123"}

type evalCase struct {
	name     string
	action   string
	resource string
	vars     Vars
	allowed  bool
	stmt     int // deciding statement, -1 for default deny
}

func runEval(t *testing.T, policyName, doc string, cases []evalCase) {
	t.Helper()
	d := mustParse(t, doc)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Evaluate([]Named{{Name: policyName, Doc: d}}, Request{Action: c.action, Resource: c.resource, Vars: c.vars})
			if got.Allowed != c.allowed || got.Statement != c.stmt {
				t.Fatalf("Evaluate(%s %s) = %+v, want allowed=%v statement=%d", c.action, c.resource, got, c.allowed, c.stmt)
			}
			if c.allowed && !strings.HasPrefix(c.name, "ok/") || !c.allowed && !strings.HasPrefix(c.name, "fail/") {
				t.Fatalf("test name %q does not match the expectation", c.name)
			}
		})
	}
}

// "Connect policy examples" (connect-policy.html), first example: deny
// client1/client2, allow a client ID that is the attached thing's name.
func TestConnectPolicyExample(t *testing.T) {
	doc := `{
	"Version":"2012-10-17",
	"Statement": [
		{"Effect": "Deny", "Action": ["iot:Connect"],
		 "Resource": ["arn:aws:iot:us-east-1:123456789012:client/client1", "arn:aws:iot:us-east-1:123456789012:client/client2"]},
		{"Effect": "Allow", "Action": ["iot:Connect"],
		 "Resource": ["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"],
		 "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}}
	]}`
	client1 := Vars{ClientID: "client1", ThingName: "client1", IsAttached: true}
	runEval(t, "connect", doc, []evalCase{
		{"ok/attached-thing", ActionConnect, arn + "client/dev-1", attached, true, 1},
		{"fail/other-client-id", ActionConnect, arn + "client/dev-2", attached, false, -1},
		{"fail/not-attached-unresolved-variable", ActionConnect, arn + "client/dev-1", unattached, false, -1},
		{"fail/explicit-deny-client1", ActionConnect, arn + "client/client1", client1, false, 0},
		{"fail/publish-not-granted", ActionPublish, arn + "topic/dev-1", attached, false, -1},
	})
}

// "Connect policy examples", second example: unregistered device client1.
func TestConnectUnregisteredExample(t *testing.T) {
	doc := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Connect"],"Resource":["arn:aws:iot:us-east-1:123456789012:client/client1"]}]}`
	runEval(t, "c1", doc, []evalCase{
		{"ok/client1", ActionConnect, arn + "client/client1", Vars{ClientID: "client1"}, true, 0},
		{"fail/client10", ActionConnect, arn + "client/client10", Vars{ClientID: "client10"}, false, -1},
		{"fail/other-account", ActionConnect, "arn:aws:iot:us-east-1:999999999999:client/client1", Vars{ClientID: "client1"}, false, -1},
	})
}

// "Connect and publish policy examples" (connect-and-pub.html): registered
// device publishes on its thing-name topic; unregistered on its client ID.
func TestConnectAndPublishExamples(t *testing.T) {
	registered := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:Publish"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/${iot:Connection.Thing.ThingName}"]},
		{"Effect":"Allow","Action":["iot:Connect"],"Resource":["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"]}]}`
	runEval(t, "registered", registered, []evalCase{
		{"ok/publish-own-topic", ActionPublish, arn + "topic/dev-1", attached, true, 0},
		{"ok/connect", ActionConnect, arn + "client/dev-1", attached, true, 1},
		{"fail/publish-subtopic", ActionPublish, arn + "topic/dev-1/x", attached, false, -1},
		{"fail/publish-unattached", ActionPublish, arn + "topic/dev-1", unattached, false, -1},
		{"fail/subscribe", ActionSubscribe, arn + "topicfilter/dev-1", attached, false, -1},
	})
	unregistered := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:Publish"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/${iot:ClientId}"]},
		{"Effect":"Allow","Action":["iot:Connect"],"Resource":["arn:aws:iot:us-east-1:123456789012:client/client1"]}]}`
	runEval(t, "unregistered", unregistered, []evalCase{
		{"ok/publish-client-topic", ActionPublish, arn + "topic/client1", Vars{ClientID: "client1"}, true, 0},
		{"fail/publish-other", ActionPublish, arn + "topic/client2", Vars{ClientID: "client1"}, false, -1},
	})
}

// "Publish/Subscribe policy examples" (pub-sub-policy.html), "Using wildcard
// characters in MQTT and AWS IoT Core policies": * and ? are wildcards, + and
// # are literal characters in a policy.
func TestWildcardExamples(t *testing.T) {
	doc := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:Subscribe"],"Resource":[
			"arn:aws:iot:us-east-1:123456789012:topicfilter/some/+/topic",
			"arn:aws:iot:us-east-1:123456789012:topicfilter/all/#",
			"arn:aws:iot:us-east-1:123456789012:topicfilter/star/*"]},
		{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":[
			"arn:aws:iot:us-east-1:123456789012:topic/some/*/topic",
			"arn:aws:iot:us-east-1:123456789012:topic/dev?"]}]}`
	v := Vars{ClientID: "c"}
	runEval(t, "wild", doc, []evalCase{
		{"ok/literal-plus-filter", ActionSubscribe, arn + "topicfilter/some/+/topic", v, true, 0},
		{"fail/plus-is-not-a-wildcard", ActionSubscribe, arn + "topicfilter/some/x/topic", v, false, -1},
		{"ok/literal-hash-filter", ActionSubscribe, arn + "topicfilter/all/#", v, true, 0},
		{"fail/hash-is-not-a-wildcard", ActionSubscribe, arn + "topicfilter/all/x", v, false, -1},
		{"ok/star-covers-plus", ActionSubscribe, arn + "topicfilter/star/+/x", v, true, 0},
		{"ok/star-covers-hash", ActionSubscribe, arn + "topicfilter/star/#", v, true, 0},
		{"ok/star-spans-levels", ActionPublish, arn + "topic/some/a/b/c/topic", v, true, 1},
		{"ok/receive-star", ActionReceive, arn + "topic/some/x/topic", v, true, 1},
		{"ok/question-one-char", ActionPublish, arn + "topic/dev1", v, true, 1},
		{"fail/question-not-two-chars", ActionPublish, arn + "topic/dev12", v, false, -1},
		{"fail/question-not-zero-chars", ActionPublish, arn + "topic/dev", v, false, -1},
		{"fail/topic-is-not-topicfilter", ActionSubscribe, arn + "topic/star/x", v, false, -1},
	})
}

// IAM "Policy evaluation logic": an explicit Deny in any attached policy
// overrides Allows in all of them; the deciding statement is reported.
func TestExplicitDenyAcrossPolicies(t *testing.T) {
	allowAll := mustParse(t, `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*"}}`)
	denySecret := mustParse(t, `{"Version":"2012-10-17","Statement":[
		{"Sid":"Other","Effect":"Deny","Action":"iot:Connect","Resource":"*"},
		{"Sid":"NoSecret","Effect":"Deny","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:*:*:topic/secret/*"}]}`)
	ps := []Named{{"allow-all", allowAll}, {"deny-secret", denySecret}}
	d := Evaluate(ps, Request{Action: ActionPublish, Resource: arn + "topic/secret/x", Vars: attached})
	if d.Allowed || d.Policy != "deny-secret" || d.Statement != 1 || d.Sid != "NoSecret" || d.Effect != "Deny" {
		t.Fatalf("deny: %+v", d)
	}
	d = Evaluate(ps, Request{Action: ActionPublish, Resource: arn + "topic/public/x", Vars: attached})
	if !d.Allowed || d.Policy != "allow-all" || d.Statement != 0 || d.Effect != "Allow" {
		t.Fatalf("allow: %+v", d)
	}
	d = Evaluate(nil, Request{Action: ActionConnect, Resource: arn + "client/x"})
	if d.Allowed || d.Statement != -1 || d.Effect != "" || !strings.Contains(d.Reason, "no policy") {
		t.Fatalf("no policies: %+v", d)
	}
}

func TestActionMatching(t *testing.T) {
	doc := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":"iot:pub*","Resource":"*"},
		{"Effect":"Allow","NotAction":["iot:Connect","iot:Publish","iot:Subscribe"],"Resource":"*"},
		{"Effect":"Allow","Action":"iot:Subscribe","NotResource":"arn:aws:iot:*:*:topicfilter/$aws/*"}]}`
	v := Vars{ClientID: "c"}
	runEval(t, "actions", doc, []evalCase{
		{"ok/case-insensitive-action-glob", ActionPublish, arn + "topic/x", v, true, 0},
		{"ok/not-action", ActionReceive, arn + "topic/x", v, true, 1},
		{"fail/not-action-excludes-connect", ActionConnect, arn + "client/c", v, false, -1},
		{"ok/not-resource", ActionSubscribe, arn + "topicfilter/a/b", v, true, 2},
		{"fail/not-resource-excludes", ActionSubscribe, arn + "topicfilter/$aws/things/x/jobs/notify", v, false, -1},
	})
}

func TestConditions(t *testing.T) {
	doc := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{
			"StringEquals":{"iot:ClientId":"${iot:Certificate.Subject.CommonName}"},
			"Bool":{"iot:Connection.Thing.IsAttached":["true"]}}},
		{"Effect":"Allow","Action":"iot:Publish","Resource":"*","Condition":{
			"StringLike":{"iot:Certificate.Subject.CommonName":["gw-*","dev-?"]}}},
		{"Effect":"Deny","Action":"iot:Publish","Resource":"*","Condition":{
			"StringNotEquals":{"iot:CertificateId":"abc123"}}},
		{"Effect":"Allow","Action":"iot:Subscribe","Resource":"*","Condition":{
			"StringEqualsIfExists":{"iot:Connection.Thing.ThingTypeName":"bootcert-gateway"}}}]}`
	other := attached
	other.CertificateID = "zzz"
	cnMismatch := attached
	cnMismatch.ClientID = "dev-2"
	typed := attached
	typed.ThingTypeName = "other-type"
	runEval(t, "cond", doc, []evalCase{
		{"ok/cn-equals-client-and-attached", ActionConnect, arn + "client/dev-1", attached, true, 0},
		{"fail/cn-differs-from-client", ActionConnect, arn + "client/dev-2", cnMismatch, false, -1},
		{"fail/not-attached", ActionConnect, arn + "client/dev-1", unattached, false, -1},
		{"ok/string-like", ActionPublish, arn + "topic/x", attached, true, 1},
		{"fail/string-not-equals-deny", ActionPublish, arn + "topic/x", other, false, 2},
		{"ok/if-exists-missing", ActionSubscribe, arn + "topicfilter/x", attached, true, 3},
		{"fail/if-exists-present-differs", ActionSubscribe, arn + "topicfilter/x", typed, false, -1},
	})
}

// Policy variables' values are literal: a client ID containing * must not act
// as a wildcard; $(*) is a literal star.
func TestVariableValuesAreLiteral(t *testing.T) {
	doc := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/${iot:ClientId}/data"},
		{"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/lit/$(*)"}]}`
	star := Vars{ClientID: "*"}
	runEval(t, "literal", doc, []evalCase{
		{"fail/star-client-id-not-wildcard", ActionPublish, arn + "topic/other/data", star, false, -1},
		{"ok/star-client-id-itself", ActionPublish, arn + "topic/*/data", star, true, 0},
		{"ok/escaped-star", ActionSubscribe, arn + "topicfilter/lit/*", star, true, 1},
		{"fail/escaped-star-not-wildcard", ActionSubscribe, arn + "topicfilter/lit/x", star, false, -1},
	})
}

func TestParseErrors(t *testing.T) {
	cases := []struct{ name, doc, want string }{
		{"fail/not-json", `{`, "not a JSON object"},
		{"fail/no-version", `{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`, "Version is missing"},
		{"fail/bad-version", `{"Version":"2020-01-01","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}`, "2020-01-01"},
		{"fail/no-statement", `{"Version":"2012-10-17"}`, "Statement is missing"},
		{"fail/empty-statement", `{"Version":"2012-10-17","Statement":[]}`, "Statement is empty"},
		{"fail/unknown-top", `{"Version":"2012-10-17","Statement":[],"Foo":1}`, `"Foo"`},
		{"fail/bad-effect", `{"Version":"2012-10-17","Statement":{"Effect":"allow","Action":"*","Resource":"*"}}`, "Effect"},
		{"fail/no-effect", `{"Version":"2012-10-17","Statement":{"Action":"*","Resource":"*"}}`, "Effect is missing"},
		{"fail/both-action", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","NotAction":"iot:Connect","Resource":"*"}}`, "Action and NotAction"},
		{"fail/no-resource", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*"}}`, "Resource and NotResource"},
		{"fail/principal", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}`, "Principal"},
		{"fail/bad-action", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"Publish","Resource":"*"}}`, `"Publish"`},
		{"fail/action-number", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":5,"Resource":"*"}}`, "Action must be"},
		{"fail/unknown-operator", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"1.2.3.4"}}}}`, `"IpAddress"`},
		{"fail/for-any-value", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"ForAnyValue:StringEquals":{"iot:ClientId":"a"}}}}`, "ForAnyValue"},
		{"fail/unknown-key", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"StringEquals":{"aws:SourceIp":"a"}}}}`, `"aws:SourceIp"`},
		{"fail/bool-value", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"yes"}}}}`, `"yes"`},
		{"fail/unknown-variable", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:iot:*:*:topic/${iot:Nope}"}}`, "${iot:Nope}"},
		{"fail/unterminated-variable", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:iot:*:*:topic/${iot:ClientId"}}`, "unterminated"},
		{"fail/too-large", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"` + strings.Repeat("x", 2100) + `"}}`, "2048"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil {
				t.Fatal("Parse accepted an invalid document")
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not wrap ErrInvalid or lacks %q", err, c.want)
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	cases := []struct{ name, doc string }{
		{"ok/statement-object", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}}`},
		{"ok/id-and-sid", `{"Version":"2012-10-17","Id":"x","Statement":[{"Sid":"s","Effect":"Deny","Action":["iot:*"],"Resource":["*"]}]}`},
		{"ok/bool-json-true", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":true}}}}`},
		{"ok/condition-key-case-insensitive", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Bool":{"IOT:connection.thing.isattached":"true"}}}}`},
		{"ok/greengrass-action", `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"greengrass:*","Resource":"*"}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { mustParse(t, c.doc) })
	}
}

func TestDecisionLogValue(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	d := Evaluate([]Named{{"p", mustParse(t, `{"Version":"2012-10-17","Statement":{"Sid":"D","Effect":"Deny","Action":"*","Resource":"*"}}`)}},
		Request{Action: ActionConnect, Resource: arn + "client/x"})
	log.Info("policy decision", "decision", d)
	for _, want := range []string{`"allowed":false`, `"effect":"Deny"`, `"policy":"p"`, `"statement":0`, `"sid":"D"`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log line %s lacks %s", buf.String(), want)
		}
	}
}

func TestMatch(t *testing.T) {
	cases := []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"*", "anything/at/all", true}, {"a*b*c", "aXXbYYc", true}, {"a*b*c", "aXXbYY", false},
		{"?", "", false}, {"??", "ab", true}, {"a**", "a", true}, {"é?", "éü", true}, {"x", "X", false},
	}
	for _, c := range cases {
		if got := Match(c.p, c.s, nil, false); got != c.want {
			t.Errorf("Match(%q, %q) = %v", c.p, c.s, got)
		}
	}
	if !Match("iot:publish", "iot:Publish", nil, true) {
		t.Error("fold")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Deny","NotAction":["iot:*"],"NotResource":"arn:aws:iot:*:*:topic/${iot:ClientId}/$(*)"}]}`,
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"*","Condition":{"StringLikeIfExists":{"iot:ClientId":["a*",1,true]},"Bool":{"iot:Connection.Thing.IsAttached":"true"}}}]}`,
		`{"Version":"2012-10-17","Statement":[]}`, `[]`, `null`, `{"Version":1}`,
	} {
		f.Add([]byte(s), "topic/a/b")
	}
	f.Fuzz(func(t *testing.T, doc []byte, res string) {
		d, err := Parse(doc)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if len(d.Statements) == 0 {
			t.Fatal("accepted a document without statements")
		}
		for _, a := range []string{ActionConnect, ActionPublish} {
			req := Request{Action: a, Resource: arn + res, Vars: attached}
			d1 := Evaluate([]Named{{"f", d}}, req)
			d2 := Evaluate([]Named{{"f", d}}, req)
			if d1 != d2 {
				t.Fatalf("non-deterministic: %+v vs %+v", d1, d2)
			}
			if d1.Allowed && d1.Effect != "Allow" {
				t.Fatalf("allowed without an Allow: %+v", d1)
			}
		}
	})
}

// "Publish/Subscribe policy examples" (pub-sub-policy.html), registered
// devices: a specific topic; topics with a prefix; device-specific topics
// (thing name in the topic); and denying a subtopic while allowing the rest.
func TestPubSubExamples(t *testing.T) {
	specific := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:Connect"],"Resource":["arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"]},
		{"Effect":"Allow","Action":["iot:Publish"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/some_specific_topic"]},
		{"Effect":"Allow","Action":["iot:Subscribe"],"Resource":["arn:aws:iot:us-east-1:123456789012:topicfilter/some_specific_topic"]},
		{"Effect":"Allow","Action":["iot:Receive"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/some_specific_topic"]}]}`
	runEval(t, "specific", specific, []evalCase{
		{"ok/publish", ActionPublish, arn + "topic/some_specific_topic", attached, true, 1},
		{"ok/subscribe", ActionSubscribe, arn + "topicfilter/some_specific_topic", attached, true, 2},
		{"ok/receive", ActionReceive, arn + "topic/some_specific_topic", attached, true, 3},
		{"fail/subscribe-as-topic", ActionSubscribe, arn + "topic/some_specific_topic", attached, false, -1},
		{"fail/subtopic", ActionPublish, arn + "topic/some_specific_topic/x", attached, false, -1},
	})
	prefix := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/topic_prefix*"]},
		{"Effect":"Allow","Action":["iot:Subscribe"],"Resource":["arn:aws:iot:us-east-1:123456789012:topicfilter/topic_prefix*"]}]}`
	runEval(t, "prefix", prefix, []evalCase{
		{"ok/publish-prefixed", ActionPublish, arn + "topic/topic_prefix_1/x", attached, true, 0},
		{"ok/subscribe-prefixed-wildcard", ActionSubscribe, arn + "topicfilter/topic_prefix/#", attached, true, 1},
		{"fail/other-prefix", ActionPublish, arn + "topic/other/topic_prefix", attached, false, -1},
	})
	perDevice := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/things/${iot:Connection.Thing.ThingName}/*"]},
		{"Effect":"Allow","Action":["iot:Subscribe"],"Resource":["arn:aws:iot:us-east-1:123456789012:topicfilter/things/${iot:Connection.Thing.ThingName}/*"]}]}`
	runEval(t, "per-device", perDevice, []evalCase{
		{"ok/own-topic", ActionPublish, arn + "topic/things/dev-1/data", attached, true, 0},
		{"fail/other-device", ActionPublish, arn + "topic/things/dev-2/data", attached, false, -1},
		{"fail/prefix-of-other-device", ActionPublish, arn + "topic/things/dev-10/data", attached, false, -1},
		{"ok/own-filter", ActionSubscribe, arn + "topicfilter/things/dev-1/+", attached, true, 1},
		{"fail/not-attached", ActionSubscribe, arn + "topicfilter/things/dev-1/+", unattached, false, -1},
	})
	denySub := `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:Publish"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/department/*"]},
		{"Effect":"Deny","Action":["iot:Publish"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/department/admins"]}]}`
	runEval(t, "deny-sub", denySub, []evalCase{
		{"ok/department", ActionPublish, arn + "topic/department/sales", attached, true, 0},
		{"fail/admins-denied", ActionPublish, arn + "topic/department/admins", attached, false, 1},
	})
}

func TestConditionKeyCaseInsensitive(t *testing.T) {
	doc := `{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"*","Condition":{"Bool":{"IOT:connection.thing.isattached":"true"}}}}`
	runEval(t, "case", doc, []evalCase{
		{"ok/attached", ActionConnect, arn + "client/dev-1", attached, true, 0},
		{"fail/unattached", ActionConnect, arn + "client/dev-1", unattached, false, -1},
	})
}

// A parsed Document is read-only: the broker evaluates it from many
// connections at once (run with -race).
func TestEvaluateConcurrent(t *testing.T) {
	d := mustParse(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:*:*:topic/${iot:ClientId}/*"}]}`)
	done := make(chan bool)
	for i := 0; i < 8; i++ {
		go func() {
			ok := true
			for j := 0; j < 200; j++ {
				v := Vars{ClientID: "c" + string(rune('a'+j%26))}
				ok = ok && Evaluate([]Named{{"p", d}}, Request{Action: ActionPublish, Resource: arn + "topic/" + v.ClientID + "/x", Vars: v}).Allowed
			}
			done <- ok
		}()
	}
	for i := 0; i < 8; i++ {
		if !<-done {
			t.Fatal("a concurrent evaluation was denied")
		}
	}
}
