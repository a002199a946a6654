package protocol

import (
	"regexp"
	"strings"
	"testing"
)

// thingNamePattern is CreateThing's thingName rule as a regexp: the
// hand-written ValidThingName must agree with it.
var thingNamePattern = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)

func FuzzValidThingName(f *testing.F) {
	for _, s := range []string{"gw-1", "", "a b", "x:y_z-9", strings.Repeat("a", 128), strings.Repeat("a", 129), "é", "a\x00", "bad/id"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := ValidThingName(s)
		if (err == nil) != thingNamePattern.MatchString(s) {
			t.Fatalf("ValidThingName(%q) = %v, the pattern says %v", s, err, thingNamePattern.MatchString(s))
		}
		if err != nil && !strings.Contains(err.Error(), "not a valid AWS IoT thing name") {
			t.Fatalf("ValidThingName(%q): error %q does not say what is wrong", s, err)
		}
	})
}
