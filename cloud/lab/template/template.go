// Package template loads bootcert's AWS SAM / CloudFormation template with
// goformation and extracts what the lab enforces and runs: IoT policies,
// topic rules (SQL and actions), Lambda functions with their environment,
// thing types, thing groups and buckets.
//
// Intrinsic functions are resolved the way CloudFormation would resolve them
// for a stack in Options.Region and Options.AccountID ("Intrinsic function
// reference", AWSCloudFormation/latest/UserGuide/intrinsic-function-reference.html):
// Ref and Fn::Sub of pseudo parameters, parameters and
// resources, Fn::GetAtt X.Arn of the resource types the template uses.
// Fn::Sub honours ${!Literal} (it yields ${Literal}), so an IoT policy written
// `!Sub "arn:aws:iot:${AWS::Region}:${AWS::AccountId}:client/${!iot:ClientId}"`
// is stored with the policy variable ${iot:ClientId} intact, as AWS stores
// it; a plain ${iot:ClientId} inside Fn::Sub is an error, as it is for
// CloudFormation ("Template format error: Unresolved resource dependencies").
// Policy variables outside Fn::Sub are left alone.
//
// The lab refuses, at load, anything it would not run exactly: topic rule
// actions other than Lambda and Republish, SQL outside the rules package's
// subset, SQL version "beta", invalid policy documents, resource Conditions
// and Fn::If. A value it cannot resolve (a GetAtt attribute it does not
// model, Fn::ImportValue, ...) fails the load only where the lab uses it
// (policies, rules, function settings and environment, names); in Outputs
// or a function's IAM Policies it is ignored.
package template

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/cloudformation"
	"github.com/awslabs/goformation/v7/cloudformation/global"
	"github.com/awslabs/goformation/v7/cloudformation/iot"
	"github.com/awslabs/goformation/v7/intrinsics"

	"github.com/bootcert/bootcert/cloud/lab/policy"
	"github.com/bootcert/bootcert/cloud/lab/rules"
)

// Sentinel errors; every Load error wraps one of them.
var (
	// ErrInvalid: the template is malformed or CloudFormation would refuse it.
	ErrInvalid = errors.New("invalid template")
	// ErrUnsupported: valid for AWS, but outside what the lab runs.
	ErrUnsupported = errors.New("not supported by the lab")
)

// Defaults for Options.
const (
	DefaultRegion    = "us-east-1"
	DefaultAccountID = "123456789012"
	// DefaultSQLVersion is AwsIotSqlVersion when a rule does not set it
	// ("AWS::IoT::TopicRule TopicRulePayload",
	// aws-properties-iot-topicrule-topicrulepayload.html: "The default value
	// is 2015-10-08").
	DefaultSQLVersion   = "2015-10-08"
	serverlessTransform = "AWS::Serverless-2016-10-31"
)

// Options set the stack's environment.
type Options struct {
	Region     string            // default us-east-1
	AccountID  string            // default 123456789012
	Parameters map[string]string // parameter overrides (like --parameter-overrides)
}

// Template is what the lab takes from a template.
type Template struct {
	Path        string
	Description string
	Region      string
	AccountID   string
	Parameters  map[string]Parameter
	Policies    []Policy    // sorted by LogicalID
	Rules       []TopicRule // sorted by LogicalID
	Functions   []Function  // sorted by LogicalID
	ThingTypes  []string    // names, sorted
	ThingGroups []string    // names, sorted
	Buckets     map[string]string
	// Provisioning are the fleet provisioning templates (provisioning.go).
	Provisioning []ProvisioningTemplate
}

// Parameter is a template parameter and the value the stack uses.
type Parameter struct {
	Type       string
	Default    string
	HasDefault bool
	Value      string // the override, else the default
}

// Policy is an AWS::IoT::Policy.
type Policy struct {
	LogicalID string
	Name      string          // PolicyName, else the logical ID
	Document  json.RawMessage // JSON as AWS would store it (intrinsics resolved)
	Parsed    *policy.Document
}

// TopicRule is an AWS::IoT::TopicRule.
type TopicRule struct {
	LogicalID        string
	Name             string // RuleName, else the logical ID
	SQL              string
	AWSIotSqlVersion string
	Disabled         bool
	Actions          []Action
	ErrorAction      *Action
	Statement        *rules.Statement
}

// Action kinds the lab runs.
const (
	ActionLambda    = "lambda"
	ActionRepublish = "republish"
)

