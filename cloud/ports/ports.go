// Package ports is the contract of the cloud functions' adapters: the AWS IoT
// registry (control plane), an object store (S3) and a publisher (IoT data
// plane), with the values they return and the sentinel errors they map
// failures to. cloud/aws implements them over aws-sdk-go-v2 and
// cloud/internal/fake in memory for unit tests. Each function declares the
// narrow interface it uses in its own package (renewal.Registry has 2 of
// Registry's methods); these are the union, which the adapters satisfy and
// RetryingRegistry wraps. Time is internal/clock.
package ports

import (
	"context"
	"errors"
	"time"

	"github.com/bootcert/bootcert/protocol"
)

// Sentinel errors every adapter maps its failures to (wrapped with context).
var (
	// ErrNotFound: the thing, certificate, object or job execution does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: the resource already exists (create is not idempotent upstream).
	ErrExists = errors.New("already exists")
	// ErrThrottled: the service asked us to slow down; the call may be retried.
	ErrThrottled = errors.New("throttled")
	// ErrNotModified: a conditional read found the object unchanged.
	ErrNotModified = errors.New("not modified")
)

// Certificate status values (AWS IoT).
const (
	StatusActive            = "ACTIVE"
	StatusInactive          = "INACTIVE"
	StatusRevoked           = "REVOKED"
	StatusPendingActivation = "PENDING_ACTIVATION"
)

// Certificate is what the registry knows about a device certificate.
type Certificate struct {
	ID              string // lower-hex SHA-256 of the DER
	ARN             string
	Status          string
	PEM             string
	CACertificateID string
}

// Thing is a registry thing.
type Thing struct {
	Name       string
	Type       string
	Attributes map[string]string
	Version    int64
}

// Registry is the part of the AWS IoT control plane the functions use, all
// of them together.
type Registry interface {
	DescribeCertificate(ctx context.Context, id string) (Certificate, error)
	UpdateCertificate(ctx context.Context, id, status string) error
	DeleteCertificate(ctx context.Context, id string) error
	CreateCertificateFromCSR(ctx context.Context, csrPEM string, active bool) (Certificate, error)

	// CreateThing returns an error wrapping ErrExists when the thing exists.
	CreateThing(ctx context.Context, name, thingType string, attrs map[string]string) error
	DescribeThing(ctx context.Context, name string) (Thing, error)
	// UpdateThingAttributes merges attrs into the thing's attributes; an
	// empty value removes the attribute.
	UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error
	// ListThings lists things of a type, one page at a time.
	ListThings(ctx context.Context, thingType, nextToken string) (things []Thing, next string, err error)

	AttachPolicy(ctx context.Context, policy, targetARN string) error
	DetachPolicy(ctx context.Context, policy, targetARN string) error
	AttachThingPrincipal(ctx context.Context, thing, principalARN string) error
	DetachThingPrincipal(ctx context.Context, thing, principalARN string) error
	ListThingPrincipals(ctx context.Context, thing string) ([]string, error)

	AddThingToGroup(ctx context.Context, group, thing string) error
	RemoveThingFromGroup(ctx context.Context, group, thing string) error
	ListThingGroupsForThing(ctx context.Context, thing string) ([]string, error)

	// JobExecutionStatus returns the status of a thing's execution of a job.
	JobExecutionStatus(ctx context.Context, jobID, thing string) (protocol.JobStatus, error)
}

// Object is an object read from the store.
type Object struct {
	Body     []byte
	ETag     string
	Metadata map[string]string
}

// Store is the subset of S3 the functions use (one bucket).
type Store interface {
	// Get reads an object. When ifNoneMatch is the object's current ETag it
	// returns an error wrapping ErrNotModified.
	Get(ctx context.Context, key, ifNoneMatch string) (Object, error)
	Put(ctx context.Context, key string, body []byte, metadata map[string]string) error
	// PutIfAbsent writes an object only when no object has the key (an S3
	// conditional write, If-None-Match: "*"); when one exists it returns an
	// error wrapping ErrExists. Of concurrent writers exactly one wins.
	PutIfAbsent(ctx context.Context, key string, body []byte, metadata map[string]string) error
	// List returns the keys under a prefix.
	List(ctx context.Context, prefix string) ([]string, error)
	Delete(ctx context.Context, key string) error
	// Presign returns an HTTPS GET URL valid for ttl. The URL's query string
	// is a credential: never log it.
	Presign(ctx context.Context, key string, ttl time.Duration) (string, error)
}

// Publisher publishes MQTT messages through the broker (QoS 1).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte) error
}
