package template

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/awslabs/goformation/v7/cloudformation"
)

// Fleet provisioning templates (AWS::IoT::ProvisioningTemplate,
// https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-iot-provisioningtemplate.html)
// and their TemplateBody, the provisioning template language AWS IoT
// evaluates at RegisterThing ("Provisioning templates",
// https://docs.aws.amazon.com/iot/latest/developerguide/provision-template.html).
// The lab takes a body's Parameters, its Resources of type AWS::IoT::Thing,
// AWS::IoT::Certificate and AWS::IoT::Policy (by PolicyName) and its
// DeviceConfiguration, with the intrinsics Ref, Fn::Join and Fn::Sub (plain
// ${Param} references); any other resource type or intrinsic is refused at
// load (ErrUnsupported) rather than run differently.

// MaxProvisioningTemplateBody is the longest TemplateBody AWS accepts
// (CreateProvisioningTemplate and RegisterThing, templateBody "Length
// Constraints: Minimum length of 0. Maximum length of 10240",
// https://docs.aws.amazon.com/iot/latest/apireference/API_RegisterThing.html).
const MaxProvisioningTemplateBody = 10240

// Built-in parameters AWS IoT passes to a fleet provisioning template
// (provision-template.html, "Parameters section").
const (
	ParamCertificateID = "AWS::IoT::Certificate::Id"
	ParamClientID      = "AWS::IoT::ClientId"
)

// ProvisioningTemplate is an AWS::IoT::ProvisioningTemplate.
type ProvisioningTemplate struct {
	LogicalID string
	Name      string // TemplateName, else the logical ID
	Enabled   bool
	RoleARN   string
	Type      string // FLEET_PROVISIONING (default) or JITP
	Body      *ProvisioningBody
	// Hook is the PreProvisioningHook (nil when none).
	Hook *ProvisioningHook
}

// ProvisioningHook is a template's pre-provisioning hook.
type ProvisioningHook struct {
	TargetARN         string
	FunctionLogicalID string // the template function TargetArn names
	PayloadVersion    string // "2020-04-01", the only version AWS has
}

// ProvisioningBody is a parsed TemplateBody.
type ProvisioningBody struct {
	Parameters          map[string]BodyParameter
	Resources           map[string]BodyResource
	DeviceConfiguration map[string]any
}

// BodyParameter is one entry of a body's Parameters.
type BodyParameter struct {
	Type       string `json:"Type"`
	Default    *string
	HasDefault bool
}

// BodyResource is one entry of a body's Resources.
type BodyResource struct {
	Type             string            `json:"Type"`
	Properties       map[string]any    `json:"Properties"`
	OverrideSettings map[string]string `json:"OverrideSettings"`
}

// Provisioned is what a body yields for one set of parameters: the
// resources RegisterThing creates or updates.
type Provisioned struct {
	ThingName   string
	ThingType   string
	ThingGroups []string
	Attributes  map[string]string
	// AttributeOverride is the thing's OverrideSettings.AttributePayload:
	// what RegisterThing does with the attributes of a thing that exists
	// (MERGE, REPLACE, DO_NOTHING or FAIL; the lab's default when unset is
	// DO_NOTHING).
	AttributeOverride string
	CertificateID     string // the certificate resource's CertificateId
	CertificateStat   string // ACTIVE or INACTIVE
	Policies          []string
	// DeviceConfiguration is returned to the device in RegisterThing's reply.
	DeviceConfiguration map[string]string
}

// provisioningTemplates extracts the template's provisioning templates.
func provisioningTemplates(cf *cloudformation.Template, r *resolver, fnByName map[string]string) ([]ProvisioningTemplate, error) {
	var out []ProvisioningTemplate
	for id, pt := range cf.GetAllIoTProvisioningTemplateResources() {
		p := ProvisioningTemplate{LogicalID: id, Name: id, Enabled: deref(pt.Enabled), RoleARN: pt.ProvisioningRoleArn, Type: deref(pt.TemplateType)}
		if pt.TemplateName != nil {
			p.Name = *pt.TemplateName
		}
		if p.Type == "" {
			p.Type = "FLEET_PROVISIONING"
		}
		if p.Type != "FLEET_PROVISIONING" {
			return nil, fmt.Errorf("%w: provisioning template %s: TemplateType %s (the lab runs FLEET_PROVISIONING templates)", ErrUnsupported, id, p.Type)
		}
		if p.RoleARN == "" {
			return nil, fmt.Errorf("%w: provisioning template %s: ProvisioningRoleArn is required", ErrInvalid, id)
		}
		body, err := ParseProvisioningBody([]byte(pt.TemplateBody))
		if err != nil {
			return nil, fmt.Errorf("provisioning template %s: TemplateBody: %w", id, err)
		}
		p.Body = body
		if h := pt.PreProvisioningHook; h != nil {
			arn := deref(h.TargetArn)
			name := arn
			if i := strings.Index(arn, ":function:"); i >= 0 {
				name, _, _ = strings.Cut(arn[i+len(":function:"):], ":")
			}
			fn, ok := fnByName[name]
			if !ok {
				return nil, fmt.Errorf("%w: provisioning template %s: PreProvisioningHook TargetArn %q names no AWS::Serverless::Function of this template", ErrUnsupported, id, arn)
			}
			v := deref(h.PayloadVersion)
			if v == "" {
				v = "2020-04-01"
			}
			if v != "2020-04-01" {
				return nil, fmt.Errorf("%w: provisioning template %s: PreProvisioningHook PayloadVersion %q (AWS has 2020-04-01)", ErrInvalid, id, v)
			}
			p.Hook = &ProvisioningHook{TargetARN: arn, FunctionLogicalID: fn, PayloadVersion: v}
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LogicalID < out[j].LogicalID })
	return out, nil
}

