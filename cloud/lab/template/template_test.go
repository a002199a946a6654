package template

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/lab/policy"
	"github.com/bootcert/bootcert/cloud/lab/rules"
)

const labTemplate = "../testdata/template.yaml"

func load(t *testing.T, opts Options) *Template {
	t.Helper()
	tp, err := Load(labTemplate, opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return tp
}

func TestLoadLabTemplate(t *testing.T) {
	tp := load(t, Options{})
	var pols []string
	for _, p := range tp.Policies {
		pols = append(pols, p.LogicalID+"="+p.Name)
	}
	if got := strings.Join(pols, ","); got != "BootstrapPolicy=bootcert-bootstrap,OperationalPolicy=bootcert-operational" {
		t.Errorf("policies %s", got)
	}
	if !reflect.DeepEqual(tp.ThingTypes, []string{"bootcert-gateway"}) || !reflect.DeepEqual(tp.ThingGroups, []string{"bootcert-rotation"}) {
		t.Errorf("thing types %v groups %v", tp.ThingTypes, tp.ThingGroups)
	}
	if !reflect.DeepEqual(tp.Buckets, map[string]string{"PackageBucket": "bootcert-packages"}) {
		t.Errorf("buckets %v", tp.Buckets)
	}

	rulesByID := map[string]TopicRule{}
	for _, r := range tp.Rules {
		rulesByID[r.LogicalID] = r
	}
	want := map[string]struct{ name, fn, version, filter string }{
		"JITRRule":     {"bootcert_jitr", "ActivatorFunction", "2016-03-23", "$aws/events/certificates/registered/+"},
		"RequestsRule": {"bootcert_requests", "VendorFunction", "2016-03-23", "certificates/+/+"},
		"ReaperRule":   {"ReaperRule", "ReaperFunction", DefaultSQLVersion, "$aws/events/jobExecution/+/+"},
	}
	if len(tp.Rules) != len(want) {
		t.Fatalf("%d rules, want %d", len(tp.Rules), len(want))
	}
	for id, w := range want {
		r := rulesByID[id]
		if r.Name != w.name || r.AWSIotSqlVersion != w.version || r.Disabled || r.Statement == nil || r.Statement.Filter != w.filter ||
			len(r.Actions) != 1 || r.Actions[0].Kind != ActionLambda || r.Actions[0].FunctionLogicalID != w.fn {
			t.Errorf("rule %s = %+v, want %+v", id, r, w)
		}
	}
	ea := rulesByID["RequestsRule"].ErrorAction
	if ea == nil || ea.Kind != ActionRepublish || ea.Topic != "bootcert/errors/${topic(2)}" || ea.QoS != 1 {
		t.Errorf("error action %+v", ea)
	}
	if a := rulesByID["RequestsRule"].Actions[0]; a.FunctionARN != "arn:aws:lambda:us-east-1:123456789012:function:bootcert-vendor" {
		t.Errorf("vendor ARN %s", a.FunctionARN)
	}

	fns := map[string]Function{}
	var ids []string
	for _, f := range tp.Functions {
		fns[f.LogicalID] = f
		ids = append(ids, f.LogicalID)
	}
	if got := strings.Join(ids, ","); got != "ActivationFunction,ActivatorFunction,ReaperFunction,RenewalFunction,VendorFunction" {
		t.Fatalf("functions %s", got)
	}
	act := fns["ActivatorFunction"]
	wantEnv := map[string]string{"LOG_LEVEL": "info", "PACKAGE_BUCKET": "bootcert-packages", "MANIFEST_KEY": "manifest/allow-list.csv",
		"REQUIRE_ACTIVATION": "false", "THING_TYPE": "bootcert-gateway", "ROTATION_GROUP": "bootcert-rotation", "BOOTSTRAP_POLICY": "bootcert-bootstrap"}
	if !reflect.DeepEqual(act.Env, wantEnv) {
		t.Errorf("activator env %v\nwant %v", act.Env, wantEnv)
	}
	if act.Handler != "bootstrap" || act.Runtime != "provided.al2023" || !reflect.DeepEqual(act.Architectures, []string{"arm64"}) || act.Timeout != 30 || act.MemorySize != 256 {
		t.Errorf("activator globals not applied: %+v", act)
	}
	v := fns["VendorFunction"]
	if v.Name != "bootcert-vendor" || v.Timeout != 60 || v.Env["PACKAGE_BUCKET_ARN"] != "arn:aws:s3:::bootcert-packages" || v.Env["OPERATIONAL_POLICY"] != "bootcert-operational" {
		t.Errorf("vendor %+v", v)
	}
	if ev := fns["RenewalFunction"].Events; len(ev) != 1 || ev[0] != (Event{Name: "Daily", Type: "Schedule", Schedule: "rate(1 day)"}) {
		t.Errorf("renewal events %+v", ev)
	}
	if ev := fns["ActivationFunction"].Events; len(ev) != 1 || ev[0] != (Event{Name: "Activate", Type: "Api", Path: "/devices/{deviceId}/activation", Method: "post"}) {
		t.Errorf("activation events %+v", ev)
	}
	if a := fns["ReaperFunction"].Architectures; !reflect.DeepEqual(a, []string{"x86_64"}) {
		t.Errorf("reaper architectures %v", a)
	}
	if p := tp.Parameters["RequireActivation"]; p.Value != "false" || !p.HasDefault || p.Type != "String" {
		t.Errorf("parameter %+v", p)
	}
}

// The bootstrap policy as the lab loads it: connect only as the attached
// thing's own name; publish to its jobs topics and certificates/{thing}/get
// and /ack; subscribe to and receive their replies; nothing else.
// TestReservedConcurrency: the real template's concurrency (set from the
// quota table, see its comments) reaches the lab; no EventInvokeConfig, so
// AWS's asynchronous retry defaults apply.
func TestReservedConcurrency(t *testing.T) {
	tp, err := Load("../../template.yaml", Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	fns := map[string]Function{}
	for _, f := range tp.Functions {
		fns[f.LogicalID] = f
	}
	for id, want := range map[string]int{"ActivatorFunction": 3, "VendorFunction": 9, "RenewalFunction": 1} {
		if f := fns[id]; f.ReservedConcurrency != want || f.MaxRetryAttempts != -1 || f.MaxEventAge != 0 {
			t.Errorf("%s: ReservedConcurrency %d MaxRetryAttempts %d MaxEventAge %d, want %d, -1, 0", id, f.ReservedConcurrency, f.MaxRetryAttempts, f.MaxEventAge, want)
		}
	}
}

func TestBootstrapPolicyEvaluates(t *testing.T) {
	tp := load(t, Options{})
	var named []policy.Named
	for _, p := range tp.Policies {
		if p.Name == "bootcert-bootstrap" {
			named = append(named, policy.Named{Name: p.Name, Doc: p.Parsed})
		}
	}
	if len(named) != 1 {
		t.Fatal("bootcert-bootstrap not loaded")
	}
	const arn = "arn:aws:iot:us-east-1:123456789012:"
	dev := policy.Vars{ClientID: "gw-1", ThingName: "gw-1", IsAttached: true, CertificateCN: "gw-1"}
	detached := policy.Vars{ClientID: "gw-1", CertificateCN: "gw-1"}
	cases := []struct {
		name, action, res string
		vars              policy.Vars
		allowed           bool
	}{
		{"ok/connect-own-thing", policy.ActionConnect, arn + "client/gw-1", dev, true},
		{"fail/connect-other-client-id", policy.ActionConnect, arn + "client/gw-2", dev, false},
		{"fail/connect-not-attached", policy.ActionConnect, arn + "client/gw-1", detached, false},
		{"fail/connect-other-region", policy.ActionConnect, "arn:aws:iot:eu-west-1:123456789012:client/gw-1", dev, false},
		{"ok/publish-get", policy.ActionPublish, arn + "topic/certificates/gw-1/get", dev, true},
		{"ok/publish-ack", policy.ActionPublish, arn + "topic/certificates/gw-1/ack", dev, true},
		{"fail/publish-other-thing-get", policy.ActionPublish, arn + "topic/certificates/gw-2/get", dev, false},
		{"fail/publish-get-accepted", policy.ActionPublish, arn + "topic/certificates/gw-1/get/accepted", dev, false},
		{"ok/publish-jobs-start-next", policy.ActionPublish, arn + "topic/$aws/things/gw-1/jobs/start-next", dev, true},
		{"ok/publish-jobs-update", policy.ActionPublish, arn + "topic/$aws/things/gw-1/jobs/bootcert-rotation/update", dev, true},
		{"fail/publish-other-jobs", policy.ActionPublish, arn + "topic/$aws/things/gw-2/jobs/start-next", dev, false},
		{"fail/publish-shadow", policy.ActionPublish, arn + "topic/$aws/things/gw-1/shadow/update", dev, false},
		{"fail/publish-telemetry", policy.ActionPublish, arn + "topic/devices/gw-1/data", dev, false},
		{"ok/subscribe-get-replies", policy.ActionSubscribe, arn + "topicfilter/certificates/gw-1/get/+", dev, true},
		{"ok/subscribe-ack-replies", policy.ActionSubscribe, arn + "topicfilter/certificates/gw-1/ack/+", dev, true},
		{"ok/subscribe-jobs-notify", policy.ActionSubscribe, arn + "topicfilter/$aws/things/gw-1/jobs/notify-next", dev, true},
		{"fail/subscribe-all-certificates", policy.ActionSubscribe, arn + "topicfilter/certificates/#", dev, false},
		{"fail/subscribe-other-thing", policy.ActionSubscribe, arn + "topicfilter/certificates/gw-2/get/+", dev, false},
		{"fail/subscribe-wildcard-thing", policy.ActionSubscribe, arn + "topicfilter/certificates/+/get/+", dev, false},
		{"ok/receive-get-accepted", policy.ActionReceive, arn + "topic/certificates/gw-1/get/accepted", dev, true},
		{"fail/receive-other-thing", policy.ActionReceive, arn + "topic/certificates/gw-2/get/accepted", dev, false},
		{"fail/receive-own-request", policy.ActionReceive, arn + "topic/certificates/gw-1/get", dev, false},
		{"fail/publish-not-attached", policy.ActionPublish, arn + "topic/certificates/gw-1/get", detached, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := policy.Evaluate(named, policy.Request{Action: c.action, Resource: c.res, Vars: c.vars})
			if d.Allowed != c.allowed {
				t.Fatalf("%s %s: %+v", c.action, c.res, d)
			}
		})
	}
}

// The operational policy's explicit Deny overrides its Allow (shadow).
func TestOperationalPolicyDeny(t *testing.T) {
	tp := load(t, Options{})
	var op *Policy
	for i := range tp.Policies {
		if tp.Policies[i].Name == "bootcert-operational" {
			op = &tp.Policies[i]
		}
	}
	named := []policy.Named{{Name: op.Name, Doc: op.Parsed}}
	dev := policy.Vars{ClientID: "gw-1", ThingName: "gw-1", IsAttached: true}
	d := policy.Evaluate(named, policy.Request{Action: policy.ActionPublish, Resource: "arn:aws:iot:us-east-1:123456789012:topic/$aws/things/gw-1/shadow/update", Vars: dev})
	if d.Allowed || d.Effect != "Deny" || d.Statement != 3 {
		t.Fatalf("shadow publish: %+v", d)
	}
	d = policy.Evaluate(named, policy.Request{Action: policy.ActionPublish, Resource: "arn:aws:iot:us-east-1:123456789012:topic/devices/gw-1/temp", Vars: dev})
	if !d.Allowed {
		t.Fatalf("telemetry: %+v", d)
	}
}

// The lab feeds rule output to the functions: the loaded statement must
// produce the vendor's event.
func TestLoadedRuleApplies(t *testing.T) {
	tp := load(t, Options{})
	for _, r := range tp.Rules {
		if r.LogicalID != "RequestsRule" {
			continue
		}
		out, ok, err := r.Statement.Apply(rules.Message{Topic: "certificates/gw-1/ack", Payload: []byte(`{"jobId":"j"}`), ClientID: "gw-1", Principal: "abc"})
		if err != nil || !ok || !strings.Contains(string(out), `"operation":"ack"`) || !strings.Contains(string(out), `"principal":"abc"`) {
			t.Fatalf("out %s ok %v err %v", out, ok, err)
		}
		return
	}
	t.Fatal("RequestsRule not loaded")
}

func TestOptions(t *testing.T) {
	tp := load(t, Options{Region: "eu-west-1", AccountID: "111122223333", Parameters: map[string]string{"PackageBucketName": "my-bucket", "RequireActivation": "true"}})
	doc := string(tp.Policies[0].Document)
	if !strings.Contains(doc, "arn:aws:iot:eu-west-1:111122223333:client/${iot:Connection.Thing.ThingName}") {
		t.Errorf("bootstrap policy not resolved for the region/account: %s", doc)
	}
	for _, f := range tp.Functions {
		if f.Env["PACKAGE_BUCKET"] != "my-bucket" {
			t.Errorf("%s PACKAGE_BUCKET=%q", f.LogicalID, f.Env["PACKAGE_BUCKET"])
		}
		if f.LogicalID == "ActivatorFunction" && f.Env["REQUIRE_ACTIVATION"] != "true" {
			t.Errorf("override not applied: %v", f.Env)
		}
		if f.LogicalID == "VendorFunction" && f.ARN != "arn:aws:lambda:eu-west-1:111122223333:function:bootcert-vendor" {
			t.Errorf("vendor ARN %s", f.ARN)
		}
	}
	if tp.Buckets["PackageBucket"] != "my-bucket" {
		t.Errorf("buckets %v", tp.Buckets)
	}
}

// The cloud engineer's real template, when present, loads and keeps to the
// shared names.
func TestCloudTemplate(t *testing.T) {
	const path = "../../template.yaml"
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s not present yet", path)
	}
	tp, err := Load(path, Options{})
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	names := map[string]bool{}
	for _, p := range tp.Policies {
		names[p.Name] = true
	}
	if !names["bootcert-bootstrap"] || !names["bootcert-operational"] {
		t.Errorf("policies %v", names)
	}
	fns := map[string]bool{}
	for _, f := range tp.Functions {
		fns[f.LogicalID] = true
	}
	for _, id := range []string{"ActivatorFunction", "VendorFunction", "ReaperFunction", "ActivationFunction", "RenewalFunction"} {
		if !fns[id] {
			t.Errorf("function %s missing", id)
		}
	}
	for _, f := range tp.Functions {
		if f.LogicalID == "RenewalFunction" && (len(f.Events) == 0 || f.Events[0].Type != "Schedule" || f.Events[0].Schedule == "") {
			t.Errorf("renewal schedule not resolved: %+v", f.Events)
		}
	}
	targets := map[string]string{}
	for _, r := range tp.Rules {
		for _, a := range r.Actions {
			if a.Kind == ActionLambda {
				targets[r.Statement.Filter] = a.FunctionLogicalID
			}
		}
	}
	want := map[string]string{"$aws/events/certificates/registered/+": "ActivatorFunction", "certificates/+/+": "VendorFunction", "$aws/events/jobExecution/+/+": "ReaperFunction", "certificates/+/rotate": "RenewalFunction"}
	if !reflect.DeepEqual(targets, want) {
		t.Errorf("rule targets %v\nwant %v", targets, want)
	}
}

