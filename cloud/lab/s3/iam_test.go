package s3

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/bootcert/bootcert/cloud/lab/iam"
	"github.com/bootcert/bootcert/internal/clock"
)

func (e *env) clientFor(ak, sk, region string) *awss3.Client {
	return awss3.NewFromConfig(aws.Config{Region: region, HTTPClient: e.http,
		Credentials: credentials.NewStaticCredentialsProvider(ak, sk, "")}, func(o *awss3.Options) {
		o.BaseEndpoint = aws.String(e.srv.URL)
		o.UsePathStyle = true
		o.RetryMaxAttempts = 1
	})
}

func mustPolicy(t *testing.T, doc string) []*iam.Document {
	t.Helper()
	d, err := iam.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return []*iam.Document{d}
}

func s3Status(err error) (int, string) {
	var re *smithyhttp.ResponseError
	var ae smithy.APIError
	status, code := 0, ""
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	return status, code
}

// TestIAMMissingKey: GetObject of a missing key answers 404 NoSuchKey to a
// principal that may s3:ListBucket the bucket and 403 AccessDenied to one
// that may not (API_GetObject.html, "Permissions"); a ListBucket grant
// limited by an s3:prefix condition does not count. Outside its policy a
// principal gets 403 AccessDenied; a request scoped to another region gets
// 400 AuthorizationHeaderMalformed.
func TestIAMMissingKey(t *testing.T) {
	e := start(t, t.TempDir(), clock.NewFake(time.Now()))
	keys := &iam.Keyring{}
	get := `{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject"],"Resource":"arn:aws:s3:::bootcert-certs/trust/*"}`
	keys.Add(&iam.Principal{Name: "reader", AccessKeyID: "ASIAREADER", SecretAccessKey: "s1",
		Policies: mustPolicy(t, `{"Version":"2012-10-17","Statement":[`+get+`]}`)})
	keys.Add(&iam.Principal{Name: "lister", AccessKeyID: "ASIALISTER", SecretAccessKey: "s2",
		Policies: mustPolicy(t, `{"Version":"2012-10-17","Statement":[`+get+`,{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::bootcert-certs"}]}`)})
	keys.Add(&iam.Principal{Name: "prefixed", AccessKeyID: "ASIAPREFIXED", SecretAccessKey: "s3",
		Policies: mustPolicy(t, `{"Version":"2012-10-17","Statement":[`+get+`,{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::bootcert-certs","Condition":{"StringLike":{"s3:prefix":"trust/*"}}}]}`)})
	e.store.keys = keys
	ctx := context.Background()
	in := func(k string) *awss3.GetObjectInput {
		return &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String(k)}
	}
	reader, lister, prefixed := e.clientFor("ASIAREADER", "s1", "us-east-1"), e.clientFor("ASIALISTER", "s2", "us-east-1"), e.clientFor("ASIAPREFIXED", "s3", "us-east-1")
	if _, err := reader.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("trust/a"), Body: bytes.NewReader([]byte("a"))}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		c      *awss3.Client
		key    string
		status int
		code   string
	}{
		{"ok/reader existing key", reader, "trust/a", 200, ""},
		{"fail/reader missing key, no ListBucket", reader, "trust/none", 403, "AccessDenied"},
		{"fail/lister missing key, ListBucket", lister, "trust/none", 404, "NoSuchKey"},
		{"fail/prefix-conditioned ListBucket", prefixed, "trust/none", 403, "AccessDenied"},
		{"fail/reader outside its policy", reader, "packages/a", 403, "AccessDenied"},
		{"fail/lister outside its policy, missing", lister, "packages/a", 403, "AccessDenied"},
	} {
		_, err := tc.c.GetObject(ctx, in(tc.key))
		status, code := s3Status(err)
		if err == nil {
			status = 200
		}
		if status != tc.status || code != tc.code {
			t.Errorf("%s: %v (HTTP %d %s), want HTTP %d %s", tc.name, err, status, code, tc.status, tc.code)
		}
	}
	// ListObjectsV2 under the prefix the condition allows, and outside it.
	if _, err := prefixed.ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: aws.String("bootcert-certs"), Prefix: aws.String("trust/")}); err != nil {
		t.Errorf("ListObjectsV2 trust/ with s3:prefix trust/*: %v", err)
	}
	_, err := prefixed.ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: aws.String("bootcert-certs"), Prefix: aws.String("packages/")})
	if status, code := s3Status(err); status != 403 || code != "AccessDenied" {
		t.Errorf("ListObjectsV2 packages/ with s3:prefix trust/*: %v", err)
	}
	// Another region: refused before the key is looked at.
	_, err = e.clientFor("ASIALISTER", "s2", "eu-west-1").GetObject(ctx, in("trust/a"))
	if status, code := s3Status(err); status != 400 || code != "AuthorizationHeaderMalformed" {
		t.Errorf("GetObject scoped to eu-west-1: %v, want 400 AuthorizationHeaderMalformed", err)
	}
	// A wrong secret for a known key.
	_, err = e.clientFor("ASIALISTER", "wrong", "us-east-1").GetObject(ctx, in("trust/a"))
	if status, code := s3Status(err); status != 403 || code != "SignatureDoesNotMatch" {
		t.Errorf("GetObject with a wrong secret: %v, want 403 SignatureDoesNotMatch", err)
	}
}
