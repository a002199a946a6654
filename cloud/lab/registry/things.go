package registry

import (
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/policy"
	"github.com/bootcert/bootcert/protocol"
)

var (
	policyNameRE = regexp.MustCompile(`^[\w+=,.@-]{1,128}$`)
	jobIDRE      = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)
	attrNameRE   = regexp.MustCompile(`^[a-zA-Z0-9_.,@/:#-]{1,128}$`)
	attrValueRE  = regexp.MustCompile(`^[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}$`)
)

func checkName(what, name string) error {
	if protocol.ValidThingName(name) != nil {
		return invalid(what, "%q is not a valid name: 1-128 characters of [a-zA-Z0-9:_-]", name)
	}
	return nil
}

// checkAttributes applies AWS's attribute limits: names and values by
// pattern, at most 3 attributes without a thing type and 50 with one
// (https://docs.aws.amazon.com/general/latest/gr/iot-core.html, "Thing
// attributes").
func checkAttributes(attrs map[string]string, typed bool) error {
	max := 3
	if typed {
		max = 50
	}
	if len(attrs) > max {
		return invalid("attributes", "%d attributes: at most %d (3 without a thing type, 50 with one)", len(attrs), max)
	}
	for k, v := range attrs {
		if !attrNameRE.MatchString(k) {
			return invalid("attributes", "attribute name %q is invalid", k)
		}
		if !attrValueRE.MatchString(v) {
			return invalid("attributes", "value of attribute %q is invalid", k)
		}
	}
	return nil
}

// nameFromARN accepts a name or an ARN of the given kind.
func nameFromARN(kind, s string) string {
	if strings.HasPrefix(s, "arn:") {
		if i := strings.Index(s, ":"+kind+"/"); i >= 0 {
			return s[i+len(kind)+2:]
		}
	}
	return s
}

// CreateThing creates a thing. The same name with the same configuration
// succeeds again; a different configuration is ResourceAlreadyExists
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CreateThing.html).
func (r *Registry) CreateThing(name, typeName string, attrs map[string]string) (Thing, error) {
	if err := checkName("thingName", name); err != nil {
		return Thing{}, err
	}
	if err := checkAttributes(attrs, typeName != ""); err != nil {
		return Thing{}, err
	}
	var out Thing
	err := r.do(func(now time.Time) error {
		if typeName != "" {
			tt, ok := r.st.ThingTypes[typeName]
			if !ok {
				return notFound("thing type", typeName)
			}
			if tt.Deprecated {
				return invalid("thingTypeName", "thing type %s is deprecated", typeName)
			}
		}
		if t, ok := r.st.Things[name]; ok {
			if t.TypeName == typeName && maps.Equal(t.Attributes, attrs) {
				out = copyThing(t)
				return nil
			}
			return newErr(CodeAlreadyExists, "thing "+name, "thing %s already exists with a different configuration", name)
		}
		t := &Thing{Name: name, ARN: r.ThingARN(name), ID: newUUID(), TypeName: typeName, Attributes: copyMap(attrs), Version: 1, Created: now}
		if t.Attributes == nil {
			t.Attributes = map[string]string{}
		}
		r.st.Things[name] = t
		r.touchRec(recThing, name)
		r.logDecision("CreateThing", name, "created", "type", typeName)
		out = copyThing(t)
		return nil
	})
	return out, err
}

// DescribeThing returns a thing.
func (r *Registry) DescribeThing(name string) (Thing, error) {
	return describe(r, r.st.Things, "thing", name, copyThing)
}

// ListThings lists things by name, optionally only those of one thing type.
func (r *Registry) ListThings(thingType string) ([]Thing, error) {
	var out []Thing
	err := r.do(func(time.Time) error {
		for _, name := range slices.Sorted(maps.Keys(r.st.Things)) {
			t := r.st.Things[name]
			if thingType != "" && t.TypeName != thingType {
				continue
			}
			out = append(out, copyThing(t))
		}
		return nil
	})
	return out, err
}

