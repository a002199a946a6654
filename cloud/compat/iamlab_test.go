package compat_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/bootcert/bootcert/cloud"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/manifest"
)

// The lab runs each function with its template role's permissions
// (issue 11): these tests use the real template and the functions the lab
// builds in-process, each signing with its own role's key pair.

// TestIAMActivatorWithoutCRL: `cloud setup` without a CRL (allowed; the
// demo does it) leaves trust/factory.crl absent. S3 answers GetObject of a
// missing key 403 AccessDenied to a caller without s3:ListBucket on the
// bucket, 404 NoSuchKey to one with it
// (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html,
// "Permissions"); the activator treats only "not found" as "no CRL". With a
// role that cannot list the bucket, no device is ever admitted.
func TestIAMActivatorWithoutCRL(t *testing.T) {
	r := startLab(t, nil)
	const thing = "gw-nocrl"
	dev := r.ca.Issue(t, thing, time.Now())
	res, err := setup.Run(context.Background(), r.iot, r.s3, setup.Options{Bucket: bucket, CACert: r.ca.Cert, CASigner: r.ca.Key,
		AllowList: testpki.AllowList(t, manifest.Entry{DeviceID: thing})})
	if err != nil {
		t.Fatalf("cloud setup: %v", err)
	}
	r.setup = res
	if _, err := r.s3.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("trust/factory.crl")}); err == nil {
		t.Fatal("setup without a CRL uploaded one")
	}
	jitrConnect(t, r, dev)
	eventually(t, "the activator admits the device (certificate ACTIVE)", func() bool { return r.certStatus(dev.CertID) == "ACTIVE" })
}

// roleS3 is an S3 client signing with a template function's role.
func roleS3(t *testing.T, r *rig, logicalID string) *s3.Client {
	t.Helper()
	ak, sk, ok := r.lab.FunctionCredentials(logicalID)
	if !ok {
		t.Fatalf("the lab has no role for %s", logicalID)
	}
	ac := lab.ClientConfig(r.lab.ServerCAPEM(), "us-east-1")
	ac.Credentials = credentials.NewStaticCredentialsProvider(ak, sk, "")
	return s3.NewFromConfig(ac, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(r.lab.Endpoints().S3)
		o.UsePathStyle = true
		o.RetryMaxAttempts = 1
	})
}

func wantS3Error(t *testing.T, what string, err error, code string, status int) {
	t.Helper()
	var ae smithy.APIError
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != status {
		t.Fatalf("%s: %v, want HTTP %d", what, err, status)
	}
	// HEAD answers have no body, hence no error code.
	if code != "" && (!errors.As(err, &ae) || ae.ErrorCode() != code) {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
}

// TestIAMVendorOutsideItsRole: the vendor's role may read trust/* but not
// write it, nor read or write outside the prefixes it is granted; inside
// them it works. What S3 answers for a missing key follows its
// s3:ListBucket grant.
func TestIAMVendorOutsideItsRole(t *testing.T) {
	r := startLab(t, nil)
	r.runSetup([]manifest.Entry{{DeviceID: "gw-1"}})
	ctx := context.Background()
	v := roleS3(t, r, cloud.Vendor)
	put := func(c *s3.Client, key string) error {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader([]byte("x"))})
		return err
	}
	if _, err := v.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("trust/allow-list.csv")}); err != nil {
		t.Fatalf("vendor GetObject trust/allow-list.csv (granted): %v", err)
	}
	if err := put(v, "issuance/gw-1.json"); err != nil {
		t.Fatalf("vendor PutObject issuance/ (granted): %v", err)
	}
	wantS3Error(t, "vendor PutObject trust/factory.crl (not granted)", put(v, "trust/factory.crl"), "AccessDenied", http.StatusForbidden)
	wantS3Error(t, "vendor PutObject rejections/x (not granted)", put(v, "rejections/x"), "AccessDenied", http.StatusForbidden)
	_, err := v.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String("trust/allow-list.csv")})
	wantS3Error(t, "vendor DeleteObject trust/allow-list.csv (not granted)", err, "AccessDenied", http.StatusForbidden)
	if _, err := r.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("trust/allow-list.csv")}); err != nil {
		t.Fatalf("the allow list after the refused delete: %v", err)
	}
	// A missing key the vendor may read: 404 NoSuchKey, as the vendor's
	// role may list the bucket.
	_, err = v.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("issuance/none.json")})
	wantS3Error(t, "vendor GetObject of a missing issuance record", err, "NoSuchKey", http.StatusNotFound)
	// The renewal role may not put anything anywhere.
	wantS3Error(t, "renewal PutObject packages/x", put(roleS3(t, r, cloud.Renewal), "packages/x"), "AccessDenied", http.StatusForbidden)
}
