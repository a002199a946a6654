package registry

import (
	"strconv"
	"strings"
	"time"
)

// MaxPolicyVersions is AWS's limit of versions per policy
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CreatePolicyVersion.html:
// "A managed policy can have up to five versions").
const MaxPolicyVersions = 5

func copyPolicy(p *Policy) Policy {
	c := *p
	c.Versions = append([]PolicyVersion(nil), p.Versions...)
	if len(c.Versions) == 0 { // state written before versions were kept
		c.Versions = []PolicyVersion{{ID: p.DefaultVersionID, Document: p.Document, CreateDate: p.CreationDate}}
	}
	return c
}

// CreatePolicyVersion adds a version to a policy, the default one if
// setAsDefault; a sixth version is VersionsLimitExceeded.
func (r *Registry) CreatePolicyVersion(name, document string, setAsDefault bool) (PolicyVersion, error) {
	if err := checkPolicyDocument(document); err != nil {
		return PolicyVersion{}, err
	}
	var out PolicyVersion
	err := r.do(func(now time.Time) error {
		p, ok := r.st.Policies[name]
		if !ok {
			return notFound("policy", name)
		}
		*p = copyPolicy(p)
		if len(p.Versions) >= MaxPolicyVersions {
			return newErr(CodeVersionsLimitExceeded, "policy "+name, "policy has %d versions, the maximum: delete one first", len(p.Versions))
		}
		next := 0
		for _, v := range p.Versions {
			if n, err := strconv.Atoi(v.ID); err == nil && n > next {
				next = n
			}
		}
		out = PolicyVersion{ID: strconv.Itoa(next + 1), Document: document, CreateDate: now}
		p.Versions = append(p.Versions, out)
		if setAsDefault {
			p.Document, p.DefaultVersionID = document, out.ID
		}
		p.LastModifiedDate = now
		r.touch()
		r.logDecision("CreatePolicyVersion", name, "created", "version", out.ID, "default", setAsDefault)
		return nil
	})
	return out, err
}

// SetDefaultPolicyVersion makes a version the policy's default.
func (r *Registry) SetDefaultPolicyVersion(name, versionID string) error {
	return r.do(func(now time.Time) error {
		p, ok := r.st.Policies[name]
		if !ok {
			return notFound("policy", name)
		}
		*p = copyPolicy(p)
		for _, v := range p.Versions {
			if v.ID == versionID {
				p.Document, p.DefaultVersionID, p.LastModifiedDate = v.Document, v.ID, now
				r.touch()
				r.logDecision("SetDefaultPolicyVersion", name, "default changed", "version", v.ID)
				return nil
			}
		}
		return notFound("policy version", name+"/"+versionID)
	})
}

// Event configuration types the lab knows
// (https://docs.aws.amazon.com/iot/latest/developerguide/iot-events.html).
var eventTypes = []string{"THING", "THING_GROUP", "THING_TYPE", "THING_GROUP_MEMBERSHIP", "THING_GROUP_HIERARCHY",
	"THING_TYPE_ASSOCIATION", "JOB", "JOB_EXECUTION", "POLICY", "CERTIFICATE", "CA_CERTIFICATE"}

// UpdateEventConfigurations enables or disables registry event types.
func (r *Registry) UpdateEventConfigurations(cfg map[string]bool) error {
	for k := range cfg {
		if !contains(eventTypes, k) {
			return invalid("eventConfigurations", "unknown event type %q (one of %s)", k, strings.Join(eventTypes, ", "))
		}
	}
	return r.do(func(time.Time) error {
		for k, v := range cfg {
			r.st.Events[k] = v
		}
		r.touch()
		r.logDecision("UpdateEventConfigurations", "account", "updated", "config", cfg)
		return nil
	})
}

// EventConfigurations returns every event type and whether it is enabled
// (all disabled until enabled, as in AWS).
func (r *Registry) EventConfigurations() map[string]bool {
	out := map[string]bool{}
	_ = r.do(func(time.Time) error {
		for _, k := range eventTypes {
			out[k] = r.st.Events[k]
		}
		return nil
	})
	return out
}

// EventEnabled reports whether an event type (e.g. "JOB_EXECUTION") is
// enabled. AWS publishes $aws/events/jobExecution/... only when it is
// (https://docs.aws.amazon.com/iot/latest/developerguide/events-jobs.html).
func (r *Registry) EventEnabled(typ string) bool {
	var on bool
	_ = r.do(func(time.Time) error { on = r.st.Events[typ]; return nil })
	return on
}
