package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/bootcert/bootcert/cloud/lab/iam"
	"github.com/bootcert/bootcert/cloud/lab/registry"
)

const arnPrefix = "arn:aws:iot:us-east-1:123456789012:"

// authFor routes a request as ServeHTTP does and returns what IAM
// evaluates for it.
func authFor(t *testing.T, s *Server, method, path string, header http.Header, body string) (string, iam.ActionRequest, error) {
	t.Helper()
	r := httptest.NewRequest(method, "https://lab"+path, strings.NewReader(body))
	for k, vs := range header {
		r.Header[k] = vs
	}
	segs, err := splitPath(r.URL.EscapedPath())
	if err != nil {
		t.Fatal(err)
	}
	rt, vars := s.match(method, segs)
	if rt == nil {
		t.Fatalf("no route for %s %s", method, path)
	}
	a, err := s.authorization(rt.op, &request{http: r, vars: vars, query: r.URL.Query(), body: []byte(body)})
	return rt.op, a, err
}

func testServer(t *testing.T) *Server {
	reg, err := registry.Open(registry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if reg.Region() != "us-east-1" || reg.AccountID() != "123456789012" {
		t.Fatalf("registry defaults %s %s changed: update arnPrefix", reg.Region(), reg.AccountID())
	}
	return New(Config{Registry: reg})
}

// TestIAMRouteMapping: each route maps to the IAM action of its operation
// and the resources the Service Authorization Reference lists for it
// (list_awsiot.html; iam.go has the table).
func TestIAMRouteMapping(t *testing.T) {
	s := testServer(t)
	const cert = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	principal := http.Header{"X-Amzn-Principal": {arnPrefix + "cert/" + cert}}
	type want struct {
		op                 string
		required, optional []string
		ctx                map[string]string
	}
	for _, tc := range []struct {
		method, path string
		header       http.Header
		body         string
		want         want
	}{
		{"GET", "/things/gw-1", nil, "", want{op: "DescribeThing", required: []string{arnPrefix + "thing/gw-1"}}},
		{"POST", "/things/gw-1", nil, "{}", want{op: "CreateThing", required: []string{arnPrefix + "thing/gw-1"}}},
		{"PATCH", "/things/gw-1", nil, "{}", want{op: "UpdateThing", required: []string{arnPrefix + "thing/gw-1"}}},
		{"DELETE", "/things/gw-1", nil, "", want{op: "DeleteThing", required: []string{arnPrefix + "thing/gw-1"}}},
		{"GET", "/things", nil, "", want{op: "ListThings"}},
		{"GET", "/things/gw-1/principals", nil, "", want{op: "ListThingPrincipals", required: []string{arnPrefix + "thing/gw-1"}}},
		{"PUT", "/things/gw-1/principals", principal, "", want{op: "AttachThingPrincipal", optional: []string{arnPrefix + "cert/" + cert},
			ctx: map[string]string{"iot:thingarn": arnPrefix + "thing/gw-1"}}},
		{"DELETE", "/things/gw-1/principals", principal, "", want{op: "DetachThingPrincipal", optional: []string{arnPrefix + "cert/" + cert},
			ctx: map[string]string{"iot:thingarn": arnPrefix + "thing/gw-1"}}},
		{"GET", "/principals/things", principal, "", want{op: "ListPrincipalThings", optional: []string{arnPrefix + "cert/" + cert}}},
		{"GET", "/certificates/" + cert, nil, "", want{op: "DescribeCertificate", required: []string{arnPrefix + "cert/" + cert}}},
		{"PUT", "/certificates/" + cert + "?newStatus=REVOKED", nil, "", want{op: "UpdateCertificate", required: []string{arnPrefix + "cert/" + cert}}},
		{"DELETE", "/certificates/" + cert, nil, "", want{op: "DeleteCertificate", required: []string{arnPrefix + "cert/" + cert}}},
		{"POST", "/certificates", nil, "{}", want{op: "CreateCertificateFromCsr"}},
		{"GET", "/certificates", nil, "", want{op: "ListCertificates"}},
		{"GET", "/certificates-by-ca/" + cert, nil, "", want{op: "ListCertificatesByCA"}},
		{"POST", "/certificate/register", nil, "{}", want{op: "RegisterCertificate"}},
		{"POST", "/certificate/register-no-ca", nil, "{}", want{op: "RegisterCertificateWithoutCA"}},
		{"GET", "/registrationcode", nil, "", want{op: "GetRegistrationCode"}},
		{"POST", "/cacertificate", nil, "{}", want{op: "RegisterCACertificate"}},
		{"GET", "/cacertificate/" + cert, nil, "", want{op: "DescribeCACertificate", required: []string{arnPrefix + "cacert/" + cert}}},
		{"PUT", "/cacertificate/" + cert, nil, "", want{op: "UpdateCACertificate", required: []string{arnPrefix + "cacert/" + cert}}},
		{"DELETE", "/cacertificate/" + cert, nil, "", want{op: "DeleteCACertificate", required: []string{arnPrefix + "cacert/" + cert}}},
		{"GET", "/cacertificates", nil, "", want{op: "ListCACertificates"}},
		{"POST", "/policies/p", nil, "{}", want{op: "CreatePolicy", required: []string{arnPrefix + "policy/p"}}},
		{"GET", "/policies/p", nil, "", want{op: "GetPolicy", required: []string{arnPrefix + "policy/p"}}},
		{"DELETE", "/policies/p", nil, "", want{op: "DeletePolicy", required: []string{arnPrefix + "policy/p"}}},
		{"GET", "/policies", nil, "", want{op: "ListPolicies"}},
		{"POST", "/policies/p/version", nil, "{}", want{op: "CreatePolicyVersion", required: []string{arnPrefix + "policy/p"}}},
		{"GET", "/policies/p/version", nil, "", want{op: "ListPolicyVersions", required: []string{arnPrefix + "policy/p"}}},
		{"PATCH", "/policies/p/version/2", nil, "", want{op: "SetDefaultPolicyVersion", required: []string{arnPrefix + "policy/p"}}},
		{"DELETE", "/policies/p/version/1", nil, "", want{op: "DeletePolicyVersion", required: []string{arnPrefix + "policy/p"}}},
		{"PUT", "/target-policies/p", nil, `{"target":"` + arnPrefix + "cert/" + cert + `"}`, want{op: "AttachPolicy", optional: []string{arnPrefix + "cert/" + cert}}},
		{"POST", "/target-policies/p", nil, `{"target":"` + arnPrefix + `thinggroup/g"}`, want{op: "DetachPolicy", optional: []string{arnPrefix + "thinggroup/g"}}},
		{"POST", "/attached-policies/x", nil, "", want{op: "ListAttachedPolicies"}},
		{"POST", "/thing-types/bootcert-gateway", nil, "{}", want{op: "CreateThingType", required: []string{arnPrefix + "thingtype/bootcert-gateway"}}},
		{"GET", "/thing-types/bootcert-gateway", nil, "", want{op: "DescribeThingType", required: []string{arnPrefix + "thingtype/bootcert-gateway"}}},
		{"PUT", "/thing-groups/addThingToThingGroup", nil, `{"thingName":"gw-1","thingGroupName":"g"}`,
			want{op: "AddThingToThingGroup", required: []string{arnPrefix + "thing/gw-1", arnPrefix + "thinggroup/g"}}},
		{"PUT", "/thing-groups/removeThingFromThingGroup", nil, `{"thingArn":"` + arnPrefix + `thing/gw-1","thingGroupArn":"` + arnPrefix + `thinggroup/g"}`,
			want{op: "RemoveThingFromThingGroup", required: []string{arnPrefix + "thing/gw-1", arnPrefix + "thinggroup/g"}}},
		{"POST", "/thing-groups/g", nil, "{}", want{op: "CreateThingGroup", required: []string{arnPrefix + "thinggroup/g"}}},
		{"GET", "/thing-groups/g", nil, "", want{op: "DescribeThingGroup", required: []string{arnPrefix + "thinggroup/g"}}},
		{"DELETE", "/thing-groups/g", nil, "", want{op: "DeleteThingGroup", required: []string{arnPrefix + "thinggroup/g"}}},
		{"GET", "/thing-groups", nil, "", want{op: "ListThingGroups"}},
		{"GET", "/thing-groups/g/things", nil, "", want{op: "ListThingsInThingGroup", required: []string{arnPrefix + "thinggroup/g"}}},
		{"GET", "/things/gw-1/thing-groups", nil, "", want{op: "ListThingGroupsForThing", required: []string{arnPrefix + "thing/gw-1"}}},
		{"PUT", "/jobs/j1", nil, `{"targets":["` + arnPrefix + `thing/gw-1","` + arnPrefix + `thinggroup/g"],"document":"{}"}`,
			want{op: "CreateJob", required: []string{arnPrefix + "job/j1", arnPrefix + "thing/gw-1", arnPrefix + "thinggroup/g"}}},
		{"GET", "/jobs/j1", nil, "", want{op: "DescribeJob", required: []string{arnPrefix + "job/j1"}}},
		{"PUT", "/jobs/j1/cancel", nil, "{}", want{op: "CancelJob", required: []string{arnPrefix + "job/j1"}}},
		{"GET", "/jobs/j1/job-document", nil, "", want{op: "GetJobDocument", required: []string{arnPrefix + "job/j1"}}},
		{"GET", "/jobs", nil, "", want{op: "ListJobs"}},
		{"GET", "/things/gw-1/jobs/j1", nil, "", want{op: "DescribeJobExecution", optional: []string{arnPrefix + "job/j1", arnPrefix + "thing/gw-1"}}},
		{"GET", "/things/gw-1/jobs", nil, "", want{op: "ListJobExecutionsForThing", required: []string{arnPrefix + "thing/gw-1"}}},
		{"PUT", "/things/gw-1/jobs/j1/cancel", nil, "{}", want{op: "CancelJobExecution", required: []string{arnPrefix + "job/j1", arnPrefix + "thing/gw-1"}}},
		{"GET", "/endpoint?endpointType=iot:Data-ATS", nil, "", want{op: "DescribeEndpoint"}},
		{"GET", "/event-configurations", nil, "", want{op: "DescribeEventConfigurations"}},
		{"PATCH", "/event-configurations", nil, "{}", want{op: "UpdateEventConfigurations"}},
		{"POST", "/topics/certificates%2Fgw-1%2Frotate%2Fstart?qos=1", nil, "x", want{op: "Publish", required: []string{arnPrefix + "topic/certificates/gw-1/rotate/start"}}},
		{"POST", "/topics/$aws/things/gw-1/jobs/notify", nil, "x", want{op: "Publish", required: []string{arnPrefix + "topic/$aws/things/gw-1/jobs/notify"}}},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			op, a, err := authFor(t, s, tc.method, tc.path, tc.header, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			got := want{op: op, required: a.Required, optional: a.Optional, ctx: a.Context}
			if a.Action != "iot:"+op || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("%s: %+v, want %+v", a.Action, got, tc.want)
			}
		})
	}
}

