package registry

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/bootcert/bootcert/protocol"
)

// CancelJob cancels a job: QUEUED executions become CANCELED, and with
// force IN_PROGRESS ones too
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CancelJob.html:
// "If true job executions with status "IN_PROGRESS" and "QUEUED" are
// canceled, otherwise only job executions with status "QUEUED" are
// canceled"). A job that is not IN_PROGRESS is InvalidRequest (the
// only error of CancelJob that fits).
func (r *Registry) CancelJob(jobID string, force bool, comment, reasonCode string) (Job, error) {
	var out Job
	err := r.do(func(now time.Time) error {
		j, ok := r.st.Jobs[jobID]
		if !ok {
			return notFound("job", jobID)
		}
		if j.Status != JobInProgress {
			return invalid("job "+jobID, "job %s is %s, only an IN_PROGRESS job can be canceled", jobID, j.Status)
		}
		j.Status, j.ForceCanceled, j.Comment, j.ReasonCode, j.LastUpdatedAt = JobCanceled, force, comment, reasonCode, now
		r.touch()
		r.logDecision("CancelJob", jobID, "canceled", "force", force)
		for _, thing := range slices.Sorted(maps.Keys(r.st.Execs)) {
			execs := r.st.Execs[thing][jobID]
			if len(execs) == 0 {
				continue
			}
			e := execs[len(execs)-1]
			if e.Status == protocol.JobQueued || (force && e.Status == protocol.JobInProgress) {
				e.ForceCanceled = e.Status == protocol.JobInProgress
				r.setStatusLocked(j, e, protocol.JobCanceled, now)
			}
		}
		out = copyJob(j)
		return nil
	})
	return out, err
}

// ListJobs lists jobs by ID, optionally filtered by status, target
// selection and a target thing group.
func (r *Registry) ListJobs(status, targetSelection, thingGroup string) []Job {
	var out []Job
	_ = r.do(func(time.Time) error {
		garn := ""
		if thingGroup != "" {
			garn = r.ThingGroupARN(thingGroup)
		}
		for _, id := range slices.Sorted(maps.Keys(r.st.Jobs)) {
			j := r.st.Jobs[id]
			if (status == "" || j.Status == status) && (targetSelection == "" || j.TargetSelection == targetSelection) &&
				(garn == "" || contains(j.Targets, garn)) {
				out = append(out, copyJob(j))
			}
		}
		return nil
	})
	return out
}

// ListCertificates lists certificates by creation date (then ID); caID
// filters by issuing CA when not empty.
func (r *Registry) ListCertificates(caID string) []Certificate {
	var out []Certificate
	_ = r.do(func(time.Time) error {
		for _, id := range slices.Sorted(maps.Keys(r.st.Certs)) {
			c := r.st.Certs[id]
			if caID == "" || c.CACertificateID == caID {
				out = append(out, *c)
			}
		}
		return nil
	})
	sortByTime(out, func(c Certificate) time.Time { return c.CreationDate })
	return out
}

func sortByTime[T any](l []T, at func(T) time.Time) {
	// insertion into a stable order: IDs are already sorted
	for i := 1; i < len(l); i++ {
		for k := i; k > 0 && at(l[k]).Before(at(l[k-1])); k-- {
			l[k], l[k-1] = l[k-1], l[k]
		}
	}
}

// ListPolicies lists policies by name.
func (r *Registry) ListPolicies() []Policy {
	var out []Policy
	_ = r.do(func(time.Time) error {
		for _, k := range slices.Sorted(maps.Keys(r.st.Policies)) {
			out = append(out, copyPolicy(r.st.Policies[k]))
		}
		return nil
	})
	return out
}

// DeletePolicy deletes a policy that has no other version than the default
// and no attachment
// (https://docs.aws.amazon.com/iot/latest/apireference/API_DeletePolicy.html:
// DeleteConflictException otherwise).
func (r *Registry) DeletePolicy(name string) error {
	return r.do(func(time.Time) error {
		p, ok := r.st.Policies[name]
		if !ok {
			return notFound("policy", name)
		}
		if n := len(copyPolicy(p).Versions); n > 1 {
			return newErr(CodeDeleteConflict, "policy "+name, "policy %s has %d versions: delete the non-default versions first (DeletePolicyVersion)", name, n)
		}
		if ts := slices.Sorted(maps.Keys(r.st.PolicyTargets[name])); len(ts) > 0 {
			return newErr(CodeDeleteConflict, "policy "+name, "policy %s is attached to %s: detach it first (DetachPolicy)", name, ts[0])
		}
		delete(r.st.Policies, name)
		r.touch()
		r.logDecision("DeletePolicy", name, "deleted")
		return nil
	})
}

