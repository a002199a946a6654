// Package limits holds the lab's quotas: per-API transactions per second
// for the REST control plane and connect rates for the MQTT broker, loaded
// from a JSON file (bootcert-lab --limits FILE) or a preset, and a token
// bucket limiter over an injected clock. Beyond a quota the API answers
// ThrottlingException and the broker refuses the connect, like AWS.
package limits

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
)

// Limits are rates in requests per second; 0 (or absent) means unlimited.
//
// File format (unknown keys are errors):
//
//	{"api": {"CreateCertificateFromCsr": 15, "*": 100},
//	 "connectsPerSecond": 500, "connectsPerClientPerSecond": 1,
//	 "publishesPerConnectionPerSecond": 100}
//
// "api" keys are operation names as in the AWS IoT API reference
// (CreateThing, DescribeThing, Publish, ...); "*" applies to every operation
// without its own entry.
type Limits struct {
	API                             map[string]float64 `json:"api,omitempty"`
	ConnectsPerSecond               float64            `json:"connectsPerSecond,omitempty"`
	ConnectsPerClientPerSecond      float64            `json:"connectsPerClientPerSecond,omitempty"`
	PublishesPerConnectionPerSecond float64            `json:"publishesPerConnectionPerSecond,omitempty"`
}

// PresetAWSDefault names AWS IoT Core's default quotas.
const PresetAWSDefault = "aws-default"

// AWSDefault returns AWS IoT Core's default quotas (us-east-1). Only the
// message-broker figures are cited; the control-plane TPS figures are not
// verified (see the comment on API below). Before relying on one, read
// your account's value: aws service-quotas list-aws-default-service-quotas
// --service-code iotcore (quota names "<Operation> API TPS").
func AWSDefault() Limits {
	return Limits{
		// Message broker, "AWS IoT Core endpoints and quotas",
		// https://docs.aws.amazon.com/general/latest/gr/iot-core.html#message-broker-limits
		// (older copy: https://docs.aws.amazon.com/iot/latest/developerguide/limits-iot.html,
		// "Message Broker Limits"): "Connect requests per second per account"
		// 500 (adjustable), "Connect requests per second per client ID" 1
		// (not adjustable).
		ConnectsPerSecond:          500,
		ConnectsPerClientPerSecond: 1,
		// "Publish requests per second per connection" 100, same page
		// (#message-broker-limits), as quoted in
		// https://repost.aws/questions/QUU4YesJwfS7GEW0U8WCxamw; the table
		// itself was not in the copies searched.
		PublishesPerConnectionPerSecond: 100,
		// Control plane: NOT VERIFIED. These follow the "API throttling"
		// table of https://docs.aws.amazon.com/general/latest/gr/iot-core.html
		// as the lab's authors remembered it. Searching the stored copies of
		// that page (2026-11-27: "DescribeCertificate TPS",
		// "CreateCertificateFromCsr transactions per second", ...) found the
		// page but never its quota table, so no figure below could be
		// checked; they are kept so that the preset still throttles the
		// control plane at plausible rates. Treat each as unknown.
		API: map[string]float64{
			// Certificates (unverified).
			"CreateCertificateFromCsr":     15,
			"DeleteCertificate":            10,
			"DescribeCACertificate":        10,
			"DescribeCertificate":          10,
			"GetRegistrationCode":          10,
			"RegisterCACertificate":        10,
			"RegisterCertificate":          10,
			"RegisterCertificateWithoutCA": 10,
			"UpdateCACertificate":          10,
			"UpdateCertificate":            10,
			// Policies (unverified).
			"AttachPolicy":         15,
			"CreatePolicy":         10,
			"DetachPolicy":         15,
			"GetPolicy":            15,
			"ListAttachedPolicies": 15,
			// Things, principals, groups (unverified).
			"AddThingToThingGroup":      100,
			"AttachThingPrincipal":      100,
			"CreateThing":               100,
			"CreateThingGroup":          25,
			"CreateThingType":           15,
			"DeleteThing":               100,
			"DescribeThing":             350,
			"DescribeThingGroup":        100,
			"DetachThingPrincipal":      100,
			"ListPrincipalThings":       10,
			"ListThingGroupsForThing":   100,
			"ListThingPrincipals":       10,
			"ListThings":                10,
			"ListThingsInThingGroup":    25,
			"RemoveThingFromThingGroup": 100,
			"UpdateThing":               100,
			// Jobs, an AWS IoT Device Management feature: its quotas are on
			// https://docs.aws.amazon.com/general/latest/gr/iot_device_management.html
			// (not https://docs.aws.amazon.com/iot/latest/developerguide/job-limits.html,
			// which lists pending-execution and concurrency limits only).
			// The searched copies did not include the TPS table: unverified.
			"CancelJobExecution":        10,
			"CreateJob":                 10,
			"DescribeJob":               10,
			"DescribeJobExecution":      10,
			"ListJobExecutionsForThing": 10,
			// Other (unverified).
			"DescribeEndpoint": 10,
			"Publish":          20000,
		},
	}
}

