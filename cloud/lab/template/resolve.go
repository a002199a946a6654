package template

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

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
	for _, id := range slices.Sorted(maps.Keys(r.resources)) {
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

var subVar = regexp.MustCompile(`\$\{([^}]*)\}`)

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
