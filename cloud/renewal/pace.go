package renewal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/bootcert/bootcert/cloud/ports"
)

// PaceKey is the S3 object that holds the token bucket between
// invocations. Only the renewal function writes it, and the template gives
// that function ReservedConcurrentExecutions: 1, so one invocation at a
// time reads and writes it (in the lab, Renewal's mutex does the same).
const PaceKey = "pacing/rotation-bucket.json"

// Bucket is the fleet-wide token bucket: one token per queued rotation,
// refilled at RotationsPerHour up to Burst.
type Bucket struct {
	Tokens float64   `json:"tokens"`
	At     time.Time `json:"at"`
	// Queued counts every rotation queued through the bucket (audit).
	Queued int64 `json:"queued"`
}

// refill adds the tokens earned since b.At.
func (b *Bucket) refill(now time.Time, perHour float64, burst int) {
	if b.At.IsZero() {
		b.Tokens, b.At = float64(burst), now
		return
	}
	if el := now.Sub(b.At); el > 0 {
		b.Tokens = math.Min(float64(burst), b.Tokens+el.Hours()*perHour)
		b.At = now
	}
}

// take removes up to n whole tokens and returns how many it took.
func (b *Bucket) take(n int) int {
	k := min(n, int(math.Floor(b.Tokens+1e-9)))
	if k < 0 {
		k = 0
	}
	b.Tokens -= float64(k)
	b.Queued += int64(k)
	return k
}

// PaceStore is what the bucket needs of the bucket store.
type PaceStore interface {
	Get(ctx context.Context, key, ifNoneMatch string) (ports.Object, error)
	Put(ctx context.Context, key string, body []byte, metadata map[string]string) error
}

func loadBucket(ctx context.Context, s PaceStore) (Bucket, error) {
	var b Bucket
	obj, err := s.Get(ctx, PaceKey, "")
	if errors.Is(err, ports.ErrNotFound) {
		return b, nil
	}
	if err != nil {
		return b, fmt.Errorf("reading the rotation pace %s: %w", PaceKey, err)
	}
	if err := json.Unmarshal(obj.Body, &b); err != nil {
		return Bucket{}, fmt.Errorf("rotation pace %s is not a bucket (%v): delete it to start full", PaceKey, err)
	}
	return b, nil
}

func saveBucket(ctx context.Context, s PaceStore, b Bucket) error {
	body, _ := json.Marshal(b)
	if err := s.Put(ctx, PaceKey, body, nil); err != nil {
		return fmt.Errorf("writing the rotation pace %s: %w", PaceKey, err)
	}
	return nil
}