// ErrInvalid is wrapped by every error about a bad limits file.
var ErrInvalid = errors.New("invalid limits")

// Load reads a limits file, or returns the preset when path is
// "aws-default". An empty path means no limits.
func Load(path string) (Limits, error) {
	switch path {
	case "":
		return Limits{}, nil
	case PresetAWSDefault:
		return AWSDefault(), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return Limits{}, fmt.Errorf("loading limits: %w (give a JSON file or %q)", err, PresetAWSDefault)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return Limits{}, fmt.Errorf("loading limits %s: %w", path, err)
	}
	l, err := Parse(data)
	if err != nil {
		return Limits{}, fmt.Errorf("limits file %s: %w", path, err)
	}
	return l, nil
}

// Parse decodes and validates a limits document.
func Parse(data []byte) (Limits, error) {
	var l Limits
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return Limits{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if dec.More() {
		return Limits{}, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	check := func(key string, v float64) error {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: %s must be a rate >= 0 (0 = unlimited), got %v", ErrInvalid, key, v)
		}
		return nil
	}
	for _, k := range slices.Sorted(maps.Keys(l.API)) {
		if k == "" {
			return Limits{}, fmt.Errorf("%w: api: empty operation name", ErrInvalid)
		}
		if err := check("api."+k, l.API[k]); err != nil {
			return Limits{}, err
		}
	}
	for k, v := range map[string]float64{"connectsPerSecond": l.ConnectsPerSecond,
		"connectsPerClientPerSecond": l.ConnectsPerClientPerSecond, "publishesPerConnectionPerSecond": l.PublishesPerConnectionPerSecond} {
		if err := check(k, v); err != nil {
			return Limits{}, err
		}
	}
	return l, nil
}

// APIRate is the TPS for op (0 = unlimited).
func (l Limits) APIRate(op string) float64 {
	if r, ok := l.API[op]; ok {
		return r
	}
	return l.API["*"]
}

// bucket is a token bucket holding at most max(1, rate) tokens, refilled at
// rate per second.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) take(rate float64, now time.Time) bool {
	capacity := math.Max(1, rate)
	if b.last.IsZero() {
		b.tokens = capacity
	} else if d := now.Sub(b.last).Seconds(); d > 0 {
		b.tokens = math.Min(capacity, b.tokens+d*rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// maxClientBuckets bounds per-client state; idle full buckets are dropped
// beyond it.
const maxClientBuckets = 100000

// Limiter enforces Limits. Safe for concurrent use.
type Limiter struct {
	limits Limits
	clock  clock.Clock

	mu      sync.Mutex
	api     map[string]*bucket
	connect bucket
	clients map[string]*bucket
	publish map[string]*bucket
}

// NewLimiter returns a limiter for l; clock may be nil.
func NewLimiter(l Limits, clk clock.Clock) *Limiter {
	if clk == nil {
		clk = clock.Real{}
	}
	return &Limiter{limits: l, clock: clk, api: map[string]*bucket{}, clients: map[string]*bucket{}, publish: map[string]*bucket{}}
}

// Limits returns the limits enforced.
func (l *Limiter) Limits() Limits { return l.limits }

// AllowAPI takes a token for operation op; false means throttle.
func (l *Limiter) AllowAPI(op string) bool {
	rate := l.limits.APIRate(op)
	if rate == 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.api[op]
	if b == nil {
		b = &bucket{}
		l.api[op] = b
	}
	return b.take(rate, l.clock.Now())
}

// AllowConnect takes a token from the account's connect bucket and from the
// client ID's; false means refuse the connect. A refusal by the per-client
// bucket does not use an account token.
func (l *Limiter) AllowConnect(clientID string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	if r := l.limits.ConnectsPerClientPerSecond; r > 0 {
		if !l.perKey(l.clients, clientID, r, now) {
			return false
		}
	}
	if r := l.limits.ConnectsPerSecond; r > 0 {
		return l.connect.take(r, now)
	}
	return true
}

// AllowPublish takes a token from the connection's publish bucket.
func (l *Limiter) AllowPublish(connection string) bool {
	r := l.limits.PublishesPerConnectionPerSecond
	if r == 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perKey(l.publish, connection, r, l.clock.Now())
}

func (l *Limiter) perKey(m map[string]*bucket, key string, rate float64, now time.Time) bool {
	b := m[key]
	if b == nil {
		if len(m) >= maxClientBuckets {
			for k, old := range m {
				if now.Sub(old.last).Seconds()*rate >= math.Max(1, rate) {
					delete(m, k)
				}
			}
		}
		b = &bucket{}
		m[key] = b
	}
	return b.take(rate, now)
}
