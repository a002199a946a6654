package api

// Replies of the IoT policy operations (fields in the order of their JSON
// names).

// policyRef is an entry of ListPolicies and ListAttachedPolicies.
type policyRef struct {
	Name string `json:"policyName"`
	ARN  string `json:"policyArn"`
}

type createPolicyReply struct {
	ARN       string `json:"policyArn"`
	Document  string `json:"policyDocument"`
	Name      string `json:"policyName"`
	VersionID string `json:"policyVersionId"`
}

type getPolicyReply struct {
	CreationDate     *float64 `json:"creationDate"`
	DefaultVersionID string   `json:"defaultVersionId"`
	GenerationID     string   `json:"generationId"`
	LastModifiedDate *float64 `json:"lastModifiedDate"`
	ARN              string   `json:"policyArn"`
	Document         string   `json:"policyDocument"`
	Name             string   `json:"policyName"`
}

type createPolicyVersionReply struct {
	IsDefaultVersion bool   `json:"isDefaultVersion"`
	ARN              string `json:"policyArn"`
	Document         string `json:"policyDocument"`
	VersionID        string `json:"policyVersionId"`
}

// policyVersion is an entry of ListPolicyVersions.
type policyVersion struct {
	CreateDate       *float64 `json:"createDate"`
	IsDefaultVersion bool     `json:"isDefaultVersion"`
	VersionID        string   `json:"versionId"`
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
	return createPolicyReply{ARN: p.ARN, Document: p.Document, Name: p.Name, VersionID: p.DefaultVersionID}, nil
}

func (s *Server) getPolicy(q *request) (any, error) {
	p, err := s.reg.GetPolicy(q.v("policyName"))
	if err != nil {
		return nil, err
	}
	return getPolicyReply{CreationDate: epoch(p.CreationDate), DefaultVersionID: p.DefaultVersionID, GenerationID: p.GenerationID,
		LastModifiedDate: epoch(p.LastModifiedDate), ARN: p.ARN, Document: p.Document, Name: p.Name}, nil
}

func (s *Server) deletePolicy(q *request) (any, error) {
	return nil, s.reg.DeletePolicy(q.v("policyName"))
}

func (s *Server) listPolicies(q *request) (any, error) {
	ps := s.reg.ListPolicies()
	list := make([]policyRef, len(ps))
	for i, p := range ps {
		list[i] = policyRef{p.Name, p.ARN}
	}
	return listReply(q, "policies", list, true)
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
	return createPolicyVersionReply{IsDefaultVersion: p.DefaultVersionID == v.ID, ARN: p.ARN, Document: v.Document, VersionID: v.ID}, nil
}

func (s *Server) setDefaultPolicyVersion(q *request) (any, error) {
	return nil, s.reg.SetDefaultPolicyVersion(q.v("policyName"), q.v("policyVersionId"))
}

func (s *Server) listPolicyVersions(q *request) (any, error) {
	p, err := s.reg.ListPolicyVersions(q.v("policyName"))
	if err != nil {
		return nil, err
	}
	list := make([]policyVersion, len(p.Versions))
	for i, v := range p.Versions {
		list[i] = policyVersion{CreateDate: epoch(v.CreateDate), IsDefaultVersion: v.ID == p.DefaultVersionID, VersionID: v.ID}
	}
	return struct {
		Versions []policyVersion `json:"policyVersions"`
	}{list}, nil
}

func (s *Server) deletePolicyVersion(q *request) (any, error) {
	return nil, s.reg.DeletePolicyVersion(q.v("policyName"), q.v("policyVersionId"))
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
	list := make([]policyRef, len(ps))
	for i, p := range ps {
		list[i] = policyRef{p.Name, p.ARN}
	}
	return listReply(q, "policies", list, true)
}
