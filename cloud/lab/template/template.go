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
// it is ignored, and in a function's IAM Policies it becomes a resource
// that matches no request the lab serves.
package template

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"

	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/cloudformation"
	"github.com/awslabs/goformation/v7/intrinsics"

	"github.com/bootcert/bootcert/cloud/lab/iam"
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
	// ReservedConcurrency is ReservedConcurrentExecutions (0: not set):
	// the most instances of the function that run at once
	// (https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html).
	ReservedConcurrency int
	// MaxRetryAttempts and MaxEventAge are EventInvokeConfig's
	// MaximumRetryAttempts and MaximumEventAgeInSeconds; -1 and 0 when
	// not set (AWS's defaults, 2 and 6 hours, apply:
	// https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).
	MaxRetryAttempts int
	MaxEventAge      int // seconds
	Env              map[string]string
	Events           []Event // SAM event sources, sorted by name
	// RoleARN is the function's execution role (SAM's implicit
	// <LogicalId>Role) and Policies the IAM policies SAM attaches to it
	// (inline documents and expanded SAM policy templates).
	RoleARN  string
	Policies []*iam.Document
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