// Action is one rule action.
type Action struct {
	Kind              string // ActionLambda or ActionRepublish
	FunctionLogicalID string // lambda: the template function it invokes
	FunctionARN       string // lambda: as resolved
	Topic             string // republish: topic (may hold ${...} substitution templates)
	QoS               int    // republish: 0 or 1
}

// Function is an AWS::Serverless::Function (Globals.Function applied).
type Function struct {
	LogicalID     string
	Name          string // FunctionName, else the logical ID
	ARN           string
	Handler       string
	Runtime       string
	Architectures []string
	Timeout       int
	MemorySize    int
	Env           map[string]string
	Events        []Event // SAM event sources, sorted by name
}

// Event is a SAM function event source, as far as the lab can use it: the
// lab runs Schedule events on its own clock (or on demand) and does not
// serve SAM Api events itself.
type Event struct {
	Name     string
	Type     string // Schedule, Api, HttpApi, IoTRule, ...
	Schedule string // Schedule: rate(...) or cron(...)
	Path     string // Api/HttpApi
	Method   string // Api/HttpApi
	SQL      string // IoTRule (also in Template.Rules)
}

// Load reads, resolves and checks a template.
func Load(path string, opts Options) (*Template, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading template: %w", err)
	}
	t, err := parse(data, strings.HasSuffix(path, ".json"), opts)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", path, err)
	}
	t.Path = path
	return t, nil
}

// Parse is Load for a template already in memory (YAML or JSON).
func Parse(data []byte, opts Options) (*Template, error) {
	return parse(data, false, opts)
}

var accountRE = regexp.MustCompile(`^[0-9]{12}$`)

// goformationMu serialises goformation: its YAML tag registration writes a
// package-level map on every parse.
var goformationMu sync.Mutex

