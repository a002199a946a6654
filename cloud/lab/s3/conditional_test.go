package s3

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/bootcert/bootcert/internal/clock"
)

// TestPutIfNoneMatch: PutObject with If-None-Match: "*" creates an object
// only when the key is free, else 412 PreconditionFailed, like S3
// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html);
// of concurrent conditional writers exactly one wins.
func TestPutIfNoneMatch(t *testing.T) {
	e := start(t, t.TempDir(), clock.NewFake(time.Now()))
	ctx := context.Background()
	put := func(key, body string) error {
		_, err := e.client.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String(key),
			Body: strings.NewReader(body), IfNoneMatch: aws.String("*")})
		return err
	}
	if err := put("issuance/a.json", "first"); err != nil {
		t.Fatalf("conditional put of a new key: %v", err)
	}
	err := put("issuance/a.json", "second")
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "PreconditionFailed" {
		t.Fatalf("conditional put of an existing key: %v, want PreconditionFailed", err)
	}
	out, err := e.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("issuance/a.json")})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 16)
	nb, _ := out.Body.Read(b)
	out.Body.Close()
	if string(b[:nb]) != "first" {
		t.Errorf("object is %q after a refused conditional put", b[:nb])
	}

	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, lost := 0, 0
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := put("issuance/b.json", strings.Repeat("x", i+1))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.As(err, &ae) && ae.ErrorCode() == "PreconditionFailed":
				lost++
			default:
				t.Errorf("concurrent conditional put: %v", err)
			}
		}()
	}
	wg.Wait()
	if won != 1 || lost != n-1 {
		t.Errorf("%d concurrent conditional puts: %d succeeded, %d refused; want 1 and %d", n, won, lost, n-1)
	}
}
