package api

import (
	"sort"
	"strconv"
	"strings"

	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/protocol"
)

// table lists the operations, as service/iot v1.75.0 serializes them
// (method and path of each awsRestjson1_serializeOp*).
func (s *Server) table() []route {
	return []route{
		r("GET", "/registrationcode", "GetRegistrationCode", s.getRegistrationCode),
		r("POST", "/cacertificate", "RegisterCACertificate", s.registerCACertificate),
		r("GET", "/cacertificate/{certificateId}", "DescribeCACertificate", s.describeCACertificate),
		r("PUT", "/cacertificate/{certificateId}", "UpdateCACertificate", s.updateCACertificate),
		r("DELETE", "/cacertificate/{certificateId}", "DeleteCACertificate", s.deleteCACertificate),
		r("POST", "/certificates", "CreateCertificateFromCsr", s.createCertificateFromCsr),
		r("GET", "/certificates/{certificateId}", "DescribeCertificate", s.describeCertificate),
		r("PUT", "/certificates/{certificateId}", "UpdateCertificate", s.updateCertificate),
		r("DELETE", "/certificates/{certificateId}", "DeleteCertificate", s.deleteCertificate),
		r("POST", "/certificate/register", "RegisterCertificate", s.registerCertificate),
		r("POST", "/certificate/register-no-ca", "RegisterCertificateWithoutCA", s.registerCertificateWithoutCA),
		r("POST", "/things/{thingName}", "CreateThing", s.createThing),
		r("GET", "/things/{thingName}", "DescribeThing", s.describeThing),
		r("GET", "/things", "ListThings", s.listThings),
		r("PATCH", "/things/{thingName}", "UpdateThing", s.updateThing),
		r("DELETE", "/things/{thingName}", "DeleteThing", s.deleteThing),
		r("PUT", "/things/{thingName}/principals", "AttachThingPrincipal", s.attachThingPrincipal),
		r("DELETE", "/things/{thingName}/principals", "DetachThingPrincipal", s.detachThingPrincipal),
		r("GET", "/things/{thingName}/principals", "ListThingPrincipals", s.listThingPrincipals),
		r("GET", "/principals/things", "ListPrincipalThings", s.listPrincipalThings),
		r("POST", "/policies/{policyName}", "CreatePolicy", s.createPolicy),
		r("GET", "/policies/{policyName}", "GetPolicy", s.getPolicy),
		r("POST", "/policies/{policyName}/version", "CreatePolicyVersion", s.createPolicyVersion),
		r("PATCH", "/policies/{policyName}/version/{policyVersionId}", "SetDefaultPolicyVersion", s.setDefaultPolicyVersion),
		r("GET", "/cacertificates", "ListCACertificates", s.listCACertificates),
		r("GET", "/jobs/{jobId}/job-document", "GetJobDocument", s.getJobDocument),
		r("PATCH", "/event-configurations", "UpdateEventConfigurations", s.updateEventConfigurations),
		r("GET", "/event-configurations", "DescribeEventConfigurations", s.describeEventConfigurations),
		r("PUT", "/target-policies/{policyName}", "AttachPolicy", s.attachPolicy),
		r("POST", "/target-policies/{policyName}", "DetachPolicy", s.detachPolicy),
		r("POST", "/attached-policies/{target}", "ListAttachedPolicies", s.listAttachedPolicies),
		r("POST", "/thing-types/{thingTypeName}", "CreateThingType", s.createThingType),
		r("GET", "/thing-types/{thingTypeName}", "DescribeThingType", s.describeThingType),
		r("PUT", "/thing-groups/addThingToThingGroup", "AddThingToThingGroup", s.addThingToThingGroup),
		r("PUT", "/thing-groups/removeThingFromThingGroup", "RemoveThingFromThingGroup", s.removeThingFromThingGroup),
		r("POST", "/thing-groups/{thingGroupName}", "CreateThingGroup", s.createThingGroup),
		r("GET", "/thing-groups/{thingGroupName}", "DescribeThingGroup", s.describeThingGroup),
		r("GET", "/things/{thingName}/thing-groups", "ListThingGroupsForThing", s.listThingGroupsForThing),
		r("GET", "/thing-groups/{thingGroupName}/things", "ListThingsInThingGroup", s.listThingsInThingGroup),
		r("PUT", "/jobs/{jobId}", "CreateJob", s.createJob),
		r("GET", "/jobs/{jobId}", "DescribeJob", s.describeJob),
		r("GET", "/things/{thingName}/jobs/{jobId}", "DescribeJobExecution", s.describeJobExecution),
		r("GET", "/things/{thingName}/jobs", "ListJobExecutionsForThing", s.listJobExecutionsForThing),
		r("PUT", "/things/{thingName}/jobs/{jobId}/cancel", "CancelJobExecution", s.cancelJobExecution),
		r("GET", "/endpoint", "DescribeEndpoint", s.describeEndpoint),
		r("PUT", "/jobs/{jobId}/cancel", "CancelJob", s.cancelJob),
		r("GET", "/jobs", "ListJobs", s.listJobs),
		r("GET", "/certificates", "ListCertificates", s.listCertificates),
		r("GET", "/certificates-by-ca/{caCertificateId}", "ListCertificatesByCA", s.listCertificates),
		r("GET", "/policies", "ListPolicies", s.listPolicies),
		r("DELETE", "/policies/{policyName}", "DeletePolicy", s.deletePolicy),
		r("GET", "/policies/{policyName}/version", "ListPolicyVersions", s.listPolicyVersions),
		r("DELETE", "/policies/{policyName}/version/{policyVersionId}", "DeletePolicyVersion", s.deletePolicyVersion),
		r("GET", "/thing-groups", "ListThingGroups", s.listThingGroups),
		r("DELETE", "/thing-groups/{thingGroupName}", "DeleteThingGroup", s.deleteThingGroup),
		r("POST", "/topics/{topic+}", "Publish", s.publish),
	}
}