func parse(data []byte, isJSON bool, opts Options) (t *Template, err error) {
	defer func() {
		// goformation is third-party code fed with user files: a panic in it
		// becomes a load error rather than a crashed lab.
		if p := recover(); p != nil {
			t, err = nil, fmt.Errorf("%w: the template parser failed: %v", ErrInvalid, p)
		}
	}()
	if opts.Region == "" {
		opts.Region = DefaultRegion
	}
	if opts.AccountID == "" {
		opts.AccountID = DefaultAccountID
	}
	if !accountRE.MatchString(opts.AccountID) {
		return nil, fmt.Errorf("%w: account ID %q is not 12 digits", ErrInvalid, opts.AccountID)
	}
	goformationMu.Lock()
	defer goformationMu.Unlock()
	// A first, unprocessed pass gives the raw template for the resolver.
	var raw map[string]any
	var rawJSON []byte
	if isJSON {
		rawJSON, err = intrinsics.ProcessJSON(data, &intrinsics.ProcessorOptions{NoProcess: true})
	} else {
		rawJSON, err = intrinsics.ProcessYAML(data, &intrinsics.ProcessorOptions{NoProcess: true})
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := json.Unmarshal(rawJSON, &raw); err != nil || raw == nil {
		return nil, fmt.Errorf("%w: the template is not a mapping", ErrInvalid)
	}
	r, err := newResolver(raw, opts)
	if err != nil {
		return nil, err
	}
	po := &intrinsics.ProcessorOptions{IntrinsicHandlerOverrides: map[string]intrinsics.IntrinsicHandler{
		"Ref":             r.handle,
		"Fn::Sub":         r.handle,
		"Fn::GetAtt":      r.handle,
		"Fn::ImportValue": r.handle,
		"Fn::Cidr":        r.handle,
		"Fn::GetAZs":      r.handle,
		"Fn::If":          r.handle,
	}}
	var cf *cloudformation.Template
	if isJSON {
		cf, err = goformation.ParseJSONWithOptions(data, po)
	} else {
		cf, err = goformation.ParseYAMLWithOptions(data, po)
	}
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	if err != nil {
		if len(r.unresolvedSeen) > 0 {
			return nil, fmt.Errorf("%w: %v (values the lab could not resolve: %s)", ErrInvalid, err, strings.Join(r.unresolvedSeen, "; "))
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return extract(cf, r)
}

func extract(cf *cloudformation.Template, r *resolver) (*Template, error) {
	t := &Template{
		Description: cf.Description,
		Region:      r.opts.Region,
		AccountID:   r.opts.AccountID,
		Parameters:  r.params,
		Buckets:     map[string]string{},
	}
	usesSAM := false
	for _, res := range cf.Resources {
		if strings.HasPrefix(res.AWSCloudFormationType(), "AWS::Serverless::") {
			usesSAM = true
		}
	}
	if usesSAM && !hasTransform(cf.Transform, serverlessTransform) {
		return nil, fmt.Errorf("%w: AWS::Serverless resources need `Transform: %s`", ErrInvalid, serverlessTransform)
	}
	for id := range cf.GetAllS3BucketResources() {
		t.Buckets[id] = r.physicalName(id)
	}
	for id, tt := range cf.GetAllIoTThingTypeResources() {
		name := id
		if tt.ThingTypeName != nil {
			name = *tt.ThingTypeName
		}
		t.ThingTypes = append(t.ThingTypes, name)
	}
	for id, g := range cf.GetAllIoTThingGroupResources() {
		name := id
		if g.ThingGroupName != nil {
			name = *g.ThingGroupName
		}
		t.ThingGroups = append(t.ThingGroups, name)
	}
	sort.Strings(t.ThingTypes)
	sort.Strings(t.ThingGroups)

	// Functions, with Globals.Function applied (SAM "Globals section of the
	// AWS SAM template", sam-specification-template-anatomy-globals.html).
	var g *global.Function
	if gf, ok := cf.Globals["Function"].(*global.Function); ok {
		g = gf
	}
	fnByName := map[string]string{}
	for id, f := range cf.GetAllServerlessFunctionResources() {
		fn := Function{LogicalID: id, Name: r.physicalName(id), Env: map[string]string{}}
		fn.ARN = r.lambdaARN(fn.Name)
		if g != nil {
			fn.Handler = deref(g.Handler)
			fn.Runtime = deref(g.Runtime)
			if g.Architectures != nil {
				fn.Architectures = *g.Architectures
			}
			if g.Timeout != nil {
				fn.Timeout = *g.Timeout
			}
			if g.MemorySize != nil {
				fn.MemorySize = *g.MemorySize
			}
			if g.Environment != nil {
				for k, v := range g.Environment.Variables {
					fn.Env[k] = v
				}
			}
		}
		if f.Handler != nil {
			fn.Handler = *f.Handler
		}
		if f.Runtime != nil {
			fn.Runtime = *f.Runtime
		}
		if f.Architectures != nil {
			fn.Architectures = f.Architectures
		}
		if f.Timeout != nil {
			fn.Timeout = *f.Timeout
		}
		if f.MemorySize != nil {
			fn.MemorySize = *f.MemorySize
		}
		if f.Environment != nil {
			for k, v := range f.Environment.Variables {
				fn.Env[k] = v
			}
		}
		if len(fn.Architectures) == 0 {
			fn.Architectures = []string{"x86_64"}
		}
		fn.Events = r.events(id)
		fnByName[fn.Name] = id
		t.Functions = append(t.Functions, fn)
	}
	sort.Slice(t.Functions, func(i, j int) bool { return t.Functions[i].LogicalID < t.Functions[j].LogicalID })

	for id, p := range cf.GetAllIoTPolicyResources() {
		var doc []byte
		switch d := p.PolicyDocument.(type) {
		case string: // a JSON string, e.g. a YAML block scalar
			doc = []byte(d)
		case nil:
			return nil, fmt.Errorf("%w: policy %s: PolicyDocument is missing", ErrInvalid, id)
		default:
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(d); err != nil {
				return nil, fmt.Errorf("%w: policy %s: PolicyDocument: %v", ErrInvalid, id, err)
			}
			doc = bytes.TrimSuffix(b.Bytes(), []byte("\n"))
		}
		parsed, err := policy.Parse(doc)
		if err != nil {
			return nil, fmt.Errorf("%w: policy %s: %w", ErrInvalid, id, err)
		}
		name := id
		if p.PolicyName != nil {
			name = *p.PolicyName
		}
		t.Policies = append(t.Policies, Policy{LogicalID: id, Name: name, Document: doc, Parsed: parsed})
	}
	sort.Slice(t.Policies, func(i, j int) bool { return t.Policies[i].LogicalID < t.Policies[j].LogicalID })

	for id, tr := range cf.GetAllIoTTopicRuleResources() {
		rule, err := topicRule(id, tr, r, fnByName)
		if err != nil {
			return nil, err
		}
		t.Rules = append(t.Rules, rule)
	}
	for _, f := range t.Functions {
		rs, err := samIoTRules(f.LogicalID, r)
		if err != nil {
			return nil, err
		}
		t.Rules = append(t.Rules, rs...)
	}
	sort.Slice(t.Rules, func(i, j int) bool { return t.Rules[i].LogicalID < t.Rules[j].LogicalID })
	var err error
	if t.Provisioning, err = provisioningTemplates(cf, r, fnByName); err != nil {
		return nil, err
	}
	if err := t.checkResolved(); err != nil {
		return nil, err
	}
	return t, nil
}

func topicRule(id string, tr *iot.TopicRule, r *resolver, fnByName map[string]string) (TopicRule, error) {
	p := tr.TopicRulePayload
	if p == nil {
		return TopicRule{}, fmt.Errorf("%w: topic rule %s: TopicRulePayload is missing", ErrInvalid, id)
	}
	name := id
	if tr.RuleName != nil {
		name = *tr.RuleName
	}
	rule, err := newRule(id, name, p.Sql, deref(p.AwsIotSqlVersion), deref(p.RuleDisabled))
	if err != nil {
		return rule, err
	}
	if len(p.Actions) == 0 {
		return rule, fmt.Errorf("%w: topic rule %s has no Actions", ErrInvalid, id)
	}
	for i := range p.Actions {
		a, err := action(&p.Actions[i], r, fnByName)
		if err != nil {
			return rule, fmt.Errorf("topic rule %s: Actions[%d]: %w", id, i, err)
		}
		rule.Actions = append(rule.Actions, a)
	}
	if p.ErrorAction != nil {
		a, err := action(p.ErrorAction, r, fnByName)
		if err != nil {
			return rule, fmt.Errorf("topic rule %s: ErrorAction: %w", id, err)
		}
		rule.ErrorAction = &a
	}
	return rule, nil
}

// newRule checks a rule's SQL version and parses its SQL.
func newRule(id, name, sql, version string, disabled bool) (TopicRule, error) {
	rule := TopicRule{LogicalID: id, Name: name, SQL: sql, AWSIotSqlVersion: version, Disabled: disabled}
	if rule.AWSIotSqlVersion == "" {
		rule.AWSIotSqlVersion = DefaultSQLVersion
	}
	switch rule.AWSIotSqlVersion {
	case "2015-10-08", "2016-03-23":
	case "beta":
		return rule, fmt.Errorf("%w: topic rule %s: AwsIotSqlVersion \"beta\" (use 2016-03-23)", ErrUnsupported, id)
	default:
		return rule, fmt.Errorf("%w: topic rule %s: AwsIotSqlVersion %q is not an AWS IoT SQL version (2015-10-08, 2016-03-23, beta)", ErrInvalid, id, rule.AWSIotSqlVersion)
	}
	st, err := rules.Parse(sql)
	if err != nil {
		return rule, fmt.Errorf("%w: topic rule %s: Sql %q: %w", ErrUnsupported, id, sql, err)
	}
	rule.Statement = st
	return rule, nil
}

// samIoTRules returns the topic rules SAM creates from a function's events
// of Type IoTRule (AWS SAM "IoTRule" event source: an AWS::IoT::TopicRule
// named <FunctionLogicalId><EventName> with a Lambda action to the
// function).
func samIoTRules(fnID string, r *resolver) ([]TopicRule, error) {
	props, _ := r.resources[fnID]["Properties"].(map[string]any)
	events, _ := props["Events"].(map[string]any)
	var out []TopicRule
	for _, name := range sortedKeys(events) {
		ev, _ := events[name].(map[string]any)
		if typ, _ := ev["Type"].(string); typ != "IoTRule" {
			continue
		}
		ep, _ := r.resolveRaw(ev["Properties"]).(map[string]any)
		sql, _ := ep["Sql"].(string)
		version, _ := ep["AwsIotSqlVersion"].(string)
		id := fnID + name
		rule, err := newRule(id, id, sql, version, false)
		if err != nil {
			return nil, fmt.Errorf("function %s event %s: %w", fnID, name, err)
		}
		rule.Actions = []Action{{Kind: ActionLambda, FunctionLogicalID: fnID, FunctionARN: r.lambdaARN(r.physicalName(fnID))}}
		out = append(out, rule)
	}
	return out, nil
}

// events lists a SAM function's Events from the raw template.
func (r *resolver) events(fnID string) []Event {
	props, _ := r.resources[fnID]["Properties"].(map[string]any)
	events, _ := props["Events"].(map[string]any)
	var out []Event
	for _, name := range sortedKeys(events) {
		ev, _ := events[name].(map[string]any)
		e := Event{Name: name}
		e.Type, _ = ev["Type"].(string)
		ep, _ := r.resolveRaw(ev["Properties"]).(map[string]any)
		e.Schedule, _ = ep["Schedule"].(string)
		e.Path, _ = ep["Path"].(string)
		e.Method, _ = ep["Method"].(string)
		e.SQL, _ = ep["Sql"].(string)
		out = append(out, e)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// action converts one TopicRule_Action; exactly one kind must be set.
func action(a *iot.TopicRule_Action, r *resolver, fnByName map[string]string) (Action, error) {
	var kinds []string
	v := reflect.ValueOf(a).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		if strings.HasPrefix(f.Name, "AWSCloudFormation") || f.Type.Kind() != reflect.Pointer {
			continue
		}
		if !v.Field(i).IsNil() {
			kinds = append(kinds, f.Name)
		}
	}
	if len(kinds) != 1 {
		return Action{}, fmt.Errorf("%w: an action must set exactly one kind, found %v", ErrInvalid, kinds)
	}
	switch kinds[0] {
	case "Lambda":
		arn := deref(a.Lambda.FunctionArn)
		name := arn
		if i := strings.Index(arn, ":function:"); i >= 0 {
			name = arn[i+len(":function:"):]
			name, _, _ = strings.Cut(name, ":") // drop a version or alias qualifier
		}
		id, ok := fnByName[name]
		if !ok {
			return Action{}, fmt.Errorf("%w: Lambda action FunctionArn %q names no AWS::Serverless::Function of this template", ErrUnsupported, arn)
		}
		return Action{Kind: ActionLambda, FunctionLogicalID: id, FunctionARN: arn}, nil
	case "Republish":
		q := 0
		if a.Republish.Qos != nil {
			q = *a.Republish.Qos
		}
		if q != 0 && q != 1 {
			return Action{}, fmt.Errorf("%w: Republish Qos %d (0 or 1)", ErrInvalid, q)
		}
		if a.Republish.Topic == "" {
			return Action{}, fmt.Errorf("%w: Republish without Topic", ErrInvalid)
		}
		for _, m := range subVar.FindAllString(a.Republish.Topic, -1) {
			if !republishSubst.MatchString(m) {
				return Action{}, fmt.Errorf("%w: Republish topic %q: substitution template %s (the lab expands ${topic()}, ${topic(n)}, ${clientid()}, ${principal()})", ErrUnsupported, a.Republish.Topic, m)
			}
		}
		if err := rules.ValidateFilter(a.Republish.Topic); err != nil || strings.ContainsAny(a.Republish.Topic, "+#") {
			return Action{}, fmt.Errorf("%w: Republish topic %q is not a topic name", ErrInvalid, a.Republish.Topic)
		}
		if a.Republish.Headers != nil {
			return Action{}, fmt.Errorf("%w: Republish Headers (MQTT 5 properties)", ErrUnsupported)
		}
		return Action{Kind: ActionRepublish, Topic: a.Republish.Topic, QoS: q}, nil
	}
	return Action{}, fmt.Errorf("%w: rule action %s (the lab runs Lambda and Republish actions only)", ErrUnsupported, kinds[0])
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func hasTransform(t *cloudformation.Transform, name string) bool {
	if t == nil {
		return false
	}
	if t.String != nil && *t.String == name {
		return true
	}
	if t.StringArray != nil {
		for _, s := range *t.StringArray {
			if s == name {
				return true
			}
		}
	}
	return false
}

// resolver resolves intrinsics against the raw template.
type resolver struct {
	raw       map[string]any
	resources map[string]map[string]any
	opts      Options
	params    map[string]Parameter
	errs      []error
	depth     int

	unresolvedSeen []string
}

func newResolver(raw map[string]any, opts Options) (*resolver, error) {
	r := &resolver{raw: raw, opts: opts, params: map[string]Parameter{}, resources: map[string]map[string]any{}}
	if res, ok := raw["Resources"].(map[string]any); ok {
		for id, v := range res {
			if m, ok := v.(map[string]any); ok {
				r.resources[id] = m
			}
		}
	}
	if len(r.resources) == 0 {
		return nil, fmt.Errorf("%w: no Resources", ErrInvalid)
	}
	for _, id := range sortedKeys(r.resources) {
		if c, ok := r.resources[id]["Condition"]; ok {
			return nil, fmt.Errorf("%w: resource %s has Condition %v: the lab does not evaluate template conditions", ErrUnsupported, id, c)
		}
	}
	ps, _ := raw["Parameters"].(map[string]any)
	for name, v := range ps {
		m, _ := v.(map[string]any)
		p := Parameter{}
		p.Type, _ = m["Type"].(string)
		if d, ok := m["Default"]; ok {
			p.Default, p.HasDefault = scalar(d), true
		}
		p.Value = p.Default
		if o, ok := opts.Parameters[name]; ok {
			p.Value = o
		} else if !p.HasDefault {
			return nil, fmt.Errorf("%w: parameter %s has no Default and no value was given (Options.Parameters)", ErrInvalid, name)
		}
		if av, ok := m["AllowedValues"].([]any); ok {
			allowed := false
			for _, a := range av {
				allowed = allowed || scalar(a) == p.Value
			}
			if !allowed {
				return nil, fmt.Errorf("%w: parameter %s: value %q is not one of its AllowedValues", ErrInvalid, name, p.Value)
			}
		}
		if pat, ok := m["AllowedPattern"].(string); ok {
			re, err := regexp.Compile("^(?:" + pat + ")$")
			if err != nil || !re.MatchString(p.Value) {
				return nil, fmt.Errorf("%w: parameter %s: value %q does not match its AllowedPattern %q", ErrInvalid, name, p.Value, pat)
			}
		}
		r.params[name] = p
	}
	for name := range opts.Parameters {
		if _, ok := r.params[name]; !ok {
			return nil, fmt.Errorf("%w: parameter override %s: the template has no such parameter", ErrInvalid, name)
		}
	}
	return r, nil
}

func scalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case []any: // CommaDelimitedList defaults written as lists
		var parts []string
		for _, e := range x {
			parts = append(parts, scalar(e))
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v)
}

// fail records an error; the value it returns is a placeholder the load
// never uses (Load returns the recorded errors first).
func (r *resolver) fail(format string, args ...any) any {
	r.errs = append(r.errs, fmt.Errorf(format, args...))
	return nil
}

// handle is the goformation intrinsic handler for the functions the lab
// resolves itself. Its input has its own intrinsics already resolved.
func (r *resolver) handle(name string, input any, _ any) any {
	switch name {
	case "Ref":
		s, ok := input.(string)
		if !ok {
			return r.fail("%w: Ref takes a name, got %v", ErrInvalid, input)
		}
		return r.ref(s)
	case "Fn::GetAtt":
		var parts []string
		switch x := input.(type) {
		case string:
			id, attr, _ := strings.Cut(x, ".")
			parts = []string{id, attr}
		case []any:
			for _, e := range x {
				s, _ := e.(string)
				parts = append(parts, s)
			}
		}
		if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
			return r.fail("%w: Fn::GetAtt takes [LogicalId, Attribute], got %v", ErrInvalid, input)
		}
		return r.getAtt(parts[0], parts[1])
	case "Fn::Sub":
		switch x := input.(type) {
		case string:
			return r.sub(x, nil)
		case []any:
			if len(x) == 2 {
				s, ok1 := x[0].(string)
				vars, ok2 := x[1].(map[string]any)
				if ok1 && ok2 {
					return r.sub(s, vars)
				}
			}
		}
		return r.fail("%w: Fn::Sub takes a string or [string, {variables}], got %v", ErrInvalid, input)
	}
	if name == "Fn::If" {
		return r.fail("%w: intrinsic function Fn::If (the lab does not evaluate template conditions)", ErrUnsupported)
	}
	return r.unresolved("intrinsic function " + name)
}

// Values the lab cannot resolve (an attribute it does not model, an
// intrinsic it does not evaluate) become a marker instead of an error: they
// only matter, and only fail the load, when they end up in something the lab
// uses (policies, rules, functions, names), not in Outputs or a function's
// IAM Policies.
const unresolvedPrefix = "[lab-unresolved: "

func (r *resolver) unresolved(what string) string {
	r.unresolvedSeen = append(r.unresolvedSeen, what)
	return unresolvedPrefix + what + "]"
}

var unresolvedRE = regexp.MustCompile(`\[lab-unresolved: [^\]]*\]`)

// checkResolved fails when a value the lab uses holds an unresolved marker.
func checkResolved(where, v string) error {
	if m := unresolvedRE.FindString(v); m != "" {
		return fmt.Errorf("%w: %s uses %s, which the lab cannot resolve", ErrUnsupported, where, strings.TrimSuffix(strings.TrimPrefix(m, unresolvedPrefix), "]"))
	}
	return nil
}

func (t *Template) checkResolved() error {
	var errs []error
	add := func(where, v string) {
		if err := checkResolved(where, v); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range t.Policies {
		add("policy "+p.LogicalID, p.Name+string(p.Document))
	}
	for _, f := range t.Functions {
		add("function "+f.LogicalID, f.Name+" "+f.Handler+" "+f.Runtime)
		for _, k := range sortedKeys(f.Env) {
			add(fmt.Sprintf("function %s environment variable %s", f.LogicalID, k), f.Env[k])
		}
		for _, e := range f.Events {
			add(fmt.Sprintf("function %s event %s", f.LogicalID, e.Name), e.Schedule+e.Path+e.Method+e.SQL)
		}
	}
	for _, r := range t.Rules {
		add("topic rule "+r.LogicalID, r.Name+r.SQL)
		for _, a := range append(append([]Action{}, r.Actions...), derefAction(r.ErrorAction)...) {
			add("topic rule "+r.LogicalID+" action", a.FunctionARN+a.Topic)
		}
	}
	for _, id := range sortedKeys(t.Buckets) {
		add("bucket "+id, t.Buckets[id])
	}
	add("thing types", strings.Join(t.ThingTypes, " "))
	add("thing groups", strings.Join(t.ThingGroups, " "))
	return errors.Join(errs...)
}

func derefAction(a *Action) []Action {
	if a == nil {
		return nil
	}
	return []Action{*a}
}

var subVar = regexp.MustCompile(`\$\{([^}]*)\}`)

// republishSubst is the subset of AWS IoT substitution templates
// ("Substitution templates", iot-substitution-templates.html) the lab's
// republish action expands.
var republishSubst = regexp.MustCompile(`^\$\{(topic\(([1-9][0-9]*)?\)|clientid\(\)|principal\(\))\}$`)

// sub implements Fn::Sub ("Fn::Sub", intrinsic-function-reference-sub.html):
// ${!Literal} -> ${Literal}; ${Name} from the variable map, a
// parameter, a pseudo parameter or a resource's Ref; ${Res.Attr} GetAtt.
func (r *resolver) sub(s string, vars map[string]any) any {
	return subVar.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		if strings.HasPrefix(name, "!") {
			return "${" + name[1:] + "}"
		}
		name = strings.TrimSpace(name)
		if v, ok := vars[name]; ok {
			if s, ok := v.(string); ok {
				return s
			}
			r.fail("%w: Fn::Sub %q: variable %s is not a string", ErrInvalid, s, name)
			return ""
		}
		if id, attr, ok := strings.Cut(name, "."); ok && r.resources[id] != nil {
			v, _ := r.getAtt(id, attr).(string)
			return v
		}
		if r.known(name) {
			v, _ := r.ref(name).(string)
			return v
		}
		hint := ""
		if strings.Contains(name, ":") && !strings.HasPrefix(name, "AWS::") {
			hint = fmt.Sprintf("; for a literal policy variable write ${!%s}", name)
		}
		r.fail("%w: Fn::Sub %q: unresolved variable ${%s} (CloudFormation: \"Unresolved resource dependencies\")%s", ErrInvalid, s, name, hint)
		return ""
	})
}

func (r *resolver) known(name string) bool {
	if _, ok := r.params[name]; ok {
		return true
	}
	if r.resources[name] != nil {
		return true
	}
	switch name {
	case "AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::URLSuffix", "AWS::StackName", "AWS::StackId", "AWS::NoValue":
		return true
	}
	return false
}

// ref implements Ref: parameters' values, pseudo parameters, and resources'
// physical IDs as the lab names them.
func (r *resolver) ref(name string) any {
	if p, ok := r.params[name]; ok {
		return p.Value
	}
	switch name {
	case "AWS::Region":
		return r.opts.Region
	case "AWS::AccountId":
		return r.opts.AccountID
	case "AWS::Partition":
		return "aws"
	case "AWS::URLSuffix":
		return "amazonaws.com"
	case "AWS::StackName":
		return "bootcert-lab"
	case "AWS::StackId":
		return fmt.Sprintf("arn:aws:cloudformation:%s:%s:stack/bootcert-lab/00000000-0000-0000-0000-000000000000", r.opts.Region, r.opts.AccountID)
	case "AWS::NoValue":
		return nil
	}
	if r.resources[name] != nil {
		return r.physicalName(name)
	}
	return r.fail("%w: Ref %s: no parameter, pseudo parameter or resource of that name", ErrInvalid, name)
}

// nameProperty is the property that names a resource of each type the lab
// knows; without it the lab uses the logical ID (S3 buckets: lower-cased,
// as bucket names must be).
var nameProperty = map[string]string{
	"AWS::S3::Bucket":              "BucketName",
	"AWS::Serverless::Function":    "FunctionName",
	"AWS::Lambda::Function":        "FunctionName",
	"AWS::IoT::Policy":             "PolicyName",
	"AWS::IoT::TopicRule":          "RuleName",
	"AWS::IoT::ThingType":          "ThingTypeName",
	"AWS::IoT::ThingGroup":         "ThingGroupName",
	"AWS::IAM::Role":               "RoleName",
	"AWS::Serverless::Api":         "Name",
	"AWS::Serverless::SimpleTable": "TableName",
}

func (r *resolver) physicalName(id string) string {
	res := r.resources[id]
	typ, _ := res["Type"].(string)
	if prop, ok := nameProperty[typ]; ok {
		if props, ok := res["Properties"].(map[string]any); ok {
			if v, ok := props[prop]; ok {
				if s, ok := r.resolveRaw(v).(string); ok && s != "" {
					return s
				}
			}
		}
	}
	if typ == "AWS::S3::Bucket" {
		return strings.ToLower(id)
	}
	return id
}

// resolveRaw resolves intrinsics in a raw (unprocessed) value, for names
// that other resources reference.
func (r *resolver) resolveRaw(v any) any {
	r.depth++
	defer func() { r.depth-- }()
	if r.depth > 20 {
		return r.fail("%w: circular reference while resolving a resource name", ErrInvalid)
	}
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			for k, in := range x {
				switch k {
				case "Ref", "Fn::Sub", "Fn::GetAtt":
					return r.handle(k, r.resolveRaw(in), nil)
				case "Fn::Join":
					if l, ok := in.([]any); ok && len(l) == 2 {
						sep, _ := l[0].(string)
						items, _ := r.resolveRaw(l[1]).([]any)
						var parts []string
						for _, it := range items {
							s, _ := it.(string)
							parts = append(parts, s)
						}
						return strings.Join(parts, sep)
					}
				}
			}
		}
		out := map[string]any{}
		for k, e := range x {
			out[k] = r.resolveRaw(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = r.resolveRaw(e)
		}
		return out
	}
	return v
}

func (r *resolver) lambdaARN(name string) string {
	return fmt.Sprintf("arn:aws:lambda:%s:%s:function:%s", r.opts.Region, r.opts.AccountID, name)
}

// getAtt implements Fn::GetAtt for the attributes the template uses.
func (r *resolver) getAtt(id, attr string) any {
	res := r.resources[id]
	if res == nil {
		// SAM's implicit execution role: <Function>Role.
		if fn, ok := strings.CutSuffix(id, "Role"); ok && attr == "Arn" {
			if t, _ := r.resources[fn]["Type"].(string); t == "AWS::Serverless::Function" {
				return fmt.Sprintf("arn:aws:iam::%s:role/%s", r.opts.AccountID, id)
			}
		}
		return r.fail("%w: Fn::GetAtt %s.%s: no resource %s", ErrInvalid, id, attr, id)
	}
	typ, _ := res["Type"].(string)
	name := r.physicalName(id)
	reg, acct := r.opts.Region, r.opts.AccountID
	switch typ + "." + attr {
	case "AWS::Serverless::Function.Arn", "AWS::Lambda::Function.Arn":
		return r.lambdaARN(name)
	case "AWS::S3::Bucket.Arn":
		return "arn:aws:s3:::" + name
	case "AWS::S3::Bucket.DomainName":
		return name + ".s3.amazonaws.com"
	case "AWS::S3::Bucket.RegionalDomainName":
		return name + ".s3." + reg + ".amazonaws.com"
	case "AWS::IoT::Policy.Arn":
		return fmt.Sprintf("arn:aws:iot:%s:%s:policy/%s", reg, acct, name)
	case "AWS::IoT::TopicRule.Arn":
		return fmt.Sprintf("arn:aws:iot:%s:%s:rule/%s", reg, acct, name)
	case "AWS::IoT::ThingType.Arn":
		return fmt.Sprintf("arn:aws:iot:%s:%s:thingtype/%s", reg, acct, name)
	case "AWS::IoT::ThingGroup.Arn":
		return fmt.Sprintf("arn:aws:iot:%s:%s:thinggroup/%s", reg, acct, name)
	case "AWS::IAM::Role.Arn":
		return fmt.Sprintf("arn:aws:iam::%s:role/%s", acct, name)
	}
	return r.unresolved(fmt.Sprintf("Fn::GetAtt %s.%s (resource type %s)", id, attr, typ))
}
