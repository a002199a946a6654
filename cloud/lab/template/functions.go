package template

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/awslabs/goformation/v7/cloudformation"
	"github.com/awslabs/goformation/v7/cloudformation/global"
)

// events lists a SAM function's Events from the raw template.
func (r *resolver) events(fnID string) []Event {
	props, _ := r.resources[fnID]["Properties"].(map[string]any)
	events, _ := props["Events"].(map[string]any)
	var out []Event
	for _, name := range slices.Sorted(maps.Keys(events)) {
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

// extractFunctions returns the template's AWS::Serverless::Functions,
// sorted by logical ID, and their logical IDs by physical name.
func extractFunctions(cf *cloudformation.Template, r *resolver) (out []Function, fnByName map[string]string, err error) {
	// Functions, with Globals.Function applied (SAM "Globals section of the
	// AWS SAM template", sam-specification-template-anatomy-globals.html).
	var g *global.Function
	if gf, ok := cf.Globals["Function"].(*global.Function); ok {
		g = gf
	}
	fnByName = map[string]string{}
	for id, f := range cf.GetAllServerlessFunctionResources() {
		fn := Function{LogicalID: id, Name: r.physicalName(id), Env: map[string]string{}, MaxRetryAttempts: -1}
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
		if f.ReservedConcurrentExecutions != nil {
			fn.ReservedConcurrency = *f.ReservedConcurrentExecutions
		}
		if c := f.EventInvokeConfig; c != nil {
			if c.MaximumRetryAttempts != nil {
				fn.MaxRetryAttempts = *c.MaximumRetryAttempts
			}
			if c.MaximumEventAgeInSeconds != nil {
				fn.MaxEventAge = *c.MaximumEventAgeInSeconds
			}
		}
		if len(fn.Architectures) == 0 {
			fn.Architectures = []string{"x86_64"}
		}
		fn.Events = r.events(id)
		fn.RoleARN = fmt.Sprintf("arn:aws:iam::%s:role/%sRole", r.opts.AccountID, id)
		if fn.Policies, err = r.functionPolicies(id); err != nil {
			return nil, nil, err
		}
		fnByName[fn.Name] = id
		out = append(out, fn)
	}
	slices.SortFunc(out, func(a, b Function) int { return strings.Compare(a.LogicalID, b.LogicalID) })
	return out, fnByName, nil
}
