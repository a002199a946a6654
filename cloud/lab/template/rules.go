package template

import (
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/awslabs/goformation/v7/cloudformation/iot"

	"github.com/bootcert/bootcert/cloud/lab/rules"
)

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
	for _, name := range slices.Sorted(maps.Keys(events)) {
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

// republishSubst is the subset of AWS IoT substitution templates
// ("Substitution templates", iot-substitution-templates.html) the lab's
// republish action expands.
var republishSubst = regexp.MustCompile(`^\$\{(topic\(([1-9][0-9]*)?\)|clientid\(\)|principal\(\))\}$`)
