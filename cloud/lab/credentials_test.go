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