// ListPolicyVersions lists a policy's versions.
func (r *Registry) ListPolicyVersions(name string) (Policy, error) {
	return describe(r, r.st.Policies, "policy", name, copyPolicy)
}

// DeletePolicyVersion deletes a version that is not the default
// (DeleteConflictException for the default one).
func (r *Registry) DeletePolicyVersion(name, versionID string) error {
	return r.do(func(now time.Time) error {
		p, ok := r.st.Policies[name]
		if !ok {
			return notFound("policy", name)
		}
		*p = copyPolicy(p)
		if versionID == p.DefaultVersionID {
			return newErr(CodeDeleteConflict, "policy "+name, "version %s is the default version: make another one the default first", versionID)
		}
		for i, v := range p.Versions {
			if v.ID == versionID {
				p.Versions = append(p.Versions[:i], p.Versions[i+1:]...)
				p.LastModifiedDate = now
				r.touch()
				r.logDecision("DeletePolicyVersion", name, "deleted", "version", versionID)
				return nil
			}
		}
		return notFound("policy version", name+"/"+versionID)
	})
}

// ListThingGroups lists groups by name: all, or the children of parent
// (recursive: all descendants), optionally by name prefix.
func (r *Registry) ListThingGroups(parent, prefix string, recursive bool) []ThingGroup {
	var out []ThingGroup
	_ = r.do(func(time.Time) error {
		for _, k := range slices.Sorted(maps.Keys(r.st.Groups)) {
			g := r.st.Groups[k]
			if !strings.HasPrefix(g.Name, prefix) {
				continue
			}
			if parent != "" {
				under := g.ParentGroupName == parent
				if recursive {
					for cur := g.ParentGroupName; cur != "" && !under; {
						if cur == parent {
							under = true
						} else if pg := r.st.Groups[cur]; pg != nil {
							cur = pg.ParentGroupName
						} else {
							cur = ""
						}
					}
				}
				if !under {
					continue
				}
			}
			out = append(out, *g)
		}
		return nil
	})
	return out
}

// DeleteThingGroup deletes a group without child groups; its things leave
// it (with the effects of RemoveThingFromThingGroup) and its policy
// attachments go. A group that does not exist is not an error, like
// DeleteThing.
func (r *Registry) DeleteThingGroup(name string, expectedVersion *int64) error {
	return r.do(func(now time.Time) error {
		g, ok := r.st.Groups[name]
		if !ok {
			return nil
		}
		if expectedVersion != nil && *expectedVersion != g.Version {
			return newErr(CodeVersionConflict, "thinggroup "+name, "expected version %d, current version is %d", *expectedVersion, g.Version)
		}
		for _, c := range r.st.Groups {
			if c.ParentGroupName == name {
				return invalid("thinggroup "+name, "thing group has child group %s: delete it first", c.Name)
			}
		}
		members := slices.Sorted(maps.Keys(r.st.Members[name]))
		delete(r.st.Members, name)
		delete(r.st.Groups, name)
		for p := range r.st.PolicyTargets {
			removeFromSet(r.st.PolicyTargets, p, g.ARN)
		}
		r.touch()
		r.logDecision("DeleteThingGroup", name, "deleted", "members", len(members))
		for _, thing := range members {
			r.emit(ThingGroupMembershipChanged{Group: name, Thing: thing, Added: false})
			r.dropUntargetedLocked(thing, now)
		}
		return nil
	})
}

// dropUntargetedLocked removes the QUEUED executions of continuous jobs
// that no longer target thing.
func (r *Registry) dropUntargetedLocked(thing string, now time.Time) {
	for _, jobID := range slices.Sorted(maps.Keys(r.st.Execs[thing])) {
		execs := r.st.Execs[thing][jobID]
		j := r.st.Jobs[jobID]
		if j == nil || j.TargetSelection != TargetContinuous || r.targetsLocked(j, thing) {
			continue
		}
		if e := execs[len(execs)-1]; e.Status == protocol.JobQueued {
			r.setStatusLocked(j, e, protocol.JobRemoved, now)
		}
	}
}
