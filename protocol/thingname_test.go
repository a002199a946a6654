package protocol

import (
	"regexp"
	"strings"
	"testing"
)

func TestValidThingName(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		ok   bool
	}{
		{"ok/simple", "gw-0001", true},
		{"ok/every-class", "aZ09:_-", true},
		{"ok/one", "a", true},
		{"ok/128", strings.Repeat("a", 128), true},
		{"fail/empty", "", false},
		{"fail/129", strings.Repeat("a", 129), false},
		{"fail/slash", "gw/1", false},
		{"fail/mqtt-wildcard", "gw+", false},
		{"fail/space", "gw 1", false},
		{"fail/dot", "gw.1", false},
		{"fail/dollar", "$aws", false},
		{"fail/newline", "gw\n", false},
		{"fail/non-ascii", "gwé", false},
		{"fail/nul", "gw\x00", false},
	} {
		err := ValidThingName(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: ValidThingName(%q) = %v", tc.name, tc.in, err)
		}
		if err != nil && !strings.Contains(err.Error(), "thing name") {
			t.Errorf("%s: error %q does not say what was wrong", tc.name, err)
		}
	}
}

// oldThingName is the rule ValidThingName replaced (manifest's and the
// lab's regexp).
var oldThingName = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)

// FuzzValidThingNameAgreesWithRegexp: the hand-written check accepts exactly
// what the regexp accepted.
func FuzzValidThingNameAgreesWithRegexp(f *testing.F) {
	for _, s := range []string{"", "gw-1", "a:b_c-D9", strings.Repeat("x", 128), strings.Repeat("x", 129), "gw/1", "é", "\xff", "gw\n", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidThingName(s) == nil, oldThingName.MatchString(s); got != want {
			t.Fatalf("ValidThingName(%q) accepts=%v, the regexp %v", s, got, want)
		}
	})
}
