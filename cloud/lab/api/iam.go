package api

import (
	"strings"

	"github.com/bootcert/bootcert/cloud/lab/iam"
)

// IAM on the lab's IoT API (issue 11). A request signed with a key pair
// that carries policies (a template function's execution role, or the
// --credentials key pair with a "policy") is authorized as AWS authorizes
// it: each operation is the IAM action of the same name, on the resources
// the Service Authorization Reference lists for it ("Actions, resources,
// and condition keys for AWS IoT",
// https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html,
// the Resource types column; * marks a required type). The table below was
// taken from that page (through its machine-readable copy, the
// iann0036/iam-dataset aws/iam_definition.json, service prefix "iot"):
//
//	no resource types ("*"): GetRegistrationCode, RegisterCACertificate,
//	  RegisterCertificate, RegisterCertificateWithoutCA,
//	  CreateCertificateFromCsr, ListCACertificates, ListCertificates,
//	  ListCertificatesByCA, ListThings, ListPolicies, ListAttachedPolicies,
//	  ListThingGroups, ListJobs, DescribeEndpoint,
//	  UpdateEventConfigurations, DescribeEventConfigurations
//	cacert*: DescribeCACertificate, UpdateCACertificate, DeleteCACertificate
//	cert*: DescribeCertificate, UpdateCertificate, DeleteCertificate
//	cert (optional, condition key iot:thingArn): AttachThingPrincipal,
//	  DetachThingPrincipal
//	cert (optional): ListPrincipalThings
//	cert, thinggroup (optional): AttachPolicy, DetachPolicy (the target)
//	thing*: CreateThing (billinggroup optional), DescribeThing, UpdateThing,
//	  DeleteThing, ListThingPrincipals, ListThingGroupsForThing,
//	  ListJobExecutionsForThing
//	thingtype*: CreateThingType, DescribeThingType
//	thinggroup*: CreateThingGroup, DescribeThingGroup, DeleteThingGroup,
//	  ListThingsInThingGroup
//	thing*, thinggroup*: AddThingToThingGroup, RemoveThingFromThingGroup
//	policy*: CreatePolicy, GetPolicy, DeletePolicy, CreatePolicyVersion,
//	  ListPolicyVersions, SetDefaultPolicyVersion, DeletePolicyVersion
//	job*: DescribeJob, CancelJob, GetJobDocument
//	job*, thing*, thinggroup*: CreateJob (the job and each target)
//	job*, thing*: CancelJobExecution
//	job, thing (optional): DescribeJobExecution
//	topic*: Publish (the data plane)
//
// ARNs are arn:aws:iot:REGION:ACCOUNT:TYPE/NAME (the reference's Resource
// types table). A refusal is HTTP 403 AccessDeniedException on the control
// plane with IAM's message ("User: ARN is not authorized to perform:
// iot:X on resource: Y because no identity-based policy allows the iot:X
// action", https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html;
// AWS IoT answers it so, e.g.
// https://github.com/aws/aws-connected-device-framework/issues/36 and
// https://github.com/hashicorp/terraform-provider-aws/issues/29011), and
// HTTP 403 ForbiddenException on the data plane, the error the IoT data
// plane's SDK model names for "The caller isn't authorized to make the
// request" and what a role without iot:Publish gets
// (https://github.com/awslabs/aws-sdk-android-samples/issues/88,
// https://github.com/aws/aws-iot-device-sdk-js/issues/70).

// arn returns the ARN of an IoT resource of the lab's account and region.
func (s *Server) arn(kind, name string) string {
	return "arn:aws:iot:" + s.reg.Region() + ":" + s.reg.AccountID() + ":" + kind + "/" + name
}

// arnOf accepts a name or an ARN (requests may name things and groups
// either way).
func (s *Server) arnOf(kind, nameOrARN string) string {
	if strings.HasPrefix(nameOrARN, "arn:") {
		return nameOrARN
	}
	return s.arn(kind, nameOrARN)
}