// TestIAMTableCoversRoutes: every route the API serves has an IAM mapping
// (a new route without one would be refused with InternalFailureException).
func TestIAMTableCoversRoutes(t *testing.T) {
	s := testServer(t)
	for _, rt := range s.table() {
		var path []string
		for _, seg := range rt.segs {
			if strings.HasPrefix(seg, "{") {
				seg = "x"
			}
			path = append(path, seg)
		}
		body := "{}"
		switch rt.op {
		case "AddThingToThingGroup", "RemoveThingFromThingGroup":
			body = `{"thingName":"t","thingGroupName":"g"}`
		}
		_, _, err := authFor(t, s, rt.method, "/"+strings.Join(path, "/"), nil, body)
		var ae *apiError
		if errors.As(err, &ae) && ae.Status == 500 {
			t.Errorf("%s: %v", rt.op, err)
		}
	}
}

// iamLab is a lab API whose key "ASIAROLE" carries policy (a function role).
func iamLab(t *testing.T, policy string) *lab {
	t.Helper()
	d, err := iam.Parse([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	keys := &iam.Keyring{}
	keys.Add(&iam.Principal{Name: "Role", ARN: "arn:aws:sts::123456789012:assumed-role/role-x/fn-x", AccessKeyID: "ASIAROLE",
		SecretAccessKey: "role-secret", Policies: []*iam.Document{d}})
	keys.Add(&iam.Principal{Name: "admin", AccessKeyID: "AKIAADMIN", SecretAccessKey: "admin-secret", Admin: true})
	return startLab(t, labOpts{keys: keys})
}

func wantDenied(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	var ae smithy.APIError
	var re *smithyhttp.ResponseError
	if !errors.As(err, &ae) || ae.ErrorCode() != code || !errors.As(err, &re) || re.HTTPStatusCode() != 403 {
		t.Fatalf("%s: %v, want 403 %s", what, err, code)
	}
	if ae.ErrorMessage() != msg {
		t.Fatalf("%s: message %q, want %q", what, ae.ErrorMessage(), msg)
	}
}

// TestIAMEnforcedOnAPI: a role key may do what its policy grants, on the
// resources it grants, and nothing else: 403 AccessDeniedException with
// IAM's message on the control plane, ForbiddenException on the data
// plane; an explicit Deny wins. The admin key (no policy) may do all.
func TestIAMEnforcedOnAPI(t *testing.T) {
	l := iamLab(t, `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["iot:CreateThing","iot:DescribeThing","iot:AddThingToThingGroup"],
		 "Resource":["`+arnPrefix+`thing/gw-*","`+arnPrefix+`thinggroup/rotation"]},
		{"Effect":"Deny","Action":"iot:DescribeThing","Resource":"`+arnPrefix+`thing/gw-secret"},
		{"Effect":"Allow","Action":"iot:ListThings","Resource":"`+arnPrefix+`thing/*"},
		{"Effect":"Allow","Action":"iot:DescribeEndpoint","Resource":"*"},
		{"Effect":"Allow","Action":"iot:Publish","Resource":"`+arnPrefix+`topic/certificates/*/rotate/*"}]}`)
	role := l.client(t, "ASIAROLE", "role-secret", 1)
	admin := l.client(t, "AKIAADMIN", "admin-secret", 1)
	const who = "User: arn:aws:sts::123456789012:assumed-role/role-x/fn-x is not authorized to perform: "
	for _, th := range []string{"gw-1", "gw-secret", "other"} {
		if _, err := admin.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(th)}); err != nil {
			t.Fatalf("admin CreateThing %s: %v", th, err)
		}
	}
	if _, err := admin.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("rotation")}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("other")}); err != nil {
		t.Fatal(err)
	}
	// Granted.
	if _, err := role.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-2")}); err != nil {
		t.Fatalf("CreateThing gw-2 (granted): %v", err)
	}
	if _, err := role.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatalf("DescribeThing gw-1 (granted): %v", err)
	}
	if _, err := role.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingName: aws.String("gw-1"), ThingGroupName: aws.String("rotation")}); err != nil {
		t.Fatalf("AddThingToThingGroup (granted): %v", err)
	}
	if _, err := role.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")}); err != nil {
		t.Fatalf("DescribeEndpoint (granted on *): %v", err)
	}
	// Refused, and the registry unchanged.
	_, err := role.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-1")})
	wantDenied(t, "DeleteThing (no statement)", err, "AccessDeniedException",
		who+"iot:DeleteThing on resource: "+arnPrefix+"thing/gw-1 because no identity-based policy allows the iot:DeleteThing action")
	if _, err := admin.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatalf("gw-1 after the refused delete: %v", err)
	}
	_, err = role.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("other")})
	wantDenied(t, "DescribeThing other (resource not granted)", err, "AccessDeniedException",
		who+"iot:DescribeThing on resource: "+arnPrefix+"thing/other because no identity-based policy allows the iot:DescribeThing action")
	_, err = role.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-secret")})
	wantDenied(t, "DescribeThing gw-secret (explicit deny)", err, "AccessDeniedException",
		who+"iot:DescribeThing on resource: "+arnPrefix+"thing/gw-secret with an explicit deny in an identity-based policy")
	_, err = role.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingName: aws.String("gw-1"), ThingGroupName: aws.String("other")})
	wantDenied(t, "AddThingToThingGroup to another group (one required resource not granted)", err, "AccessDeniedException",
		who+"iot:AddThingToThingGroup on resource: "+arnPrefix+"thinggroup/other because no identity-based policy allows the iot:AddThingToThingGroup action")
	if gs, err := admin.ListThingGroupsForThing(ctx, &iot.ListThingGroupsForThingInput{ThingName: aws.String("gw-1")}); err != nil || len(gs.ThingGroups) != 1 {
		t.Fatalf("gw-1's groups after the refused add: %+v %v", gs, err)
	}
	// ListThings has no resource types: a grant on thing/* does not cover it.
	_, err = role.ListThings(ctx, &iot.ListThingsInput{})
	wantDenied(t, "ListThings granted on thing/* only", err, "AccessDeniedException",
		who+"iot:ListThings on resource: * because no identity-based policy allows the iot:ListThings action")

	// The data plane.
	publish := func(topic string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", l.http.URL+"/topics/"+topic+"?qos=1", bytes.NewReader([]byte("x")))
		signData(t, req, "ASIAROLE", "role-secret", []byte("x"))
		resp, err := l.httpClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m struct{ Message string }
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), m.Message
	}
	if st, typ, msg := publish("certificates%2Fgw-1%2Frotate%2Fstart"); st != 200 {
		t.Fatalf("Publish certificates/gw-1/rotate/start (granted): %d %s %s", st, typ, msg)
	}
	n := l.pub.count()
	st, typ, msg := publish("certificates%2Fgw-1%2Fget%2Faccepted")
	if st != 403 || typ != "ForbiddenException" ||
		msg != who+"iot:Publish on resource: "+arnPrefix+"topic/certificates/gw-1/get/accepted because no identity-based policy allows the iot:Publish action" {
		t.Fatalf("Publish certificates/gw-1/get/accepted (not granted): %d %s %q", st, typ, msg)
	}
	if l.pub.count() != n {
		t.Fatal("a refused Publish reached the broker")
	}
}

func (p *recorder) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.msgs)
}

// signData signs a data-plane request as the SDKs do (service iotdata).
func signData(t *testing.T, req *http.Request, ak, sk string, body []byte) {
	t.Helper()
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(ctx, aws.Credentials{AccessKeyID: ak, SecretAccessKey: sk}, req, hex.EncodeToString(sum[:]), "iotdata", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
}
