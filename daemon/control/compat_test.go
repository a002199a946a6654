package control

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// v1Status is the Status wire type as earlier daemons and clients know it.
type v1Status struct {
	Thing         string             `json:"thing"`
	Phase         string             `json:"phase"`
	Active        ActiveCredential   `json:"active"`
	Connection    string             `json:"connection"`
	Endpoint      string             `json:"endpoint"`
	ConnectedWith int                `json:"connectedWith"`
	PendingJob    string             `json:"pendingJob,omitempty"`
	LastResult    string             `json:"lastResult,omitempty"`
	LastReason    string             `json:"lastReason,omitempty"`
	LastResultAt  time.Time          `json:"lastResultAt,omitzero"`
	LastError     string             `json:"lastError,omitempty"`
	Advice        string             `json:"advice,omitempty"`
	LastErrorAt   time.Time          `json:"lastErrorAt,omitzero"`
	LastTimings   map[string]float64 `json:"lastTimings,omitempty"`
	Summary       string             `json:"summary"`
}

// TestStatusWireCompatible: the recovery fields are additions: an earlier
// client reads a new daemon's status (the fields it knows unchanged), a new
// client reads an earlier daemon's, and a status without recovery events
// encodes exactly as before.
func TestStatusWireCompatible(t *testing.T) {
	now := time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)
	cur := Status{Thing: "gw-1", Phase: "idle", Connection: "connected", ConnectedWith: 1, LastResult: "FAILED", LastReason: "r", LastResultAt: now, Summary: "s",
		Counters: Counters{Fallbacks: 1}, LastFallback: "f", LastFallbackAt: now, LastRefusal: "x", LastRefusalAt: now,
		RotationRequest: &RotationRequest{Reason: "age", Attempts: 1, SentAt: now, Answer: "accepted", JobID: "j"}}
	b, _ := json.Marshal(cur)
	var old v1Status
	if err := json.Unmarshal(b, &old); err != nil || old.Thing != "gw-1" || old.ConnectedWith != 1 || old.LastReason != "r" || !old.LastResultAt.Equal(now) {
		t.Fatalf("an earlier client reads %+v, %v", old, err)
	}
	ob, _ := json.Marshal(old)
	var back Status
	if err := json.Unmarshal(ob, &back); err != nil || back.Thing != "gw-1" || back.RotationRequest != nil || back.Counters.Fallbacks != 0 {
		t.Fatalf("a new client reads an earlier daemon's status as %+v, %v", back, err)
	}
	quiet := cur
	quiet.Counters, quiet.LastFallback, quiet.LastFallbackAt, quiet.LastRefusal, quiet.LastRefusalAt, quiet.RotationRequest = Counters{}, "", time.Time{}, "", time.Time{}, nil
	qb, _ := json.Marshal(quiet)
	old.Phase = string(quiet.Phase)
	want, _ := json.Marshal(old)
	if string(qb) != string(want) {
		t.Errorf("a status without recovery events encodes as\n%s\nwas\n%s", qb, want)
	}
	for _, k := range []string{`"fallbacks":1`, `"lastRefusal":"x"`, `"rotationRequest":{"reason":"age"`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("%s lacks %s", b, k)
		}
	}
}
