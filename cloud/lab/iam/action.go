package iam

import "fmt"

// ActionRequest is one API request as IAM sees it when the action names
// several resource types ("Actions, resources, and condition keys",
// e.g. https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html):
// the resources of the required types (marked * in the reference), those
// of the optional types, and the condition keys of the request.
type ActionRequest struct {
	Action   string
	Required []string
	Optional []string
	Context  map[string]string
}

// Resources returns the request's resources, required first, or ["*"]
// when it has none (an action without resource-level permissions, which a
// policy grants with "Resource": "*").
func (a ActionRequest) Resources() []string {
	out := append(append([]string{}, a.Required...), a.Optional...)
	if len(out) == 0 {
		return []string{"*"}
	}
	return out
}

// AuthorizeAction decides a request that may name several resources. The
// reference: "If the action has one or more required resources, the caller
// must have permission to use the action with those resources ... If the
// resource type is optional (not indicated as required), then you can
// choose to use one of the optional resource types" (the introduction of
// each service's page, e.g.
// https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html).
// So: every required resource must be allowed; without required ones, one
// of the optional ones must be; without any, the resource is "*". An
// explicit Deny of any of the request's resources denies. The returned
// resource is the one that decided a refusal (for the error message).
func (p *Principal) AuthorizeAction(a ActionRequest) (Decision, string) {
	if p.Admin {
		return Decision{Allowed: true, Reason: "administrator"}, ""
	}
	eval := func(res string) Decision {
		return Evaluate(p.Policies, Request{Action: a.Action, Resource: res, Context: a.Context})
	}
	for _, res := range a.Resources() {
		if d := eval(res); d.Explicit {
			return d, res
		}
	}
	if len(a.Required) > 0 {
		for _, res := range a.Required {
			if d := eval(res); !d.Allowed {
				return d, res
			}
		}
		return Decision{Allowed: true, Reason: fmt.Sprintf("%s allowed on %v", a.Action, a.Required)}, ""
	}
	res := a.Resources()
	for _, r := range res {
		if d := eval(r); d.Allowed {
			return d, ""
		}
	}
	return Decision{Reason: "no statement allows " + a.Action + " on any of " + fmt.Sprint(res)}, res[0]
}

// DeniedMessage is the message AWS gives a request IAM refuses
// ("Access denied error message examples",
// https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html):
// "User: ARN is not authorized to perform: ACTION on resource: RESOURCE
// because no identity-based policy allows the ACTION action", or "... with
// an explicit deny in an identity-based policy".
func (p *Principal) DeniedMessage(action, resource string, d Decision) string {
	who := p.ARN
	if who == "" {
		who = p.Name
	}
	msg := "User: " + who + " is not authorized to perform: " + action + " on resource: " + resource
	if d.Explicit {
		return msg + " with an explicit deny in an identity-based policy"
	}
	return msg + " because no identity-based policy allows the " + action + " action"
}
