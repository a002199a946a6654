package api

import (
	"github.com/bootcert/bootcert/cloud/lab/registry"
)

// Replies of the thing group operations (fields in the order of their JSON
// names).

type thingGroupRef struct {
	ARN  string `json:"thingGroupArn"`
	ID   string `json:"thingGroupId"`
	Name string `json:"thingGroupName"`
}

// thingGroupDescription is DescribeThingGroup's reply.
type thingGroupDescription struct {
	ARN      string `json:"thingGroupArn"`
	ID       string `json:"thingGroupId"`
	Metadata struct {
		CreationDate    *float64 `json:"creationDate"`
		ParentGroupName *string  `json:"parentGroupName"`
	} `json:"thingGroupMetadata"`
	Name       string `json:"thingGroupName"`
	Properties struct {
		AttributePayload struct {
			Attributes map[string]string `json:"attributes"`
		} `json:"attributePayload"`
		Description *string `json:"thingGroupDescription"`
	} `json:"thingGroupProperties"`
	Version int64 `json:"version"`
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
	return thingGroupRef{ARN: g.ARN, ID: g.ID, Name: g.Name}, nil
}

func (s *Server) describeThingGroup(q *request) (any, error) {
	g, err := s.reg.DescribeThingGroup(q.v("thingGroupName"))
	if err != nil {
		return nil, err
	}
	d := thingGroupDescription{ARN: g.ARN, ID: g.ID, Name: g.Name, Version: g.Version}
	d.Metadata.CreationDate, d.Metadata.ParentGroupName = epoch(g.CreationDate), strPtr(g.ParentGroupName)
	d.Properties.AttributePayload.Attributes, d.Properties.Description = g.Attributes, strPtr(g.Description)
	return d, nil
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