// UpdateThingInput is UpdateThing's input. Nil/false fields leave the thing
// unchanged.
type UpdateThingInput struct {
	Name            string
	TypeName        *string // "" with RemoveThingType semantics handled by RemoveThingType
	RemoveThingType bool
	Attributes      map[string]string // merged; an empty value removes the attribute
	Merge           bool              // false: Attributes replaces all attributes
	SetAttributes   bool              // Attributes was given
	ExpectedVersion *int64
}

// UpdateThing updates a thing's type and attributes; with ExpectedVersion
// set, a different current version is VersionConflict
// (https://docs.aws.amazon.com/iot/latest/apireference/API_UpdateThing.html).
func (r *Registry) UpdateThing(in UpdateThingInput) (Thing, error) {
	var out Thing
	err := r.do(func(now time.Time) error {
		t, ok := r.st.Things[in.Name]
		if !ok {
			return notFound("thing", in.Name)
		}
		if in.ExpectedVersion != nil && *in.ExpectedVersion != t.Version {
			return newErr(CodeVersionConflict, "thing "+in.Name, "expected version %d, current version is %d", *in.ExpectedVersion, t.Version)
		}
		typeName := t.TypeName
		if in.RemoveThingType {
			if in.TypeName != nil && *in.TypeName != "" {
				return invalid("removeThingType", "cannot both set thingTypeName and removeThingType")
			}
			typeName = ""
		} else if in.TypeName != nil && *in.TypeName != "" {
			if _, ok := r.st.ThingTypes[*in.TypeName]; !ok {
				return notFound("thing type", *in.TypeName)
			}
			typeName = *in.TypeName
		}
		attrs := copyMap(t.Attributes)
		if in.SetAttributes {
			if !in.Merge {
				attrs = map[string]string{}
			}
			for k, v := range in.Attributes {
				if v == "" {
					delete(attrs, k)
				} else {
					attrs[k] = v
				}
			}
		}
		if err := checkAttributes(attrs, typeName != ""); err != nil {
			return err
		}
		t.TypeName, t.Attributes = typeName, attrs
		t.Version++
		r.touchRec(recThing, in.Name)
		r.logDecision("UpdateThing", in.Name, "updated", "version", t.Version)
		out = copyThing(t)
		return nil
	})
	return out, err
}

// DeleteThing deletes a thing; deleting a thing that does not exist
// succeeds (https://docs.aws.amazon.com/iot/latest/apireference/API_DeleteThing.html).
// A thing with principals attached is InvalidRequest: detach them first.
// Its group memberships and job executions go with it.
func (r *Registry) DeleteThing(name string, expectedVersion *int64) error {
	return r.do(func(now time.Time) error {
		t, ok := r.st.Things[name]
		if !ok {
			return nil
		}
		if expectedVersion != nil && *expectedVersion != t.Version {
			return newErr(CodeVersionConflict, "thing "+name, "expected version %d, current version is %d", *expectedVersion, t.Version)
		}
		if len(r.st.ThingPrincipals[name]) > 0 {
			return invalid("thing "+name, "thing has principals attached: detach them first (DetachThingPrincipal)")
		}
		for g, m := range r.st.Members {
			if m[name] {
				removeFromSet(r.st.Members, g, name)
				r.emit(ThingGroupMembershipChanged{Group: g, Thing: name, Added: false})
			}
		}
		for _, execs := range r.st.Execs[name] {
			for _, e := range execs {
				delete(r.timed, e)
			}
		}
		delete(r.st.Execs, name)
		delete(r.st.Things, name)
		r.touch()
		r.logDecision("DeleteThing", name, "deleted")
		return nil
	})
}

// CreateThingType creates a thing type; the same name again succeeds
// (returns the existing type).
func (r *Registry) CreateThingType(name, description string, searchable []string) (ThingType, error) {
	if err := checkName("thingTypeName", name); err != nil {
		return ThingType{}, err
	}
	if len(searchable) > 3 {
		return ThingType{}, invalid("searchableAttributes", "at most 3")
	}
	var out ThingType
	err := r.do(func(now time.Time) error {
		if tt, ok := r.st.ThingTypes[name]; ok {
			if tt.Description != description {
				return newErr(CodeAlreadyExists, "thingtype "+name, "thing type %s already exists with a different configuration", name)
			}
			out = *tt
			return nil
		}
		tt := &ThingType{Name: name, ARN: r.arn("thingtype", name), ID: newUUID(), Description: description,
			SearchableAttributes: append([]string(nil), searchable...), CreationDate: now}
		r.st.ThingTypes[name] = tt
		r.touch()
		r.logDecision("CreateThingType", name, "created")
		out = *tt
		return nil
	})
	return out, err
}

