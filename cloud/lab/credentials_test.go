package lab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// TestS3ChecksCredentials: with --credentials the lab's S3 accepts only
// requests signed with that key pair, like its IoT API.
func TestS3ChecksCredentials(t *testing.T) {
	dir := t.TempDir()
	credPath := filepath.Join(dir, "creds.json")
	if err := os.WriteFile(credPath, []byte(`{"accessKeyId":"AKIALABTEST","secretAccessKey":"lab-test-secret"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	l := start(t, Config{CredentialsPath: credPath})
	if err := l.s3.CreateBucket("creds-test"); err != nil {
		t.Fatal(err)
	}
	client := func(ak, sk string) *s3.Client {
		c := ClientConfig(l.ServerCAPEM(), "us-east-1")
		c.Credentials = credentials.NewStaticCredentialsProvider(ak, sk, "")
		return s3.NewFromConfig(c, func(o *s3.Options) { o.BaseEndpoint = aws.String(l.Endpoints().S3); o.UsePathStyle = true })
	}
	put := func(c *s3.Client) error {
		_, err := c.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String("creds-test"), Key: aws.String("k"), Body: strings.NewReader("v")})
		return err
	}
	if err := put(client("AKIALABTEST", "lab-test-secret")); err != nil {
		t.Fatalf("PutObject with the lab's credentials: %v", err)
	}
	for _, tc := range []struct{ name, ak, sk, code string }{
		{"fail/unknown key", "AKIAOTHER", "lab-test-secret", "InvalidAccessKeyId"},
		{"fail/wrong secret", "AKIALABTEST", "wrong", "SignatureDoesNotMatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ae smithy.APIError
			if err := put(client(tc.ak, tc.sk)); !errors.As(err, &ae) || ae.ErrorCode() != tc.code {
				t.Fatalf("PutObject: %v, want %s", err, tc.code)
			}
		})
	}
}

// TestCredentialsPolicyOnIoT: a --credentials key pair that carries an IAM
// policy is authorized with it on the IoT API too: what the policy grants
// succeeds, anything else is 403 AccessDeniedException naming the key's
// user and the resource.
func TestCredentialsPolicyOnIoT(t *testing.T) {
	credPath := filepath.Join(t.TempDir(), "creds.json")
	if err := os.WriteFile(credPath, []byte(`{"accessKeyId":"AKIALABPOL","secretAccessKey":"lab-pol-secret","policy":
		{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:CreateThing","iot:DescribeThing"],
		 "Resource":"arn:aws:iot:us-east-1:123456789012:thing/gw-*"}]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	l := start(t, Config{CredentialsPath: credPath})
	c := ClientConfig(l.ServerCAPEM(), "us-east-1")
	c.Credentials = credentials.NewStaticCredentialsProvider("AKIALABPOL", "lab-pol-secret", "")
	c.RetryMaxAttempts = 1
	api := iot.NewFromConfig(c, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) })
	ctx := context.Background()
	if _, err := api.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatalf("CreateThing gw-1 (granted): %v", err)
	}
	if _, err := api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")}); err != nil {
		t.Fatalf("DescribeThing gw-1 (granted): %v", err)
	}
	var ae smithy.APIError
	_, err := api.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("other")})
	if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDeniedException" || ae.ErrorMessage() != "User: arn:aws:iam::123456789012:user/bootcert-lab "+
		"is not authorized to perform: iot:CreateThing on resource: arn:aws:iot:us-east-1:123456789012:thing/other because no identity-based policy allows the iot:CreateThing action" {
		t.Fatalf("CreateThing other (not granted): %v", err)
	}
	_, err = api.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-1")})
	if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDeniedException" {
		t.Fatalf("DeleteThing gw-1 (not granted): %v", err)
	}
	if _, err := l.reg.DescribeThing("gw-1"); err != nil {
		t.Fatalf("gw-1 after the refused delete: %v", err)
	}
}
