package storm

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestSmallStorm is the storm at N = 120 with the aws-default quotas x10:
// every device commits, none is issued two certificates, no API is
// accepted above its rate. Figures come from make bench-storm, not here.
func TestSmallStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("storm: -short")
	}
	const n = 120
	r, err := Run(context.Background(), Options{Devices: n, Window: time.Second, Scale: 10,
		Keygen: 5 * time.Millisecond, Sign: 2 * time.Millisecond, Timeout: 4 * time.Minute,
		Template: filepath.Join("..", "..", "cloud", "template.yaml"), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.Print(&out)
	t.Log("\n" + out.String())
	if r.Committed != n {
		t.Errorf("%d of %d devices committed; lost %v, stuck %v", r.Committed, n, r.Lost, r.Stuck)
	}
	for thing, certs := range r.CertsIssued {
		if certs != 1 {
			t.Errorf("%s has %d operational certificates, want 1", thing, certs)
		}
	}
	if len(r.CertsIssued) != r.Committed {
		t.Errorf("%d committed devices but %d with an operational certificate", r.Committed, len(r.CertsIssued))
	}
	if c := r.Calls["CreateCertificateFromCsr"]; c == nil || c.OK != n {
		t.Errorf("CreateCertificateFromCsr accepted %+v times, want %d (one certificate per device)", c, n)
	}
	for _, over := range r.AboveRate() {
		t.Errorf("above its rate: %s", over)
	}
	if r.Bound <= 0 || r.BoundAPI == "" {
		t.Errorf("no bound computed: %+v", r.Calls)
	}
}

func TestAboveRate(t *testing.T) {
	r := &Result{Rates: map[string]float64{"A": 10, "B": 10}, PerSecond: map[string]map[int]int{
		"A": {0: 20, 1: 10, 2: 10, 3: 10},  // burst + rate: fine
		"B": {0: 20, 1: 20, 2: 20, 3: 20}}} // twice the rate
	got := r.AboveRate()
	if len(got) != 1 || got[0][:2] != "B:" {
		t.Fatalf("AboveRate = %q, want B only", got)
	}
}