// DescribeThingType returns a thing type.
func (r *Registry) DescribeThingType(name string) (ThingType, error) {
	return describe(r, r.st.ThingTypes, "thing type", name, nil)
}

// Thing group quotas (https://docs.aws.amazon.com/general/latest/gr/iot-core.html,
// "Thing group" quotas: a thing belongs to at most 10 static groups; a
// hierarchy is at most 7 levels deep).
const (
	MaxGroupsPerThing = 10
	MaxGroupDepth     = 7
)

// CreateThingGroup creates a static thing group; the same name with the same
// configuration succeeds again.
func (r *Registry) CreateThingGroup(name, parent, description string, attrs map[string]string) (ThingGroup, error) {
	if err := checkName("thingGroupName", name); err != nil {
		return ThingGroup{}, err
	}
	var out ThingGroup
	err := r.do(func(now time.Time) error {
		if parent != "" {
			if _, ok := r.st.Groups[parent]; !ok {
				// CreateThingGroup has no ResourceNotFoundException.
				return invalid("parentGroupName", "parent thing group %s does not exist", parent)
			}
			depth := 1
			for cur := parent; cur != "" && depth <= MaxGroupDepth; depth++ {
				cur = r.st.Groups[cur].ParentGroupName
			}
			if depth > MaxGroupDepth {
				return invalid("parentGroupName", "a thing group hierarchy is at most %d levels deep", MaxGroupDepth)
			}
		}
		if g, ok := r.st.Groups[name]; ok {
			if g.ParentGroupName != parent || g.Description != description {
				return newErr(CodeAlreadyExists, "thinggroup "+name, "thing group %s already exists with a different configuration", name)
			}
			out = *g
			return nil
		}
		g := &ThingGroup{Name: name, ARN: r.ThingGroupARN(name), ID: newUUID(), Description: description,
			Attributes: copyMap(attrs), ParentGroupName: parent, Version: 1, CreationDate: now, LastModifiedDate: now}
		r.st.Groups[name] = g
		r.touch()
		r.logDecision("CreateThingGroup", name, "created", "parent", parent)
		out = *g
		return nil
	})
	return out, err
}

// DescribeThingGroup returns a thing group.
func (r *Registry) DescribeThingGroup(name string) (ThingGroup, error) {
	var out ThingGroup
	err := r.do(func(time.Time) error {
		g, ok := r.st.Groups[name]
		if !ok {
			return notFound("thing group", name)
		}
		out = *g
		out.Attributes = copyMap(g.Attributes)
		return nil
	})
	return out, err
}

// AddThingToThingGroup adds a thing (name or ARN) to a group (name or ARN).
// Joining queues an execution of every in-progress continuous job targeting
// the group (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-concepts-continuous.html).
// Adding a member again succeeds and changes nothing.
func (r *Registry) AddThingToThingGroup(group, thing string) error {
	group, thing = nameFromARN("thinggroup", group), nameFromARN("thing", thing)
	return r.do(func(now time.Time) error {
		if _, ok := r.st.Groups[group]; !ok {
			return notFound("thing group", group)
		}
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		if r.st.Members[group][thing] {
			return nil
		}
		n := 0
		for _, m := range r.st.Members {
			if m[thing] {
				n++
			}
		}
		if n >= MaxGroupsPerThing {
			return invalid("thing "+thing, "thing is in %d thing groups already, the maximum", n)
		}
		addToSet(r.st.Members, group, thing)
		r.touchRec(recMembers, group)
		r.logDecision("AddThingToThingGroup", thing, "joined", "group", group)
		r.emit(ThingGroupMembershipChanged{Group: group, Thing: thing, Added: true})
		for _, id := range slices.Sorted(maps.Keys(r.st.Jobs)) {
			j := r.st.Jobs[id]
			if j.TargetSelection == TargetContinuous && j.Status == JobInProgress && r.targetsLocked(j, thing) {
				r.queueLocked(j, thing, now)
			}
		}
		return nil
	})
}

