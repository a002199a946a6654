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

// Quota is one row of the aws-default preset: the key it has in a limits
// file, AWS's default rate, whether AWS lets an account raise it, and
// where the figure comes from. docs/cloud.md ("Quotas") prints the same
// rows; TestAWSDefaultMatchesDocs keeps the two equal.
type Quota struct {
	// Key is an "api" operation name (CreateThing, ...) or one of
	// connectsPerSecond, connectsPerClientPerSecond,
	// publishesPerConnectionPerSecond.
	Key        string
	Rate       float64 // per second
	Adjustable string  // "yes", "no" or "unconfirmed"
	Source     string  // SrcGuide, SrcQuotas, SrcUnconfirmed
}

// Sources of the preset's figures.
const (
	// SrcGuide is the "AWS IoT Limits" page of the AWS IoT Developer
	// Guide (https://docs.aws.amazon.com/iot/latest/developerguide/limits-iot.html,
	// now moved to https://docs.aws.amazon.com/general/latest/gr/iot-core.html
	// for IoT Core and .../iot_device_management.html for Jobs), as AWS
	// published it in github.com/awsdocs/aws-iot-docs doc_source/limits-iot.md
	// (commit a9191a6): sections "Message Broker Limits", "AWS IoT
	// Throttling Limits" and "AWS IoT Job Limits". It is the only AWS text
	// with the certificate, policy and Jobs TPS figures that could be read
	// here; it is older than the current pages, which may differ.
	SrcGuide = "guide"
	// SrcQuotas is the Service Quotas catalogue for service code iotcore
	// (aws service-quotas list-aws-default-service-quotas --service-code
	// iotcore, quota names "<Operation> API TPS") as listed in a public
	// dump of that command's output (not an AWS page). It is newer than
	// SrcGuide and gives the thing-registry operations 100 TPS (the guide
	// had 10-60) and marks them adjustable.
	SrcQuotas = "service-quotas"
	// SrcUnconfirmed marks a figure no source read here states: kept so
	// that the lab still throttles the operation at a plausible rate.
	SrcUnconfirmed = "unconfirmed"
)

// AWSDefaultQuotas are the rows of the aws-default preset, in the order
// docs/cloud.md lists them. Before sizing a rollout read your account's
// values: aws service-quotas list-service-quotas --service-code iotcore.
func AWSDefaultQuotas() []Quota {
	return []Quota{
		// Message broker (guide, "Message Broker Limits"). Summaries newer
		// than the guide report 3,000 connects/s per account in most
		// Regions; no AWS page read here says so, so 500 stays.
		{"connectsPerSecond", 500, "yes", SrcGuide},
		{"connectsPerClientPerSecond", 1, "no", SrcGuide},
		{"publishesPerConnectionPerSecond", 100, "no", SrcGuide},
		// Inbound publish requests per second per account (guide); the
		// lab counts HTTPS data-plane Publish calls against it.
		{"Publish", 20000, "yes", SrcGuide},

		// Certificates (guide, "AWS IoT Throttling Limits").
		{"CreateCertificateFromCsr", 15, "unconfirmed", SrcGuide},
		{"DescribeCertificate", 10, "unconfirmed", SrcGuide},
		{"UpdateCertificate", 10, "unconfirmed", SrcGuide},
		{"DeleteCertificate", 10, "unconfirmed", SrcGuide},
		{"RegisterCertificate", 10, "unconfirmed", SrcGuide},
		{"RegisterCertificateWithoutCA", 10, "unconfirmed", SrcUnconfirmed},
		{"RegisterCACertificate", 10, "unconfirmed", SrcGuide},
		{"DescribeCACertificate", 10, "unconfirmed", SrcGuide},
		{"UpdateCACertificate", 10, "unconfirmed", SrcGuide},
		{"GetRegistrationCode", 10, "unconfirmed", SrcGuide},
		// Policies (guide).
		{"AttachPolicy", 15, "unconfirmed", SrcGuide},
		{"DetachPolicy", 15, "unconfirmed", SrcGuide},
		{"CreatePolicy", 10, "unconfirmed", SrcGuide},
		{"GetPolicy", 10, "unconfirmed", SrcGuide},
		{"ListAttachedPolicies", 15, "unconfirmed", SrcGuide},
		// Thing registry (Service Quotas; the guide's older figures are
		// in docs/cloud.md).
		{"CreateThing", 100, "yes", SrcQuotas},
		{"DescribeThing", 350, "yes", SrcQuotas},
		{"UpdateThing", 100, "yes", SrcQuotas},
		{"DeleteThing", 100, "yes", SrcQuotas},
		{"AttachThingPrincipal", 100, "yes", SrcQuotas},
		{"DetachThingPrincipal", 100, "yes", SrcQuotas},
		{"ListThingPrincipals", 10, "yes", SrcQuotas},
		{"ListPrincipalThings", 10, "yes", SrcQuotas},
		{"ListThings", 10, "yes", SrcQuotas},
		{"AddThingToThingGroup", 100, "yes", SrcQuotas},
		{"RemoveThingFromThingGroup", 100, "yes", SrcQuotas},
		{"ListThingGroupsForThing", 100, "yes", SrcQuotas},
		{"ListThingsInThingGroup", 25, "yes", SrcQuotas},
		{"CreateThingGroup", 25, "yes", SrcQuotas},
		{"DescribeThingGroup", 100, "yes", SrcQuotas},
		{"CreateThingType", 15, "yes", SrcQuotas},
		// Fleet provisioning (guide: RegisterThing 10 TPS; AWS's API
		// reference adds that RegisterThing calls other control-plane
		// APIs which count against their own quotas).
		{"RegisterThing", 10, "unconfirmed", SrcGuide},
		// Jobs control plane (guide, "AWS IoT Throttling Limits").
		{"CreateJob", 10, "unconfirmed", SrcGuide},
		{"DescribeJob", 10, "unconfirmed", SrcGuide},
		{"DescribeJobExecution", 10, "unconfirmed", SrcGuide},
		{"CancelJobExecution", 10, "unconfirmed", SrcGuide},
		{"ListJobExecutionsForThing", 10, "unconfirmed", SrcGuide},
		// Other.
		{"DescribeEndpoint", 10, "unconfirmed", SrcUnconfirmed},
	}
}

// AWSDefault returns the aws-default preset: AWSDefaultQuotas as Limits.
func AWSDefault() Limits {
	l := Limits{API: map[string]float64{}}
	for _, q := range AWSDefaultQuotas() {
		switch q.Key {
		case "connectsPerSecond":
			l.ConnectsPerSecond = q.Rate
		case "connectsPerClientPerSecond":
			l.ConnectsPerClientPerSecond = q.Rate
		case "publishesPerConnectionPerSecond":
			l.PublishesPerConnectionPerSecond = q.Rate
		default:
			l.API[q.Key] = q.Rate
		}
	}
	return l
}

// Scaled returns l with every rate multiplied by factor (a time-scaled
// preset: a run at factor 10 takes a tenth of the time, and ratios such as
// efficiency are unchanged). Zero (unlimited) stays zero.
func (l Limits) Scaled(factor float64) Limits {
	out := Limits{
		ConnectsPerSecond:               l.ConnectsPerSecond * factor,
		ConnectsPerClientPerSecond:      l.ConnectsPerClientPerSecond * factor,
		PublishesPerConnectionPerSecond: l.PublishesPerConnectionPerSecond * factor,
	}
	if l.API != nil {
		out.API = make(map[string]float64, len(l.API))
		for k, v := range l.API {
			out.API[k] = v * factor
		}
	}
	return out
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