// ParseProvisioningBody parses and checks a provisioning template body.
func ParseProvisioningBody(data []byte) (*ProvisioningBody, error) {
	if len(data) > MaxProvisioningTemplateBody {
		return nil, fmt.Errorf("%w: %d characters, AWS allows %d", ErrInvalid, len(data), MaxProvisioningTemplateBody)
	}
	var raw struct {
		Parameters          map[string]map[string]any `json:"Parameters"`
		Resources           map[string]BodyResource   `json:"Resources"`
		DeviceConfiguration map[string]any            `json:"DeviceConfiguration"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: not a provisioning template (JSON with Parameters, Resources, DeviceConfiguration): %v", ErrInvalid, err)
	}
	b := &ProvisioningBody{Parameters: map[string]BodyParameter{}, Resources: raw.Resources, DeviceConfiguration: raw.DeviceConfiguration}
	for name, m := range raw.Parameters {
		p := BodyParameter{}
		p.Type, _ = m["Type"].(string)
		if p.Type != "String" {
			return nil, fmt.Errorf("%w: parameter %s: Type %q (provisioning templates take String parameters)", ErrInvalid, name, p.Type)
		}
		if d, ok := m["Default"]; ok {
			s := scalar(d)
			p.Default, p.HasDefault = &s, true
		}
		b.Parameters[name] = p
	}
	if len(b.Resources) == 0 {
		return nil, fmt.Errorf("%w: no Resources", ErrInvalid)
	}
	kinds := map[string]int{}
	for _, id := range slices.Sorted(maps.Keys(b.Resources)) {
		res := b.Resources[id]
		switch res.Type {
		case "AWS::IoT::Thing", "AWS::IoT::Certificate", "AWS::IoT::Policy":
		default:
			return nil, fmt.Errorf("%w: resource %s: Type %q (a provisioning template holds AWS::IoT::Thing, AWS::IoT::Certificate, AWS::IoT::Policy)", ErrUnsupported, id, res.Type)
		}
		kinds[res.Type]++
		if err := checkIntrinsics(res.Properties, b.Parameters); err != nil {
			return nil, fmt.Errorf("resource %s: %w", id, err)
		}
		if res.Type == "AWS::IoT::Policy" {
			if _, ok := res.Properties["PolicyDocument"]; ok {
				return nil, fmt.Errorf("%w: resource %s: PolicyDocument (name an existing policy with PolicyName)", ErrUnsupported, id)
			}
			if _, ok := res.Properties["PolicyName"]; !ok {
				return nil, fmt.Errorf("%w: resource %s: PolicyName is required", ErrInvalid, id)
			}
		}
	}
	if kinds["AWS::IoT::Thing"] > 1 || kinds["AWS::IoT::Certificate"] != 1 {
		return nil, fmt.Errorf("%w: a fleet provisioning template has one AWS::IoT::Certificate and at most one AWS::IoT::Thing (found %d and %d)", ErrInvalid, kinds["AWS::IoT::Certificate"], kinds["AWS::IoT::Thing"])
	}
	if err := checkIntrinsics(b.DeviceConfiguration, b.Parameters); err != nil {
		return nil, fmt.Errorf("DeviceConfiguration: %w", err)
	}
	return b, nil
}

var bodySubVar = regexp.MustCompile(`\$\{([^}]*)\}`)

// checkIntrinsics refuses intrinsics the lab does not evaluate and
// references to undeclared parameters.
func checkIntrinsics(v any, params map[string]BodyParameter) error {
	known := func(name string) error {
		if _, ok := params[name]; ok {
			return nil
		}
		return fmt.Errorf("%w: Ref %q: not a parameter of the template body", ErrInvalid, name)
	}
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			for k, in := range x {
				switch {
				case k == "Ref":
					s, _ := in.(string)
					return known(s)
				case k == "Fn::Sub":
					s, ok := in.(string)
					if !ok {
						return fmt.Errorf("%w: Fn::Sub takes a string here", ErrUnsupported)
					}
					for _, m := range bodySubVar.FindAllStringSubmatch(s, -1) {
						if err := known(m[1]); err != nil {
							return err
						}
					}
					return nil
				case k == "Fn::Join":
					return checkIntrinsics(in, params)
				case strings.HasPrefix(k, "Fn::"):
					return fmt.Errorf("%w: intrinsic %s (the lab evaluates Ref, Fn::Join, Fn::Sub in provisioning templates)", ErrUnsupported, k)
				}
			}
		}
		for _, e := range x {
			if err := checkIntrinsics(e, params); err != nil {
				return err
			}
		}
	case []any:
		for _, e := range x {
			if err := checkIntrinsics(e, params); err != nil {
				return err
			}
		}
	}
	return nil
}

// ErrMissingParameter is wrapped when a parameter without Default is
// absent at RegisterThing.
var ErrMissingParameter = fmt.Errorf("%w: missing template parameter", ErrInvalid)

// Provision evaluates the body for one RegisterThing: params are the
// device's parameters with the hook's parameterOverrides and AWS's built-in
// parameters applied.
func (b *ProvisioningBody) Provision(params map[string]string) (*Provisioned, error) {
	vals := map[string]string{}
	for name, p := range b.Parameters {
		if v, ok := params[name]; ok {
			vals[name] = v
		} else if p.HasDefault {
			vals[name] = *p.Default
		}
	}
	var missing error
	eval := func(v any) string {
		s, err := evalBody(v, vals)
		if err != nil && missing == nil {
			missing = err
		}
		return s
	}
	out := &Provisioned{Attributes: map[string]string{}, DeviceConfiguration: map[string]string{}, CertificateStat: "ACTIVE"}
	for _, id := range slices.Sorted(maps.Keys(b.Resources)) {
		res := b.Resources[id]
		p := res.Properties
		switch res.Type {
		case "AWS::IoT::Thing":
			out.ThingName = eval(p["ThingName"])
			if tt, ok := p["ThingTypeName"]; ok {
				out.ThingType = eval(tt)
			}
			if gs, ok := p["ThingGroups"].([]any); ok {
				for _, g := range gs {
					out.ThingGroups = append(out.ThingGroups, eval(g))
				}
			}
			out.AttributeOverride = res.OverrideSettings["AttributePayload"]
			switch out.AttributeOverride {
			case "":
				out.AttributeOverride = "DO_NOTHING"
			case "MERGE", "REPLACE", "DO_NOTHING", "FAIL":
			default:
				return nil, fmt.Errorf("%w: resource %s: OverrideSettings AttributePayload %q (MERGE, REPLACE, DO_NOTHING, FAIL)", ErrInvalid, id, out.AttributeOverride)
			}
			if ap, ok := p["AttributePayload"].(map[string]any); ok {
				for k, v := range ap {
					out.Attributes[k] = eval(v)
				}
			}
		case "AWS::IoT::Certificate":
			out.CertificateID = eval(p["CertificateId"])
			if st, ok := p["Status"]; ok {
				out.CertificateStat = eval(st)
			}
		case "AWS::IoT::Policy":
			out.Policies = append(out.Policies, eval(p["PolicyName"]))
		}
	}
	for k, v := range b.DeviceConfiguration {
		out.DeviceConfiguration[k] = eval(v)
	}
	if missing != nil {
		return nil, missing
	}
	if out.CertificateStat != "ACTIVE" && out.CertificateStat != "INACTIVE" {
		return nil, fmt.Errorf("%w: certificate Status %q (ACTIVE or INACTIVE)", ErrInvalid, out.CertificateStat)
	}
	return out, nil
}

func evalBody(v any, vals map[string]string) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case nil:
		return "", nil
	case map[string]any:
		for k, in := range x {
			switch k {
			case "Ref":
				name, _ := in.(string)
				s, ok := vals[name]
				if !ok {
					return "", fmt.Errorf("%w %s", ErrMissingParameter, name)
				}
				return s, nil
			case "Fn::Sub":
				s, _ := in.(string)
				var err error
				out := bodySubVar.ReplaceAllStringFunc(s, func(m string) string {
					name := m[2 : len(m)-1]
					v, ok := vals[name]
					if !ok && err == nil {
						err = fmt.Errorf("%w %s", ErrMissingParameter, name)
					}
					return v
				})
				return out, err
			case "Fn::Join":
				l, _ := in.([]any)
				if len(l) != 2 {
					return "", fmt.Errorf("%w: Fn::Join takes [separator, [values]]", ErrInvalid)
				}
				sep, _ := l[0].(string)
				items, _ := l[1].([]any)
				var parts []string
				for _, it := range items {
					s, err := evalBody(it, vals)
					if err != nil {
						return "", err
					}
					parts = append(parts, s)
				}
				return strings.Join(parts, sep), nil
			}
		}
	}
	return scalar(v), nil
}