// RemoveThingFromThingGroup removes a thing from a group. QUEUED executions
// of continuous jobs that no longer target the thing become REMOVED;
// IN_PROGRESS ones continue
// (https://docs.aws.amazon.com/iot/latest/developerguide/jobs-concepts-continuous.html).
func (r *Registry) RemoveThingFromThingGroup(group, thing string) error {
	group, thing = nameFromARN("thinggroup", group), nameFromARN("thing", thing)
	return r.do(func(now time.Time) error {
		if _, ok := r.st.Groups[group]; !ok {
			return notFound("thing group", group)
		}
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		if !removeFromSet(r.st.Members, group, thing) {
			return nil
		}
		r.touchRec(recMembers, group)
		r.logDecision("RemoveThingFromThingGroup", thing, "left", "group", group)
		r.emit(ThingGroupMembershipChanged{Group: group, Thing: thing, Added: false})
		r.dropUntargetedLocked(thing, now)
		return nil
	})
}

// ListThingGroupsForThing lists the groups a thing is a direct member of.
func (r *Registry) ListThingGroupsForThing(thing string) ([]ThingGroup, error) {
	var out []ThingGroup
	err := r.do(func(time.Time) error {
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		for _, g := range slices.Sorted(maps.Keys(r.st.Members)) {
			if r.st.Members[g][thing] {
				out = append(out, *r.st.Groups[g])
			}
		}
		return nil
	})
	return out, err
}

// ListThingsInThingGroup lists a group's things; recursive includes child
// groups.
func (r *Registry) ListThingsInThingGroup(group string, recursive bool) ([]string, error) {
	var out []string
	err := r.do(func(time.Time) error {
		if _, ok := r.st.Groups[group]; !ok {
			return notFound("thing group", group)
		}
		seen := map[string]bool{}
		var walk func(g string)
		walk = func(g string) {
			for t := range r.st.Members[g] {
				seen[t] = true
			}
			if recursive {
				for _, c := range r.st.Groups {
					if c.ParentGroupName == g {
						walk(c.Name)
					}
				}
			}
		}
		walk(group)
		out = sortedOrEmpty(seen)
		return nil
	})
	return out, err
}

// groupsOfLocked returns the groups thing belongs to, directly or through
// parent groups.
func (r *Registry) groupsOfLocked(thing string) map[string]bool {
	out := map[string]bool{}
	for g, m := range r.st.Members {
		if m[thing] {
			for cur := g; cur != "" && !out[cur]; {
				out[cur] = true
				if grp := r.st.Groups[cur]; grp != nil {
					cur = grp.ParentGroupName
				} else {
					cur = ""
				}
			}
		}
	}
	return out
}

// principalExistsLocked: certificates are the only principals the lab knows.
func (r *Registry) principalExistsLocked(arn string) bool {
	id := nameFromARN("cert", arn)
	c, ok := r.st.Certs[id]
	return ok && c.ARN == arn
}

// Thing-principal relation types of AttachThingPrincipal
// (https://docs.aws.amazon.com/iot/latest/apireference/API_AttachThingPrincipal.html).
const (
	ExclusiveThing    = "EXCLUSIVE_THING"
	NonExclusiveThing = "NON_EXCLUSIVE_THING"
)