// Authorization returns what IAM evaluates for operation op: its action,
// resources and condition keys. It reads the request's path variables,
// headers and body, never changing them.
func (s *Server) authorization(op string, q *request) (iam.ActionRequest, error) {
	a := iam.ActionRequest{Action: "iot:" + op}
	v := func(name string) string { return q.vars[name] }
	req := func(kind, name string) { a.Required = append(a.Required, s.arnOf(kind, name)) }
	switch op {
	case "GetRegistrationCode", "RegisterCACertificate", "RegisterCertificate", "RegisterCertificateWithoutCA",
		"CreateCertificateFromCsr", "ListCACertificates", "ListCertificates", "ListCertificatesByCA", "ListThings",
		"ListPolicies", "ListAttachedPolicies", "ListThingGroups", "ListJobs", "DescribeEndpoint",
		"UpdateEventConfigurations", "DescribeEventConfigurations":
	case "DescribeCACertificate", "UpdateCACertificate", "DeleteCACertificate":
		req("cacert", v("certificateId"))
	case "DescribeCertificate", "UpdateCertificate", "DeleteCertificate":
		req("cert", v("certificateId"))
	case "AttachThingPrincipal", "DetachThingPrincipal", "ListPrincipalThings":
		if p := q.http.Header.Get("X-Amzn-Principal"); strings.HasPrefix(p, "arn:") {
			a.Optional = append(a.Optional, p)
		}
		if op != "ListPrincipalThings" {
			a.Context = map[string]string{"iot:thingarn": s.arn("thing", v("thingName"))}
		}
	case "AttachPolicy", "DetachPolicy":
		var in struct {
			Target string `json:"target"`
		}
		if err := q.decode(&in); err != nil {
			return a, err
		}
		if strings.HasPrefix(in.Target, "arn:") {
			a.Optional = append(a.Optional, in.Target)
		}
	case "CreateThing", "DescribeThing", "UpdateThing", "DeleteThing", "ListThingPrincipals", "ListThingGroupsForThing",
		"ListJobExecutionsForThing":
		req("thing", v("thingName"))
	case "CreateThingType", "DescribeThingType":
		req("thingtype", v("thingTypeName"))
	case "CreateThingGroup", "DescribeThingGroup", "DeleteThingGroup", "ListThingsInThingGroup":
		req("thinggroup", v("thingGroupName"))
	case "AddThingToThingGroup", "RemoveThingFromThingGroup":
		var in groupMembership
		if err := q.decode(&in); err != nil {
			return a, err
		}
		g, t, err := in.names()
		if err != nil {
			return a, err
		}
		req("thing", t)
		req("thinggroup", g)
	case "CreatePolicy", "GetPolicy", "DeletePolicy", "CreatePolicyVersion", "ListPolicyVersions",
		"SetDefaultPolicyVersion", "DeletePolicyVersion":
		req("policy", v("policyName"))
	case "DescribeJob", "CancelJob", "GetJobDocument":
		req("job", v("jobId"))
	case "CreateJob":
		var in struct {
			Targets []string `json:"targets"`
		}
		if err := q.decode(&in); err != nil {
			return a, err
		}
		req("job", v("jobId"))
		// Targets are ARNs of things and thing groups.
		a.Required = append(a.Required, in.Targets...)
	case "CancelJobExecution":
		req("job", v("jobId"))
		req("thing", v("thingName"))
	case "DescribeJobExecution":
		a.Optional = []string{s.arn("job", v("jobId")), s.arn("thing", v("thingName"))}
	case "Publish":
		req("topic", v("topic"))
	default:
		// A route without an entry here is a lab bug; TestIAMTableCoversRoutes
		// fails on it. Refuse rather than allow.
		return a, &apiError{Type: "InternalFailureException", Status: 500, Message: "the lab has no IAM mapping for " + op}
	}
	return a, nil
}

// authorize decides a request signed by p; nil means allowed.
func (s *Server) authorize(p *iam.Principal, op string, q *request) error {
	a, err := s.authorization(op, q)
	if err != nil {
		return err
	}
	d, res := p.AuthorizeAction(a)
	if d.Allowed {
		return nil
	}
	msg := p.DeniedMessage(a.Action, res, d)
	s.log.Warn("iam denied", "principal", p.Name, "action", a.Action, "resource", res, "reason", d.Reason)
	if op == "Publish" {
		return &apiError{Type: "ForbiddenException", Status: 403, Message: msg}
	}
	return &apiError{Type: "AccessDeniedException", Status: 403, Message: msg}
}
