package thingname

import (
	"strings"
	"testing"

	"github.com/bootcert/bootcert/manifest"
)

// Valid must agree with manifest.ValidDeviceID (the factory's rule).
func FuzzValid(f *testing.F) {
	for _, s := range []string{"gw-1", "", "a b", "x:y_z-9", strings.Repeat("a", 128), strings.Repeat("a", 129), "é", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if (Valid(s) == nil) != (manifest.ValidDeviceID(s) == nil) {
			t.Fatalf("Valid(%q) = %v, manifest says %v", s, Valid(s), manifest.ValidDeviceID(s))
		}
	})
}