func TestLoadErrors(t *testing.T) {
	base, err := os.ReadFile(labTemplate)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		old, new string // replaced once in the lab template
		opts     Options
		sentinel error
		want     []string
	}{
		{"fail/unescaped-policy-variable-in-sub", "client/${!iot:Connection.Thing.ThingName}", "client/${iot:Connection.Thing.ThingName}", Options{},
			ErrInvalid, []string{"${iot:Connection.Thing.ThingName}", "${!iot:Connection.Thing.ThingName}"}},
		{"fail/unsupported-action", "          - Lambda:\n              FunctionArn: !GetAtt ActivatorFunction.Arn", "          - Sns:\n              TargetArn: arn:aws:sns:us-east-1:123456789012:t\n              RoleArn: x", Options{},
			ErrUnsupported, []string{"JITRRule", "Sns"}},
		{"fail/unsupported-sql-function", "SELECT * FROM '$aws/events/jobExecution/+/+'", "SELECT upper(x) AS y FROM '$aws/events/jobExecution/+/+'", Options{},
			ErrUnsupported, []string{"ReaperRule", "upper"}},
		{"fail/sql-version-beta", `AwsIotSqlVersion: "2016-03-23"`, `AwsIotSqlVersion: beta`, Options{},
			ErrUnsupported, []string{"JITRRule", "beta"}},
		{"fail/sql-version-unknown", `AwsIotSqlVersion: "2016-03-23"`, `AwsIotSqlVersion: "2020-01-01"`, Options{},
			ErrInvalid, []string{"JITRRule", "2020-01-01"}},
		{"fail/lambda-to-unknown-function", "function:${VendorFunction}", "function:elsewhere", Options{},
			ErrUnsupported, []string{"RequestsRule", "elsewhere"}},
		{"fail/invalid-policy", "          - Sid: ConnectAsOwnThing\n            Effect: Allow", "          - Sid: ConnectAsOwnThing\n            Effect: Permit", Options{},
			ErrInvalid, []string{"BootstrapPolicy", "Effect"}},
		{"fail/unknown-condition-operator", `{"Bool": {"iot:Connection.Thing.IsAttached": "true"}}`, `{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}`, Options{},
			ErrInvalid, []string{"OperationalPolicy", "IpAddress"}},
		{"fail/no-transform", "Transform: AWS::Serverless-2016-10-31\n", "", Options{},
			ErrInvalid, []string{"Transform"}},
		{"fail/ref-unknown", "!Ref ManifestKey", "!Ref NoSuchThing", Options{},
			ErrInvalid, []string{"NoSuchThing"}},
		{"fail/getatt-unsupported", "!GetAtt PackageBucket.Arn", "!GetAtt PackageBucket.WebsiteURL", Options{},
			ErrUnsupported, []string{"PackageBucket.WebsiteURL", "VendorFunction environment variable PACKAGE_BUCKET_ARN"}},
		{"fail/import-value-in-env", "MANIFEST_KEY: !Ref ManifestKey", "MANIFEST_KEY: !ImportValue shared-manifest-key", Options{},
			ErrUnsupported, []string{"Fn::ImportValue", "ActivatorFunction environment variable MANIFEST_KEY"}},
		{"fail/unresolved-in-policy", "client/${!iot:Connection.Thing.ThingName}", "client/${RulesRole.RoleId}", Options{},
			ErrUnsupported, []string{"policy BootstrapPolicy", "RulesRole.RoleId"}},
		{"fail/parameter-not-allowed", "", "", Options{Parameters: map[string]string{"RequireActivation": "maybe"}},
			ErrInvalid, []string{"RequireActivation", "maybe"}},
		{"fail/parameter-pattern", "", "", Options{Parameters: map[string]string{"PackageBucketName": "Bad_Bucket"}},
			ErrInvalid, []string{"PackageBucketName", "AllowedPattern"}},
		{"fail/unknown-parameter-override", "", "", Options{Parameters: map[string]string{"Nope": "x"}},
			ErrInvalid, []string{"Nope"}},
		{"fail/bad-account", "", "", Options{AccountID: "12"},
			ErrInvalid, []string{"12 digits"}},
		{"fail/republish-qos", "Qos: 1", "Qos: 2", Options{},
			ErrInvalid, []string{"RequestsRule", "ErrorAction", "Qos 2"}},
		{"fail/republish-unsupported-substitution", "bootcert/errors/${topic(2)}", "bootcert/errors/${upper(topic(2))}", Options{},
			ErrUnsupported, []string{"RequestsRule", "${upper(topic(2))}"}},
		{"fail/republish-wildcard-topic", "bootcert/errors/${topic(2)}", "bootcert/errors/+", Options{},
			ErrInvalid, []string{"RequestsRule", "not a topic name"}},
		{"fail/resource-condition", "  RotationGroup:\n    Type: AWS::IoT::ThingGroup\n", "  RotationGroup:\n    Type: AWS::IoT::ThingGroup\n    Condition: IsProd\n", Options{},
			ErrUnsupported, []string{"RotationGroup", "Condition"}},
		{"fail/fn-if", "MemorySize: 256", "MemorySize: !If [IsProd, 512, 256]", Options{},
			ErrUnsupported, []string{"Fn::If"}},
		{"fail/not-yaml", "Resources:", "Resources: [", Options{},
			ErrInvalid, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := string(base)
			if c.old != "" {
				if !strings.Contains(doc, c.old) {
					t.Fatalf("test template lacks %q", c.old)
				}
				doc = strings.Replace(doc, c.old, c.new, 1)
			}
			path := filepath.Join(t.TempDir(), "template.yaml")
			if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(path, c.opts)
			if err == nil {
				t.Fatal("Load accepted a broken template")
			}
			t.Log(err)
			if !errors.Is(err, c.sentinel) {
				t.Fatalf("error %v does not wrap %v", err, c.sentinel)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// A JSON template, and a policy given as a JSON string under Fn::Sub with the
// list form's own variables.
func TestParseJSONAndSubVariables(t *testing.T) {
	doc := `{"Resources": {
	  "P": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "p",
	    "PolicyDocument": {"Fn::Sub": ["{\"Version\":\"2012-10-17\",\"Statement\":{\"Effect\":\"Allow\",\"Action\":\"iot:Connect\",\"Resource\":\"arn:aws:iot:${AWS::Region}:${AWS::AccountId}:client/${prefix}-${!iot:ClientId}\"}}", {"prefix": "gw"}]}}}}}`
	tp, err := Parse([]byte(doc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(tp.Policies) != 1 || !strings.Contains(string(tp.Policies[0].Document), `client/gw-${iot:ClientId}`) {
		t.Fatalf("policies %+v", tp.Policies)
	}
	d := policy.Evaluate([]policy.Named{{Name: "p", Doc: tp.Policies[0].Parsed}}, policy.Request{Action: policy.ActionConnect,
		Resource: "arn:aws:iot:us-east-1:123456789012:client/gw-x", Vars: policy.Vars{ClientID: "x"}})
	if !d.Allowed {
		t.Fatalf("%+v", d)
	}
}

// What the lab cannot resolve but does not use (Outputs, a function's IAM
// Policies) does not stop the load.
func TestUnresolvedButUnused(t *testing.T) {
	base, err := os.ReadFile(labTemplate)
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(string(base), "Outputs:\n", `Outputs:
  RoleId:
    Value: !GetAtt RulesRole.RoleId
  Imported:
    Value: !ImportValue other-stack-output
`, 1)
	doc = strings.Replace(doc, "      Architectures: [x86_64]\n", `      Architectures: [x86_64]
      Policies:
        - Statement:
            - Effect: Allow
              Action: sqs:SendMessage
              Resource: !GetAtt DeadLetters.Arn
`, 1)
	doc = strings.Replace(doc, "  RulesRole:\n", "  DeadLetters:\n    Type: AWS::SQS::Queue\n\n  RulesRole:\n", 1)
	tp, err := Parse([]byte(doc), Options{})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(tp.Functions) != 5 || len(tp.Rules) != 3 {
		t.Fatalf("functions %d rules %d", len(tp.Functions), len(tp.Rules))
	}
}

// SAM IoTRule events become topic rules with a Lambda action to their
// function, and their SQL is held to the same subset.
func TestSAMIoTRuleEvent(t *testing.T) {
	doc := `Transform: AWS::Serverless-2016-10-31
Resources:
  ReaperFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: bootstrap
      Runtime: provided.al2023
      CodeUri: .
      Events:
        JobEvents:
          Type: IoTRule
          Properties:
            Sql: SELECT * FROM '$aws/events/jobExecution/+/+'
            AwsIotSqlVersion: "2016-03-23"
        Nightly:
          Type: Schedule
          Properties:
            Schedule: rate(1 day)
`
	tp, err := Parse([]byte(doc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(tp.Rules) != 1 {
		t.Fatalf("rules %+v", tp.Rules)
	}
	r := tp.Rules[0]
	if r.LogicalID != "ReaperFunctionJobEvents" || r.AWSIotSqlVersion != "2016-03-23" || r.Statement.Filter != "$aws/events/jobExecution/+/+" ||
		len(r.Actions) != 1 || r.Actions[0].FunctionLogicalID != "ReaperFunction" || r.Actions[0].Kind != ActionLambda {
		t.Fatalf("rule %+v", r)
	}
	bad := strings.Replace(doc, "SELECT * FROM", "SELECT lower(x) AS y FROM", 1)
	if _, err := Parse([]byte(bad), Options{}); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "JobEvents") {
		t.Fatalf("unsupported SQL in an IoTRule event: %v", err)
	}
}