// AttachThingPrincipal attaches a principal (certificate ARN) to a thing.
// typ is "" or NON_EXCLUSIVE_THING (the default: the principal may be
// attached to other things too) or EXCLUSIVE_THING ("the thing will be the
// only thing that's attached to the principal", AWS's
// API_AttachThingPrincipal.html): attaching an exclusively attached
// principal to another thing, or attaching exclusively a principal already
// attached to another thing, is InvalidRequest. Attaching again to the same
// thing succeeds.
func (r *Registry) AttachThingPrincipal(thing, principal string, typ ...string) error {
	t := NonExclusiveThing
	if len(typ) > 0 && typ[0] != "" {
		t = typ[0]
	}
	if t != ExclusiveThing && t != NonExclusiveThing {
		return invalid("thingPrincipalType", "%q is not EXCLUSIVE_THING or NON_EXCLUSIVE_THING", t)
	}
	return r.do(func(now time.Time) error {
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		if !r.principalExistsLocked(principal) {
			return notFound("principal", principal)
		}
		if owner, ok := r.st.Exclusive[principal]; ok && owner != thing {
			return invalid("principal "+principal, "the principal is attached exclusively to thing %s (EXCLUSIVE_THING)", owner)
		}
		if t == ExclusiveThing {
			for other := range r.byPrinc[principal] {
				if other != thing {
					return invalid("principal "+principal, "the principal is attached to thing %s: it cannot be attached exclusively to %s", other, thing)
				}
			}
			r.st.Exclusive[principal] = thing
			r.touchRec(recExclusive, principal)
		}
		if addToSet(r.st.ThingPrincipals, thing, principal) {
			addToSet(r.byPrinc, principal, thing)
			r.touchRec(recThingPrincipals, thing)
			r.logDecision("AttachThingPrincipal", thing, "attached", "principal", principal)
		}
		return nil
	})
}

// DetachThingPrincipal detaches a principal from a thing.
func (r *Registry) DetachThingPrincipal(thing, principal string) error {
	return r.do(func(now time.Time) error {
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		if removeFromSet(r.st.ThingPrincipals, thing, principal) {
			removeFromSet(r.byPrinc, principal, thing)
			if r.st.Exclusive[principal] == thing {
				delete(r.st.Exclusive, principal)
			}
			r.touch()
			r.logDecision("DetachThingPrincipal", thing, "detached", "principal", principal)
		}
		return nil
	})
}

// ListThingPrincipals lists the principal ARNs attached to a thing.
func (r *Registry) ListThingPrincipals(thing string) ([]string, error) {
	var out []string
	err := r.do(func(time.Time) error {
		if _, ok := r.st.Things[thing]; !ok {
			return notFound("thing", thing)
		}
		out = sortedOrEmpty(r.st.ThingPrincipals[thing])
		return nil
	})
	return out, err
}

// ListPrincipalThings lists the things a principal is attached to.
func (r *Registry) ListPrincipalThings(principal string) ([]string, error) {
	var out []string
	err := r.do(func(time.Time) error {
		if !r.principalExistsLocked(principal) {
			return notFound("principal", principal)
		}
		out = sortedOrEmpty(r.byPrinc[principal])
		return nil
	})
	return out, err
}

// CreatePolicy creates a policy (version "1"). The document must be a JSON
// object; the policy evaluator (cloud/lab/policy) judges its statements.
func (r *Registry) CreatePolicy(name, document string) (Policy, error) {
	if !policyNameRE.MatchString(name) {
		return Policy{}, invalid("policyName", "%q is not a valid policy name: 1-128 characters of [\\w+=,.@-]", name)
	}
	if err := checkPolicyDocument(document); err != nil {
		return Policy{}, err
	}
	var out Policy
	err := r.do(func(now time.Time) error {
		if _, ok := r.st.Policies[name]; ok {
			return newErr(CodeAlreadyExists, "policy "+name, "policy %s already exists", name)
		}
		p := &Policy{Name: name, ARN: r.arn("policy", name), Document: document, DefaultVersionID: "1",
			Versions:     []PolicyVersion{{ID: "1", Document: document, CreateDate: now}},
			CreationDate: now, LastModifiedDate: now, GenerationID: newUUID()}
		r.st.Policies[name] = p
		r.touch()
		r.logDecision("CreatePolicy", name, "created")
		out = *p
		return nil
	})
	return out, err
}

// MaxPolicyDocument is AWS's policy document size limit (2048 characters
// excluding white space; https://docs.aws.amazon.com/general/latest/gr/iot-core.html).
const MaxPolicyDocument = policy.MaxDocumentSize

func checkPolicyDocument(doc string) error {
	// The grammar the broker enforces (cloud/lab/policy), so that a policy
	// the lab accepts is one it can evaluate; AWS answers
	// MalformedPolicyException for a document it cannot parse.
	if _, err := policy.Parse([]byte(doc)); err != nil {
		return newErr(CodeMalformedPolicy, "policyDocument", "%v", err)
	}
	return nil
}

