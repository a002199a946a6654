package iam

import (
	"errors"
	"testing"
)

func TestEvaluate(t *testing.T) {
	d, err := Parse([]byte(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":"s3:Get*","Resource":"arn:aws:s3:::b/trust/*"},
		{"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/trust/secret"},
		{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::b","Condition":{"StringLike":{"s3:prefix":["trust/*","issuance/?"]}}},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::b/*","Condition":{"StringNotEquals":{"s3:x-amz-acl":"public-read"}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		req   Request
		allow bool
	}{
		{"ok/wildcard action, case-insensitive", Request{Action: "S3:GETOBJECT", Resource: "arn:aws:s3:::b/trust/crl"}, true},
		{"fail/explicit deny wins", Request{Action: "s3:GetObject", Resource: "arn:aws:s3:::b/trust/secret"}, false},
		{"fail/resource is case-sensitive", Request{Action: "s3:GetObject", Resource: "arn:aws:s3:::b/TRUST/crl"}, false},
		{"ok/condition holds", Request{Action: "s3:ListBucket", Resource: "arn:aws:s3:::b", Context: map[string]string{"s3:prefix": "trust/x"}}, true},
		{"ok/? matches one character", Request{Action: "s3:ListBucket", Resource: "arn:aws:s3:::b", Context: map[string]string{"s3:prefix": "issuance/1"}}, true},
		{"fail/? matches only one", Request{Action: "s3:ListBucket", Resource: "arn:aws:s3:::b", Context: map[string]string{"s3:prefix": "issuance/12"}}, false},
		{"fail/condition key absent", Request{Action: "s3:ListBucket", Resource: "arn:aws:s3:::b"}, false},
		{"ok/negated operator, key absent", Request{Action: "s3:PutObject", Resource: "arn:aws:s3:::b/k"}, true},
		{"fail/negated operator, key matches", Request{Action: "s3:PutObject", Resource: "arn:aws:s3:::b/k", Context: map[string]string{"s3:x-amz-acl": "public-read"}}, false},
		{"fail/no statement", Request{Action: "s3:DeleteObject", Resource: "arn:aws:s3:::b/k"}, false},
	} {
		if got := Evaluate([]*Document{d}, tc.req); got.Allowed != tc.allow {
			t.Errorf("%s: %+v", tc.name, got)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"principal":    `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:*","Resource":"*"}]}`,
		"set operator": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*","Condition":{"ForAnyValue:StringLike":{"s3:prefix":"a"}}}]}`,
		"variable":     `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"arn:aws:s3:::b/${aws:username}/*"}]}`,
		"no effect":    `{"Version":"2012-10-17","Statement":[{"Action":"s3:*","Resource":"*"}]}`,
		"both actions": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","NotAction":"s3:Get*","Resource":"*"}]}`,
		"no statement": `{"Version":"2012-10-17"}`,
		"unknown key":  `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}],"X":1}`,
		"bad version":  `{"Version":"2020-01-01","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`,
	} {
		if _, err := Parse([]byte(doc)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestAuthorizeAction(t *testing.T) {
	d, err := Parse([]byte(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:AddThingToThingGroup","iot:DescribeJobExecution"],"Resource":["arn:t/*","arn:g/rot"]},
		{"Effect":"Allow","Action":"iot:AttachThingPrincipal","Resource":"arn:c/*","Condition":{"ArnLike":{"iot:thingArn":"arn:t/gw-*"}}},
		{"Effect":"Deny","Action":"iot:DescribeJobExecution","Resource":"arn:j/secret"},
		{"Effect":"Allow","Action":"iot:ListThings","Resource":"*"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	p := &Principal{Name: "fn", ARN: "arn:aws:sts::1:assumed-role/r/fn", Policies: []*Document{d}}
	for _, tc := range []struct {
		name    string
		req     ActionRequest
		allow   bool
		decided string
	}{
		{"ok/all required allowed", ActionRequest{Action: "iot:AddThingToThingGroup", Required: []string{"arn:t/a", "arn:g/rot"}}, true, ""},
		{"fail/one required refused", ActionRequest{Action: "iot:AddThingToThingGroup", Required: []string{"arn:t/a", "arn:g/other"}}, false, "arn:g/other"},
		{"ok/one optional allowed", ActionRequest{Action: "iot:DescribeJobExecution", Optional: []string{"arn:j/1", "arn:t/a"}}, true, ""},
		{"fail/no optional allowed", ActionRequest{Action: "iot:DescribeJobExecution", Optional: []string{"arn:j/1", "arn:x/a"}}, false, "arn:j/1"},
		{"fail/explicit deny of an optional", ActionRequest{Action: "iot:DescribeJobExecution", Optional: []string{"arn:j/secret", "arn:t/a"}}, false, "arn:j/secret"},
		{"ok/condition key in context", ActionRequest{Action: "iot:AttachThingPrincipal", Optional: []string{"arn:c/1"}, Context: map[string]string{"iot:thingarn": "arn:t/gw-1"}}, true, ""},
		{"fail/condition key mismatch", ActionRequest{Action: "iot:AttachThingPrincipal", Optional: []string{"arn:c/1"}, Context: map[string]string{"iot:thingarn": "arn:t/x"}}, false, "arn:c/1"},
		{"ok/no resource types: *", ActionRequest{Action: "iot:ListThings"}, true, ""},
		{"fail/no resource types, granted on an ARN only", ActionRequest{Action: "iot:AddThingToThingGroup"}, false, "*"},
	} {
		got, res := p.AuthorizeAction(tc.req)
		if got.Allowed != tc.allow || res != tc.decided {
			t.Errorf("%s: %+v on %q", tc.name, got, res)
		}
	}
	got, res := p.AuthorizeAction(ActionRequest{Action: "iot:DescribeJobExecution", Optional: []string{"arn:j/secret"}})
	if want := "User: arn:aws:sts::1:assumed-role/r/fn is not authorized to perform: iot:DescribeJobExecution on resource: arn:j/secret with an explicit deny in an identity-based policy"; p.DeniedMessage("iot:DescribeJobExecution", res, got) != want {
		t.Errorf("message %q", p.DeniedMessage("iot:DescribeJobExecution", res, got))
	}
	if d, _ := (&Principal{Admin: true}).AuthorizeAction(ActionRequest{Action: "iot:DeleteThing", Required: []string{"arn:t/a"}}); !d.Allowed {
		t.Error("the admin principal was refused")
	}
}
