package cloudaws

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/ports"
)

// MaxObject bounds what Store.Get reads.
const MaxObject = 64 << 20

// Store is ports.Store over one S3 bucket.
type Store struct {
	S3     *s3.Client
	Bucket string
}

// NewS3Client makes an S3 client; a non-empty endpoint overrides the base
// endpoint and switches to path-style addressing (the lab).
func NewS3Client(cfg aws.Config, endpoint string) *s3.Client {
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
			o.UsePathStyle = true
		}
		o.RetryMaxAttempts = 1
	})
}

// NewStore makes a Store.
func NewStore(cfg aws.Config, bucket, endpoint string) *Store {
	return &Store{S3: NewS3Client(cfg, endpoint), Bucket: bucket}
}

func (s *Store) where(key string) string { return "s3://" + s.Bucket + "/" + key }

// Get implements ports.Store.
func (s *Store) Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error) {
	in := &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)}
	if ifNoneMatch != "" {
		in.IfNoneMatch = aws.String(ifNoneMatch)
	}
	out, err := s.S3.GetObject(ctx, in)
	if err != nil {
		return ports.Object{}, mapErr("GetObject", s.where(key), err)
	}
	defer out.Body.Close()
	etag := aws.ToString(out.ETag)
	if ifNoneMatch != "" && etag == ifNoneMatch {
		return ports.Object{}, fmt.Errorf("GetObject %s: %w", s.where(key), ports.ErrNotModified)
	}
	body, err := io.ReadAll(io.LimitReader(out.Body, MaxObject+1))
	if err != nil {
		return ports.Object{}, fmt.Errorf("reading %s: %w", s.where(key), err)
	}
	if len(body) > MaxObject {
		return ports.Object{}, fmt.Errorf("reading %s: larger than %d bytes", s.where(key), MaxObject)
	}
	return ports.Object{Body: body, ETag: etag, Metadata: out.Metadata}, nil
}

// Put implements ports.Store.
func (s *Store) Put(ctx context.Context, key string, body []byte, metadata map[string]string) error {
	_, err := s.S3.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.Bucket), Key: aws.String(key), Body: bytes.NewReader(body),
		ContentLength: aws.Int64(int64(len(body))), Metadata: metadata,
	})
	return mapErr("PutObject", s.where(key), err)
}

// PutIfAbsent implements ports.Store with a conditional PutObject
// (If-None-Match: "*"): S3 answers 412 PreconditionFailed when the key
// exists, 409 ConditionalRequestConflict while a concurrent conditional
// write of the key is in flight
// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html).
func (s *Store) PutIfAbsent(ctx context.Context, key string, body []byte, metadata map[string]string) error {
	_, err := s.S3.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.Bucket), Key: aws.String(key), Body: bytes.NewReader(body),
		ContentLength: aws.Int64(int64(len(body))), Metadata: metadata, IfNoneMatch: aws.String("*"),
	})
	return mapErr("PutObject If-None-Match", s.where(key), err)
}

// List implements ports.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	p := s3.NewListObjectsV2Paginator(s.S3, &s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return nil, mapErr("ListObjectsV2", s.where(prefix), err)
		}
		for _, o := range out.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys, nil
}

// Delete implements ports.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.S3.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)})
	return mapErr("DeleteObject", s.where(key), err)
}

// Presign implements ports.Store.
func (s *Store) Presign(ctx context.Context, key string, ttl time.Duration) (string, error) {
	req, err := s3.NewPresignClient(s.S3).PresignGetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(key)}, s3.WithPresignExpires(ttl))
	if err != nil {
		return "", fmt.Errorf("presigning %s: %w", s.where(key), err)
	}
	return req.URL, nil
}