// GetPolicy returns a policy.
func (r *Registry) GetPolicy(name string) (Policy, error) {
	return describe(r, r.st.Policies, "policy", name, copyPolicy)
}

// AttachPolicy attaches a policy to a target: a certificate ARN or a thing
// group ARN.
func (r *Registry) AttachPolicy(name, target string) error {
	return r.do(func(now time.Time) error {
		if _, ok := r.st.Policies[name]; !ok {
			return notFound("policy", name)
		}
		if !r.targetExistsLocked(target) {
			return notFound("target", target)
		}
		if addToSet(r.st.PolicyTargets, name, target) {
			r.touchRec(recPolicyTargets, name)
			r.logDecision("AttachPolicy", name, "attached", "target", target)
		}
		return nil
	})
}

func (r *Registry) targetExistsLocked(target string) bool {
	if r.principalExistsLocked(target) {
		return true
	}
	g := nameFromARN("thinggroup", target)
	grp, ok := r.st.Groups[g]
	return ok && grp.ARN == target
}

// DetachPolicy detaches a policy from a target.
func (r *Registry) DetachPolicy(name, target string) error {
	return r.do(func(now time.Time) error {
		if _, ok := r.st.Policies[name]; !ok {
			return notFound("policy", name)
		}
		if removeFromSet(r.st.PolicyTargets, name, target) {
			r.touch()
			r.logDecision("DetachPolicy", name, "detached", "target", target)
		}
		return nil
	})
}

// ListAttachedPolicies lists the policies attached to target. With
// recursive and a thing group target, the parent groups' policies too.
func (r *Registry) ListAttachedPolicies(target string, recursive bool) ([]Policy, error) {
	var out []Policy
	err := r.do(func(time.Time) error {
		if !r.targetExistsLocked(target) {
			return notFound("target", target)
		}
		targets := map[string]bool{target: true}
		if recursive {
			if g, ok := r.st.Groups[nameFromARN("thinggroup", target)]; ok {
				for cur := g.ParentGroupName; cur != "" && !targets[r.ThingGroupARN(cur)]; {
					targets[r.ThingGroupARN(cur)] = true
					if p := r.st.Groups[cur]; p != nil {
						cur = p.ParentGroupName
					} else {
						cur = ""
					}
				}
			}
		}
		for _, p := range slices.Sorted(maps.Keys(r.st.PolicyTargets)) {
			for t := range targets {
				if r.st.PolicyTargets[p][t] {
					out = append(out, *r.st.Policies[p])
					break
				}
			}
		}
		return nil
	})
	return out, err
}

// EffectivePolicies returns the policies that apply to a connection
// authenticated with certificate certID whose client ID is thing: those
// attached to the certificate, plus those attached to the groups (and their
// parents) of thing when thing is attached to the certificate
// (https://docs.aws.amazon.com/iot/latest/developerguide/thing-groups.html,
// "policies attached to a thing group apply to things in the group" when the
// client ID matches the thing name). For the broker's policy evaluator.
func (r *Registry) EffectivePolicies(certID, thing string) []Policy {
	var out []Policy
	_ = r.do(func(time.Time) error {
		carn := r.CertificateARN(certID)
		targets := map[string]bool{carn: true}
		if thing != "" && r.st.ThingPrincipals[thing][carn] {
			for g := range r.groupsOfLocked(thing) {
				targets[r.ThingGroupARN(g)] = true
			}
		}
		for _, p := range slices.Sorted(maps.Keys(r.st.PolicyTargets)) {
			for t := range targets {
				if r.st.PolicyTargets[p][t] {
					out = append(out, *r.st.Policies[p])
					break
				}
			}
		}
		return nil
	})
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sortedOrEmpty returns m's keys sorted, and an empty list (which marshals
// as [], where slices.Sorted's nil would be null) when there are none.
func sortedOrEmpty(m map[string]bool) []string {
	if len(m) == 0 {
		return []string{}
	}
	return slices.Sorted(maps.Keys(m))
}
