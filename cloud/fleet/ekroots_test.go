package fleet

import (
	"strings"
	"testing"
)

func TestParseEKRoots(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"fail/empty", "", "no certificate"},
		{"fail/key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not CERTIFICATE"},
		{"fail/garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate 1"},
		{"fail/trailing", "junk", "trailing data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseEKRoots([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzParseEKRoots(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseEKRoots(b)
		if (p == nil) == (err == nil) {
			t.Fatalf("pool %v with error %v", p, err)
		}
	})
}
