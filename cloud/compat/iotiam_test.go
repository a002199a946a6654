package compat_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/smithy-go"

	"github.com/bootcert/bootcert/cloud"
	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/manifest"
)

// The lab's IoT API authorizes each function's calls with its template
// role (issue 11): the action and resources the Service Authorization
// Reference lists for the operation
// (https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html).
// These tests drive the functions' own AWS adapter (cloud/aws) with a
// role's key pair, as the function signs in the lab and on AWS.

// roleRegistry is the cloud/aws adapter a function builds, signing with
// the function's role.
func roleRegistry(t *testing.T, r *rig, logicalID string) (*cloudaws.Registry, aws.Config) {
	t.Helper()
	ak, sk, ok := r.lab.FunctionCredentials(logicalID)
	if !ok {
		t.Fatalf("the lab has no role for %s", logicalID)
	}
	ac := lab.ClientConfig(r.lab.ServerCAPEM(), "us-east-1")
	ac.Credentials = credentials.NewStaticCredentialsProvider(ak, sk, "")
	ac.RetryMaxAttempts = 1
	return cloudaws.NewRegistry(ac, r.lab.Endpoints().API), ac
}

// wantAccessDenied: err is IAM's refusal of action on resource to the role
// of function fn (a logical ID), as AWS
// words it (https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_access-denied.html).
func wantAccessDenied(t *testing.T, what string, err error, fn, action, resource string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDeniedException" {
		t.Fatalf("%s: %v, want AccessDeniedException", what, err)
	}
	want := "is not authorized to perform: " + action + " on resource: " + resource + " because no identity-based policy allows the " + action + " action"
	if !strings.HasPrefix(ae.ErrorMessage(), "User: arn:aws:sts::123456789012:assumed-role/"+fn+"Role/") ||
		!strings.Contains(ae.ErrorMessage(), want) {
		t.Fatalf("%s: message %q, want the role session of %s and %q", what, ae.ErrorMessage(), fn, want)
	}
}

// TestIAMIoTOutsideRole: the activator may not create jobs and the vendor
// may not delete things: the lab refuses both with AccessDeniedException
// and changes nothing, while the calls their roles grant succeed; the
// renewal role may create rotation jobs (job/bootcert-r-*) only, and
// publish only to certificates/*/rotate/*.
func TestIAMIoTOutsideRole(t *testing.T) {
	r := startLab(t, nil)
	r.runSetup([]manifest.Entry{{DeviceID: "gw-1"}})
	ctx := context.Background()
	if _, err := r.iot.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatal(err)
	}
	thingARN := "arn:aws:iot:us-east-1:123456789012:thing/gw-1"

	activator, _ := roleRegistry(t, r, cloud.Activator)
	if _, err := activator.DescribeThing(ctx, "gw-1"); err != nil {
		t.Fatalf("activator DescribeThing (granted): %v", err)
	}
	err := activator.CreateJob(ctx, ports.JobSpec{ID: "bootcert-r-gw-1-x", Things: []string{"gw-1"}, Document: `{"operation":"rotate"}`})
	wantAccessDenied(t, "activator CreateJob", err, cloud.Activator, "iot:CreateJob", "arn:aws:iot:us-east-1:123456789012:job/bootcert-r-gw-1-x")
	if _, err := r.iot.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("bootcert-r-gw-1-x")}); err == nil {
		t.Fatal("the refused CreateJob created the job")
	}

	vendor, vcfg := roleRegistry(t, r, cloud.Vendor)
	if _, err := vendor.ListThingPrincipals(ctx, "gw-1"); err != nil {
		t.Fatalf("vendor ListThingPrincipals (granted): %v", err)
	}
	wantAccessDenied(t, "vendor DeleteThing", vendor.DeleteThing(ctx, "gw-1"), cloud.Vendor, "iot:DeleteThing", thingARN)
	if _, err := r.iot.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatalf("gw-1 after the vendor's refused DeleteThing: %v", err)
	}
	// The vendor publishes certificates/* (granted).
	vpub := &cloudaws.Publisher{Config: vcfg, Endpoint: r.lab.Endpoints().API}
	if err := vpub.Publish(ctx, "certificates/gw-1/get/accepted", []byte(`{}`)); err != nil {
		t.Fatalf("vendor Publish certificates/gw-1/get/accepted (granted): %v", err)
	}

	renewal, rcfg := roleRegistry(t, r, cloud.Renewal)
	if err := renewal.CreateJob(ctx, ports.JobSpec{ID: "bootcert-r-gw-1-1", Things: []string{"gw-1"}, Document: `{"operation":"rotate"}`}); err != nil {
		t.Fatalf("renewal CreateJob bootcert-r-* (granted): %v", err)
	}
	err = renewal.CreateJob(ctx, ports.JobSpec{ID: "other-job", Things: []string{"gw-1"}, Document: `{"operation":"rotate"}`})
	wantAccessDenied(t, "renewal CreateJob outside job/bootcert-r-*", err, cloud.Renewal, "iot:CreateJob", "arn:aws:iot:us-east-1:123456789012:job/other-job")
	// The data plane refuses with 403 ForbiddenException.
	rpub := &cloudaws.Publisher{Config: rcfg, Endpoint: r.lab.Endpoints().API}
	if err := rpub.Publish(ctx, "certificates/gw-1/rotate/start", []byte(`{}`)); err != nil {
		t.Fatalf("renewal Publish certificates/gw-1/rotate/start (granted): %v", err)
	}
	err = rpub.Publish(ctx, "certificates/gw-1/get/accepted", []byte(`{}`))
	if err == nil || !strings.Contains(err.Error(), "HTTP 403") || !strings.Contains(err.Error(), "iot:Publish on resource: arn:aws:iot:us-east-1:123456789012:topic/certificates/gw-1/get/accepted") {
		t.Fatalf("renewal Publish certificates/gw-1/get/accepted (not granted): %v, want HTTP 403 naming iot:Publish and the topic", err)
	}
}
