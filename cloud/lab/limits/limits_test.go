package limits

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		ok        bool
	}{
		{"ok/empty", `{}`, true},
		{"ok/full", `{"api":{"CreateThing":10,"*":100},"connectsPerSecond":500,"connectsPerClientPerSecond":1,"publishesPerConnectionPerSecond":100}`, true},
		{"fail/unknown-key", `{"connectPerSecond":5}`, false},
		{"fail/negative", `{"api":{"CreateThing":-1}}`, false},
		{"fail/empty-op", `{"api":{"":1}}`, false},
		{"fail/trailing", `{} {}`, false},
		{"fail/not-json", `connects=5`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v", err)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("err %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	l, err := Load(PresetAWSDefault)
	if err != nil || l.ConnectsPerSecond != 500 || l.ConnectsPerClientPerSecond != 1 {
		t.Fatalf("preset: %+v %v", l, err)
	}
	p := filepath.Join(t.TempDir(), "limits.json")
	os.WriteFile(p, []byte(`{"api":{"*":2}}`), 0o600)
	l, err = Load(p)
	if err != nil || l.APIRate("CreateThing") != 2 {
		t.Fatalf("file: %+v %v", l, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Fatal("missing file loaded")
	}
}

func TestLimiter(t *testing.T) {
	clk := clock.NewFake(time.Unix(1000, 0))
	l := NewLimiter(Limits{API: map[string]float64{"CreateThing": 2}, ConnectsPerSecond: 3, ConnectsPerClientPerSecond: 1}, clk)
	first, second, third := l.AllowAPI("CreateThing"), l.AllowAPI("CreateThing"), l.AllowAPI("CreateThing")
	if !first || !second || third {
		t.Fatal("CreateThing at 2 TPS: want 2 allowed then throttled")
	}
	for range 100 {
		if !l.AllowAPI("DescribeThing") {
			t.Fatal("unlimited operation throttled")
		}
	}
	clk.Advance(500 * time.Millisecond)
	if !l.AllowAPI("CreateThing") || l.AllowAPI("CreateThing") {
		t.Fatal("after 0.5 s one token should be back")
	}
	if !l.AllowConnect("a") || l.AllowConnect("a") {
		t.Fatal("per client ID: 1/s")
	}
	if !l.AllowConnect("b") || !l.AllowConnect("c") || l.AllowConnect("d") {
		t.Fatal("account: 3/s (a, b, c), d throttled")
	}
	clk.Advance(time.Second)
	if !l.AllowConnect("a") {
		t.Fatal("a after a second")
	}
}

func BenchmarkAllowAPI(b *testing.B) {
	l := NewLimiter(AWSDefault(), nil)
	for b.Loop() {
		l.AllowAPI("DescribeThing")
	}
}

// FuzzParse: a limits file is outside input; Parse must not panic and what
// it accepts must be usable.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"api":{"CreateThing":10,"*":100},"connectsPerSecond":500}`))
	f.Add([]byte(`{"api":{"x":1e309}}`))
	f.Add([]byte(`{"connectsPerClientPerSecond":-0}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Parse(data)
		if err != nil {
			return
		}
		lim := NewLimiter(l, clock.NewFake(time.Unix(0, 0)))
		for op := range l.API {
			lim.AllowAPI(op)
		}
		lim.AllowConnect("c")
	})
}
