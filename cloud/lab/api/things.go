package api

import (
	"github.com/bootcert/bootcert/cloud/lab/registry"
)

// Replies of the thing, principal and thing type operations (fields in the
// order of their JSON names).

type thingRef struct {
	ARN  string `json:"thingArn"`
	ID   string `json:"thingId"`
	Name string `json:"thingName"`
}

// thingDescription is DescribeThing's reply.
type thingDescription struct {
	Attributes      map[string]string `json:"attributes"`
	DefaultClientID string            `json:"defaultClientId"`
	ARN             string            `json:"thingArn"`
	ID              string            `json:"thingId"`
	Name            string            `json:"thingName"`
	TypeName        *string           `json:"thingTypeName"`
	Version         int64             `json:"version"`
}

// thingAttribute is an entry of ListThings.
type thingAttribute struct {
	Attributes map[string]string `json:"attributes"`
	ARN        string            `json:"thingArn"`
	Name       string            `json:"thingName"`
	TypeName   *string           `json:"thingTypeName"`
	Version    int64             `json:"version"`
}

type thingTypeRef struct {
	ARN  string `json:"thingTypeArn"`
	ID   string `json:"thingTypeId"`
	Name string `json:"thingTypeName"`
}

type thingTypeDescription struct {
	ARN      string `json:"thingTypeArn"`
	ID       string `json:"thingTypeId"`
	Metadata struct {
		CreationDate *float64 `json:"creationDate"`
		Deprecated   bool     `json:"deprecated"`
	} `json:"thingTypeMetadata"`
	Name       string `json:"thingTypeName"`
	Properties struct {
		SearchableAttributes []string `json:"searchableAttributes"`
		Description          *string  `json:"thingTypeDescription"`
	} `json:"thingTypeProperties"`
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
	return thingRef{ARN: t.ARN, ID: t.ID, Name: t.Name}, nil
}

func (s *Server) describeThing(q *request) (any, error) {
	t, err := s.reg.DescribeThing(q.v("thingName"))
	if err != nil {
		return nil, err
	}
	return thingDescription{Attributes: t.Attributes, DefaultClientID: t.Name, ARN: t.ARN, ID: t.ID, Name: t.Name,
		TypeName: strPtr(t.TypeName), Version: t.Version}, nil
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
	out := make([]thingAttribute, 0, len(pg))
	for _, t := range pg {
		out = append(out, thingAttribute{Attributes: t.Attributes, ARN: t.ARN, Name: t.Name, TypeName: strPtr(t.TypeName),
			Version: t.Version})
	}
	return struct {
		NextToken *string          `json:"nextToken"`
		Things    []thingAttribute `json:"things"`
	}{next, out}, nil
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
	return thingTypeRef{ARN: tt.ARN, ID: tt.ID, Name: tt.Name}, nil
}

func (s *Server) describeThingType(q *request) (any, error) {
	tt, err := s.reg.DescribeThingType(q.v("thingTypeName"))
	if err != nil {
		return nil, err
	}
	d := thingTypeDescription{ARN: tt.ARN, ID: tt.ID, Name: tt.Name}
	d.Metadata.CreationDate, d.Metadata.Deprecated = epoch(tt.CreationDate), tt.Deprecated
	d.Properties.SearchableAttributes, d.Properties.Description = tt.SearchableAttributes, strPtr(tt.Description)
	return d, nil
}
