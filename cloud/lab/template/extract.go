package template

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/awslabs/goformation/v7/cloudformation"

	"github.com/bootcert/bootcert/cloud/lab/policy"
)

// extract takes from the parsed template what the lab enforces and runs.
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

	functions, fnByName, err := extractFunctions(cf, r)
	if err != nil {
		return nil, err
	}
	t.Functions = functions
	policies, err := extractPolicies(cf)
	if err != nil {
		return nil, err
	}
	t.Policies = policies

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
	if t.Provisioning, err = provisioningTemplates(cf, r, fnByName); err != nil {
		return nil, err
	}
	if err := t.checkResolved(); err != nil {
		return nil, err
	}
	return t, nil
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
		for _, k := range slices.Sorted(maps.Keys(f.Env)) {
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
	for _, id := range slices.Sorted(maps.Keys(t.Buckets)) {
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

// extractPolicies returns the template's AWS::IoT::Policy resources, sorted
// by logical ID, each document parsed as the broker will enforce it.
func extractPolicies(cf *cloudformation.Template) ([]Policy, error) {
	var out []Policy
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
		out = append(out, Policy{LogicalID: id, Name: name, Document: doc, Parsed: parsed})
	}
	slices.SortFunc(out, func(a, b Policy) int { return strings.Compare(a.LogicalID, b.LogicalID) })
	return out, nil
}