func (s *Server) getRegistrationCode(q *request) (any, error) {
	return map[string]string{"registrationCode": s.reg.RegistrationCode()}, nil
}

type validity struct {
	NotBefore *float64 `json:"notBefore,omitempty"`
	NotAfter  *float64 `json:"notAfter,omitempty"`
}

func (s *Server) registerCACertificate(q *request) (any, error) {
	var in struct {
		CACertificate           string `json:"caCertificate"`
		VerificationCertificate string `json:"verificationCertificate"`
		CertificateMode         string `json:"certificateMode"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CACertificate == "" {
		return nil, errInvalid("caCertificate is required")
	}
	active, err := q.boolQuery("setAsActive")
	if err != nil {
		return nil, err
	}
	auto, err := q.boolQuery("allowAutoRegistration")
	if err != nil {
		return nil, err
	}
	c, err := s.reg.RegisterCACertificate(registry.RegisterCAInput{CACertificatePEM: in.CACertificate,
		VerificationCertificatePEM: in.VerificationCertificate, SetAsActive: active, AllowAutoRegistration: auto,
		CertificateMode: in.CertificateMode})
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return map[string]string{"certificateArn": c.ARN, "certificateId": c.ID}, nil
}

func (s *Server) describeCACertificate(q *request) (any, error) {
	c, err := s.reg.DescribeCACertificate(q.v("certificateId"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"certificateDescription": map[string]any{
		"certificateArn": c.ARN, "certificateId": c.ID, "status": c.Status, "certificatePem": c.PEM,
		"ownedBy": c.OwnedBy, "creationDate": epoch(c.CreationDate), "autoRegistrationStatus": c.AutoRegistrationStatus,
		"lastModifiedDate": epoch(c.LastModifiedDate), "customerVersion": 1, "generationId": c.GenerationID,
		"validity": validity{epoch(c.NotBefore), epoch(c.NotAfter)}, "certificateMode": c.CertificateMode,
	}}, nil
}

func (s *Server) updateCACertificate(q *request) (any, error) {
	return nil, s.reg.UpdateCACertificate(q.v("certificateId"), q.query.Get("newStatus"), q.query.Get("newAutoRegistrationStatus"))
}

func (s *Server) deleteCACertificate(q *request) (any, error) {
	return nil, s.reg.DeleteCACertificate(q.v("certificateId"))
}

func (s *Server) createCertificateFromCsr(q *request) (any, error) {
	var in struct {
		CSR string `json:"certificateSigningRequest"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CSR == "" {
		return nil, errInvalid("certificateSigningRequest is required")
	}
	active, err := q.boolQuery("setAsActive")
	if err != nil {
		return nil, err
	}
	c, err := s.reg.CreateCertificateFromCsr(in.CSR, active)
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return map[string]string{"certificateArn": c.ARN, "certificateId": c.ID, "certificatePem": c.PEM}, nil
}

func (s *Server) describeCertificate(q *request) (any, error) {
	c, err := s.reg.DescribeCertificate(q.v("certificateId"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"certificateDescription": map[string]any{
		"certificateArn": c.ARN, "certificateId": c.ID, "caCertificateId": strPtr(c.CACertificateID), "status": c.Status,
		"certificatePem": c.PEM, "ownedBy": c.OwnedBy, "creationDate": epoch(c.CreationDate),
		"lastModifiedDate": epoch(c.LastModifiedDate), "customerVersion": 1, "generationId": c.GenerationID,
		"validity": validity{epoch(c.NotBefore), epoch(c.NotAfter)}, "certificateMode": c.CertificateMode,
	}}, nil
}

func (s *Server) updateCertificate(q *request) (any, error) {
	st := q.query.Get("newStatus")
	if st == "" {
		return nil, errInvalid("newStatus is required")
	}
	return nil, s.reg.UpdateCertificate(q.v("certificateId"), st)
}

func (s *Server) deleteCertificate(q *request) (any, error) {
	force, err := q.boolQuery("forceDelete")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.DeleteCertificate(q.v("certificateId"), force)
}

func (s *Server) registerCertificate(q *request) (any, error) {
	var in struct {
		CertificatePem   string `json:"certificatePem"`
		CACertificatePem string `json:"caCertificatePem"`
		Status           string `json:"status"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CertificatePem == "" {
		return nil, errInvalid("certificatePem is required")
	}
	if in.Status == "" {
		// Deprecated setAsActive query parameter.
		if active, err := q.boolQuery("setAsActive"); err != nil {
			return nil, err
		} else if active {
			in.Status = registry.StatusActive
		}
	}
	c, err := s.reg.RegisterCertificate(in.CertificatePem, in.CACertificatePem, in.Status)
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return map[string]string{"certificateArn": c.ARN, "certificateId": c.ID}, nil
}

func (s *Server) registerCertificateWithoutCA(q *request) (any, error) {
	var in struct {
		CertificatePem string `json:"certificatePem"`
		Status         string `json:"status"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.CertificatePem == "" {
		return nil, errInvalid("certificatePem is required")
	}
	c, err := s.reg.RegisterCertificateWithoutCA(in.CertificatePem, in.Status)
	if err != nil {
		return nil, err
	}
	q.res = c.ID
	return map[string]string{"certificateArn": c.ARN, "certificateId": c.ID}, nil
}

type attributePayload struct {
	Attributes map[string]string `json:"attributes"`
	Merge      bool              `json:"merge"`
}

func (s *Server) createThing(q *request) (any, error) {
	var in struct {
		ThingTypeName    string            `json:"thingTypeName"`
		AttributePayload *attributePayload `json:"attributePayload"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	var attrs map[string]string
	if in.AttributePayload != nil {
		attrs = in.AttributePayload.Attributes
	}
	t, err := s.reg.CreateThing(q.v("thingName"), in.ThingTypeName, attrs)
	if err != nil {
		return nil, err
	}
	return map[string]string{"thingName": t.Name, "thingArn": t.ARN, "thingId": t.ID}, nil
}

func (s *Server) describeThing(q *request) (any, error) {
	t, err := s.reg.DescribeThing(q.v("thingName"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"defaultClientId": t.Name, "thingName": t.Name, "thingId": t.ID, "thingArn": t.ARN,
		"thingTypeName": strPtr(t.TypeName), "attributes": t.Attributes, "version": t.Version}, nil
}

func (s *Server) listThings(q *request) (any, error) {
	things, err := s.reg.ListThings(q.query.Get("thingTypeName"))
	if err != nil {
		return nil, err
	}
	pg, next, err := pageOf(q, things, false)
	if err != nil {
		return nil, err
	}
	out := make([]map[string]any, 0, len(pg))
	for _, t := range pg {
		out = append(out, map[string]any{"thingName": t.Name, "thingArn": t.ARN, "thingTypeName": strPtr(t.TypeName),
			"attributes": t.Attributes, "version": t.Version})
	}
	return map[string]any{"things": out, "nextToken": next}, nil
}

func (s *Server) updateThing(q *request) (any, error) {
	var in struct {
		ThingTypeName    *string           `json:"thingTypeName"`
		RemoveThingType  bool              `json:"removeThingType"`
		AttributePayload *attributePayload `json:"attributePayload"`
		ExpectedVersion  *int64            `json:"expectedVersion"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	u := registry.UpdateThingInput{Name: q.v("thingName"), TypeName: in.ThingTypeName, RemoveThingType: in.RemoveThingType,
		ExpectedVersion: in.ExpectedVersion}
	if in.AttributePayload != nil {
		u.SetAttributes, u.Attributes, u.Merge = true, in.AttributePayload.Attributes, in.AttributePayload.Merge
	}
	_, err := s.reg.UpdateThing(u)
	return nil, err
}

func (s *Server) deleteThing(q *request) (any, error) {
	ev, err := q.intQuery("expectedVersion")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.DeleteThing(q.v("thingName"), ev)
}

func principalHeader(q *request, name string) (string, error) {
	p := q.http.Header.Get(name)
	if p == "" {
		return "", errInvalid("header %s (the principal) is required", name)
	}
	return p, nil
}

func (s *Server) attachThingPrincipal(q *request) (any, error) {
	p, err := principalHeader(q, "X-Amzn-Principal")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.AttachThingPrincipal(q.v("thingName"), p, q.http.URL.Query().Get("thingPrincipalType"))
}

func (s *Server) detachThingPrincipal(q *request) (any, error) {
	p, err := principalHeader(q, "X-Amzn-Principal")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.DetachThingPrincipal(q.v("thingName"), p)
}

func (s *Server) listThingPrincipals(q *request) (any, error) {
	ps, err := s.reg.ListThingPrincipals(q.v("thingName"))
	if err != nil {
		return nil, err
	}
	return listReply(q, "principals", ps, false)
}

func (s *Server) listPrincipalThings(q *request) (any, error) {
	p, err := principalHeader(q, "X-Amzn-Principal")
	if err != nil {
		return nil, err
	}
	q.res = p
	things, err := s.reg.ListPrincipalThings(p)
	if err != nil {
		return nil, err
	}
	return listReply(q, "things", things, false)
}

func (s *Server) createPolicy(q *request) (any, error) {
	var in struct {
		PolicyDocument string `json:"policyDocument"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.PolicyDocument == "" {
		return nil, errInvalid("policyDocument is required")
	}
	p, err := s.reg.CreatePolicy(q.v("policyName"), in.PolicyDocument)
	if err != nil {
		return nil, err
	}
	return map[string]string{"policyName": p.Name, "policyArn": p.ARN, "policyDocument": p.Document, "policyVersionId": p.DefaultVersionID}, nil
}

func (s *Server) getPolicy(q *request) (any, error) {
	p, err := s.reg.GetPolicy(q.v("policyName"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"policyName": p.Name, "policyArn": p.ARN, "policyDocument": p.Document,
		"defaultVersionId": p.DefaultVersionID, "creationDate": epoch(p.CreationDate),
		"lastModifiedDate": epoch(p.LastModifiedDate), "generationId": p.GenerationID}, nil
}

func (s *Server) policyTarget(q *request) (string, error) {
	var in struct {
		Target string `json:"target"`
	}
	if err := q.decode(&in); err != nil {
		return "", err
	}
	if in.Target == "" {
		return "", errInvalid("target is required")
	}
	return in.Target, nil
}

func (s *Server) attachPolicy(q *request) (any, error) {
	t, err := s.policyTarget(q)
	if err != nil {
		return nil, err
	}
	return nil, s.reg.AttachPolicy(q.v("policyName"), t)
}

func (s *Server) detachPolicy(q *request) (any, error) {
	t, err := s.policyTarget(q)
	if err != nil {
		return nil, err
	}
	return nil, s.reg.DetachPolicy(q.v("policyName"), t)
}

func (s *Server) listAttachedPolicies(q *request) (any, error) {
	rec, err := q.boolQuery("recursive")
	if err != nil {
		return nil, err
	}
	ps, err := s.reg.ListAttachedPolicies(q.v("target"), rec)
	if err != nil {
		return nil, err
	}
	type pol struct {
		Name string `json:"policyName"`
		ARN  string `json:"policyArn"`
	}
	list := make([]pol, len(ps))
	for i, p := range ps {
		list[i] = pol{p.Name, p.ARN}
	}
	return listReply(q, "policies", list, true)
}

func (s *Server) createThingType(q *request) (any, error) {
	var in struct {
		Props *struct {
			Description string   `json:"thingTypeDescription"`
			Searchable  []string `json:"searchableAttributes"`
		} `json:"thingTypeProperties"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	var desc string
	var searchable []string
	if in.Props != nil {
		desc, searchable = in.Props.Description, in.Props.Searchable
	}
	tt, err := s.reg.CreateThingType(q.v("thingTypeName"), desc, searchable)
	if err != nil {
		return nil, err
	}
	return map[string]string{"thingTypeName": tt.Name, "thingTypeArn": tt.ARN, "thingTypeId": tt.ID}, nil
}

func (s *Server) describeThingType(q *request) (any, error) {
	tt, err := s.reg.DescribeThingType(q.v("thingTypeName"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"thingTypeName": tt.Name, "thingTypeArn": tt.ARN, "thingTypeId": tt.ID,
		"thingTypeProperties": map[string]any{"thingTypeDescription": strPtr(tt.Description), "searchableAttributes": tt.SearchableAttributes},
		"thingTypeMetadata":   map[string]any{"deprecated": tt.Deprecated, "creationDate": epoch(tt.CreationDate)}}, nil
}

func (s *Server) createThingGroup(q *request) (any, error) {
	var in struct {
		ParentGroupName string `json:"parentGroupName"`
		Props           *struct {
			Description      string            `json:"thingGroupDescription"`
			AttributePayload *attributePayload `json:"attributePayload"`
		} `json:"thingGroupProperties"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	var desc string
	var attrs map[string]string
	if in.Props != nil {
		desc = in.Props.Description
		if in.Props.AttributePayload != nil {
			attrs = in.Props.AttributePayload.Attributes
		}
	}
	g, err := s.reg.CreateThingGroup(q.v("thingGroupName"), in.ParentGroupName, desc, attrs)
	if err != nil {
		return nil, err
	}
	return map[string]string{"thingGroupName": g.Name, "thingGroupArn": g.ARN, "thingGroupId": g.ID}, nil
}

func (s *Server) describeThingGroup(q *request) (any, error) {
	g, err := s.reg.DescribeThingGroup(q.v("thingGroupName"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"thingGroupName": g.Name, "thingGroupId": g.ID, "thingGroupArn": g.ARN, "version": g.Version,
		"thingGroupProperties": map[string]any{"thingGroupDescription": strPtr(g.Description),
			"attributePayload": map[string]any{"attributes": g.Attributes}},
		"thingGroupMetadata": map[string]any{"parentGroupName": strPtr(g.ParentGroupName), "creationDate": epoch(g.CreationDate)}}, nil
}

type groupMembership struct {
	ThingGroupName string `json:"thingGroupName"`
	ThingGroupArn  string `json:"thingGroupArn"`
	ThingName      string `json:"thingName"`
	ThingArn       string `json:"thingArn"`
}

func (m groupMembership) names() (group, thing string, err error) {
	group, thing = m.ThingGroupName, m.ThingName
	if group == "" {
		group = m.ThingGroupArn
	}
	if thing == "" {
		thing = m.ThingArn
	}
	if group == "" || thing == "" {
		return "", "", errInvalid("a thing group (thingGroupName or thingGroupArn) and a thing (thingName or thingArn) are required")
	}
	return group, thing, nil
}

func (s *Server) addThingToThingGroup(q *request) (any, error) {
	var in groupMembership
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	g, t, err := in.names()
	if err != nil {
		return nil, err
	}
	q.res = t
	return nil, s.reg.AddThingToThingGroup(g, t)
}

func (s *Server) removeThingFromThingGroup(q *request) (any, error) {
	var in groupMembership
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	g, t, err := in.names()
	if err != nil {
		return nil, err
	}
	q.res = t
	return nil, s.reg.RemoveThingFromThingGroup(g, t)
}

// groupRef is a thing group in list replies (GroupNameAndArn).
type groupRef struct {
	Name string `json:"groupName"`
	ARN  string `json:"groupArn"`
}

func groupRefs(gs []registry.ThingGroup) []groupRef {
	out := make([]groupRef, len(gs))
	for i, g := range gs {
		out[i] = groupRef{g.Name, g.ARN}
	}
	return out
}

func (s *Server) listThingGroupsForThing(q *request) (any, error) {
	gs, err := s.reg.ListThingGroupsForThing(q.v("thingName"))
	if err != nil {
		return nil, err
	}
	return listReply(q, "thingGroups", groupRefs(gs), false)
}

func (s *Server) listThingsInThingGroup(q *request) (any, error) {
	rec, err := q.boolQuery("recursive")
	if err != nil {
		return nil, err
	}
	things, err := s.reg.ListThingsInThingGroup(q.v("thingGroupName"), rec)
	if err != nil {
		return nil, err
	}
	return listReply(q, "things", things, false)
}

func (s *Server) createJob(q *request) (any, error) {
	var in struct {
		Targets         []string `json:"targets"`
		Document        string   `json:"document"`
		DocumentSource  string   `json:"documentSource"`
		TargetSelection string   `json:"targetSelection"`
		Description     string   `json:"description"`
		TimeoutConfig   *struct {
			InProgressTimeoutInMinutes int64 `json:"inProgressTimeoutInMinutes"`
		} `json:"timeoutConfig"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.DocumentSource != "" {
		return nil, errInvalid("documentSource (a document in S3) is not supported by the lab: pass document")
	}
	ci := registry.CreateJobInput{JobID: q.v("jobId"), Targets: in.Targets, Document: in.Document,
		TargetSelection: in.TargetSelection, Description: in.Description}
	if in.TimeoutConfig != nil {
		ci.InProgressTimeoutInMinutes = in.TimeoutConfig.InProgressTimeoutInMinutes
	}
	j, err := s.reg.CreateJob(ci)
	if err != nil {
		return nil, err
	}
	return map[string]any{"jobArn": j.ARN, "jobId": j.ID, "description": strPtr(j.Description)}, nil
}

func (s *Server) describeJob(q *request) (any, error) {
	j, counts, err := s.reg.DescribeJob(q.v("jobId"))
	if err != nil {
		return nil, err
	}
	job := map[string]any{"jobArn": j.ARN, "jobId": j.ID, "targetSelection": j.TargetSelection, "status": j.Status,
		"forceCanceled": j.ForceCanceled, "targets": j.Targets, "description": strPtr(j.Description),
		"createdAt": epoch(j.CreatedAt), "lastUpdatedAt": epoch(j.LastUpdatedAt), "completedAt": epoch(j.CompletedAt),
		"jobProcessDetails": map[string]int{
			"numberOfCanceledThings":   counts[protocol.JobCanceled],
			"numberOfSucceededThings":  counts[protocol.JobSucceeded],
			"numberOfFailedThings":     counts[protocol.JobFailed],
			"numberOfRejectedThings":   counts[protocol.JobRejected],
			"numberOfQueuedThings":     counts[protocol.JobQueued],
			"numberOfInProgressThings": counts[protocol.JobInProgress],
			"numberOfRemovedThings":    counts[protocol.JobRemoved],
			"numberOfTimedOutThings":   counts[protocol.JobTimedOut],
		}}
	if j.InProgressTimeoutInMinutes > 0 {
		job["timeoutConfig"] = map[string]int64{"inProgressTimeoutInMinutes": j.InProgressTimeoutInMinutes}
	}
	return map[string]any{"job": job}, nil
}

func (s *Server) execution(e registry.JobExecution) map[string]any {
	out := map[string]any{"jobId": e.JobID, "status": e.Status, "forceCanceled": e.ForceCanceled,
		"thingArn": e.ThingARN, "queuedAt": epoch(e.QueuedAt), "startedAt": epoch(e.StartedAt),
		"lastUpdatedAt": epoch(e.LastUpdatedAt), "executionNumber": e.ExecutionNumber, "versionNumber": e.VersionNumber,
		"statusDetails": map[string]any{"detailsMap": e.StatusDetails}}
	if at := e.TimeoutAt(); !at.IsZero() && e.Status == protocol.JobInProgress {
		out["approximateSecondsBeforeTimedOut"] = max(0, int64(at.Sub(s.reg.Now()).Seconds()))
	}
	return out
}

func (s *Server) describeJobExecution(q *request) (any, error) {
	num, err := q.intQuery("executionNumber")
	if err != nil {
		return nil, err
	}
	thing := q.v("thingName")
	e, err := s.reg.DescribeJobExecution(q.v("jobId"), thing, num)
	if err != nil {
		return nil, err
	}
	return map[string]any{"execution": s.execution(e)}, nil
}

func (s *Server) listJobExecutionsForThing(q *request) (any, error) {
	execs, err := s.reg.ListJobExecutionsForThing(q.v("thingName"), protocol.JobStatus(q.query.Get("status")))
	if err != nil {
		return nil, err
	}
	if job := q.query.Get("jobId"); job != "" {
		kept := execs[:0]
		for _, e := range execs {
			if e.JobID == job {
				kept = append(kept, e)
			}
		}
		execs = kept
	}
	type summary struct {
		JobID   string         `json:"jobId"`
		Summary map[string]any `json:"jobExecutionSummary"`
	}
	list := make([]summary, len(execs))
	for i, e := range execs {
		list[i] = summary{e.JobID, map[string]any{"status": e.Status, "queuedAt": epoch(e.QueuedAt), "startedAt": epoch(e.StartedAt),
			"lastUpdatedAt": epoch(e.LastUpdatedAt), "executionNumber": e.ExecutionNumber}}
	}
	return listReply(q, "executionSummaries", list, false)
}

func (s *Server) cancelJobExecution(q *request) (any, error) {
	var in struct {
		ExpectedVersion *int64            `json:"expectedVersion"`
		StatusDetails   map[string]string `json:"statusDetails"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	force, err := q.boolQuery("force")
	if err != nil {
		return nil, err
	}
	thing := q.v("thingName")
	return nil, s.reg.CancelJobExecution(q.v("jobId"), thing, force, in.ExpectedVersion, in.StatusDetails)
}

func (s *Server) describeEndpoint(q *request) (any, error) {
	typ := q.query.Get("endpointType")
	switch typ {
	case "", "iot:Data", "iot:Data-ATS", "iot:CredentialProvider", "iot:Jobs":
	default:
		return nil, errInvalid("endpointType %q: one of iot:Data, iot:Data-ATS, iot:CredentialProvider, iot:Jobs", typ)
	}
	if typ == "" {
		typ = "iot:Data"
	}
	addr := s.cfg.Endpoints[typ]
	if addr == "" {
		addr = q.http.Host
	}
	q.res = typ
	return map[string]string{"endpointAddress": addr}, nil
}

// publish is the data-plane Publish
// (https://docs.aws.amazon.com/iot/latest/apireference/API_iotdata_Publish.html):
// POST /topics/{topic}?qos=0|1 with the payload as body. The topic may come
// %2F-escaped (as the SDKs send it) or with literal slashes.
func (s *Server) publish(q *request) (any, error) {
	topic := q.v("topic")
	if topic == "" || strings.ContainsAny(topic, "#+") || strings.ContainsRune(topic, 0) {
		return nil, errInvalid("topic %q is not a valid topic name", topic)
	}
	qos := byte(0)
	if v := q.query.Get("qos"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 1 {
			return nil, errInvalid("qos must be 0 or 1, got %q", v)
		}
		qos = byte(n)
	}
	if len(q.body) > 128<<10 {
		return nil, &apiError{Type: "RequestEntityTooLargeException", Status: 413, Message: "payload larger than 128 KiB"}
	}
	if s.cfg.Publisher == nil {
		return nil, &apiError{Type: "ServiceUnavailableException", Status: 503, Message: "the lab's broker is not attached"}
	}
	if err := s.cfg.Publisher.Publish(topic, q.body, qos); err != nil {
		return nil, &apiError{Type: "InternalFailureException", Status: 500, Message: "publishing to " + topic + ": " + err.Error()}
	}
	return rawResponse(nil), nil
}

func (s *Server) createPolicyVersion(q *request) (any, error) {
	var in struct {
		PolicyDocument string `json:"policyDocument"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	if in.PolicyDocument == "" {
		return nil, errInvalid("policyDocument is required")
	}
	def, err := q.boolQuery("setAsDefault")
	if err != nil {
		return nil, err
	}
	v, err := s.reg.CreatePolicyVersion(q.v("policyName"), in.PolicyDocument, def)
	if err != nil {
		return nil, err
	}
	p, err := s.reg.GetPolicy(q.v("policyName"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"policyArn": p.ARN, "policyDocument": v.Document, "policyVersionId": v.ID,
		"isDefaultVersion": p.DefaultVersionID == v.ID}, nil
}

func (s *Server) setDefaultPolicyVersion(q *request) (any, error) {
	return nil, s.reg.SetDefaultPolicyVersion(q.v("policyName"), q.v("policyVersionId"))
}

func (s *Server) listCACertificates(q *request) (any, error) {
	cas := s.reg.CACertificates()
	asc, err := q.boolQuery("isAscendingOrder")
	if err != nil {
		return nil, err
	}
	sort.SliceStable(cas, func(a, b int) bool {
		if asc {
			return cas[a].CreationDate.Before(cas[b].CreationDate)
		}
		return cas[a].CreationDate.After(cas[b].CreationDate)
	})
	type ca struct {
		ARN     string   `json:"certificateArn"`
		ID      string   `json:"certificateId"`
		Status  string   `json:"status"`
		Created *float64 `json:"creationDate,omitempty"`
	}
	list := make([]ca, len(cas))
	for i, c := range cas {
		list[i] = ca{c.ARN, c.ID, c.Status, epoch(c.CreationDate)}
	}
	return listReply(q, "certificates", list, true)
}

func (s *Server) getJobDocument(q *request) (any, error) {
	doc, err := s.reg.GetJobDocument(q.v("jobId"))
	if err != nil {
		return nil, err
	}
	return map[string]string{"document": doc}, nil
}

func (s *Server) updateEventConfigurations(q *request) (any, error) {
	var in struct {
		EventConfigurations map[string]struct {
			Enabled bool `json:"Enabled"`
		} `json:"eventConfigurations"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	cfg := map[string]bool{}
	for k, v := range in.EventConfigurations {
		cfg[k] = v.Enabled
	}
	return nil, s.reg.UpdateEventConfigurations(cfg)
}

func (s *Server) describeEventConfigurations(q *request) (any, error) {
	out := map[string]map[string]bool{}
	for k, v := range s.reg.EventConfigurations() {
		out[k] = map[string]bool{"Enabled": v}
	}
	return map[string]any{"eventConfigurations": out}, nil
}

func (s *Server) cancelJob(q *request) (any, error) {
	var in struct {
		Comment    string `json:"comment"`
		ReasonCode string `json:"reasonCode"`
	}
	if err := q.decode(&in); err != nil {
		return nil, err
	}
	force, err := q.boolQuery("force")
	if err != nil {
		return nil, err
	}
	j, err := s.reg.CancelJob(q.v("jobId"), force, in.Comment, in.ReasonCode)
	if err != nil {
		return nil, err
	}
	return map[string]any{"jobArn": j.ARN, "jobId": j.ID, "description": strPtr(j.Description)}, nil
}

func (s *Server) listJobs(q *request) (any, error) {
	jobs := s.reg.ListJobs(q.query.Get("status"), q.query.Get("targetSelection"), q.query.Get("thingGroupName"))
	list := make([]map[string]any, len(jobs))
	for i, j := range jobs {
		list[i] = map[string]any{"jobArn": j.ARN, "jobId": j.ID, "targetSelection": j.TargetSelection, "status": j.Status,
			"createdAt": epoch(j.CreatedAt), "lastUpdatedAt": epoch(j.LastUpdatedAt), "completedAt": epoch(j.CompletedAt)}
	}
	return listReply(q, "jobs", list, false)
}

// listCertificates serves ListCertificates and ListCertificatesByCA.
func (s *Server) listCertificates(q *request) (any, error) {
	caID := q.v("caCertificateId") // ListCertificatesByCA; an unknown CA lists nothing
	certs := s.reg.ListCertificates(caID)
	asc, err := q.boolQuery("isAscendingOrder")
	if err != nil {
		return nil, err
	}
	if !asc { // AWS lists newest first unless isAscendingOrder
		for i, k := 0, len(certs)-1; i < k; i, k = i+1, k-1 {
			certs[i], certs[k] = certs[k], certs[i]
		}
	}
	list := make([]map[string]any, len(certs))
	for i, c := range certs {
		list[i] = map[string]any{"certificateArn": c.ARN, "certificateId": c.ID, "status": c.Status,
			"certificateMode": c.CertificateMode, "creationDate": epoch(c.CreationDate)}
	}
	return listReply(q, "certificates", list, true)
}

func (s *Server) listPolicies(q *request) (any, error) {
	ps := s.reg.ListPolicies()
	type pol struct {
		Name string `json:"policyName"`
		ARN  string `json:"policyArn"`
	}
	list := make([]pol, len(ps))
	for i, p := range ps {
		list[i] = pol{p.Name, p.ARN}
	}
	return listReply(q, "policies", list, true)
}

func (s *Server) deletePolicy(q *request) (any, error) {
	return nil, s.reg.DeletePolicy(q.v("policyName"))
}

func (s *Server) listPolicyVersions(q *request) (any, error) {
	p, err := s.reg.ListPolicyVersions(q.v("policyName"))
	if err != nil {
		return nil, err
	}
	list := make([]map[string]any, len(p.Versions))
	for i, v := range p.Versions {
		list[i] = map[string]any{"versionId": v.ID, "isDefaultVersion": v.ID == p.DefaultVersionID, "createDate": epoch(v.CreateDate)}
	}
	return map[string]any{"policyVersions": list}, nil
}

func (s *Server) deletePolicyVersion(q *request) (any, error) {
	return nil, s.reg.DeletePolicyVersion(q.v("policyName"), q.v("policyVersionId"))
}

func (s *Server) listThingGroups(q *request) (any, error) {
	rec, err := q.boolQuery("recursive")
	if err != nil {
		return nil, err
	}
	gs := s.reg.ListThingGroups(q.query.Get("parentGroup"), q.query.Get("namePrefixFilter"), rec)
	return listReply(q, "thingGroups", groupRefs(gs), false)
}

func (s *Server) deleteThingGroup(q *request) (any, error) {
	ev, err := q.intQuery("expectedVersion")
	if err != nil {
		return nil, err
	}
	return nil, s.reg.DeleteThingGroup(q.v("thingGroupName"), ev)
}
