package session

import (
	"bufio"
	"bytes"
	"testing"
)

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+/c", "a/b/c", true},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"#", "a/b", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"$aws/things/gw/jobs/+/get/+", "$aws/things/gw/jobs/j1/get/accepted", true},
		{"$aws/things/gw/jobs/+/get/+", "$aws/things/gw/jobs/j1/update/accepted", false},
	} {
		if got := matches(tc.filter, tc.topic); got != tc.want {
			t.Errorf("matches(%q, %q) = %v", tc.filter, tc.topic, got)
		}
	}
}

func TestPacketRoundTrip(t *testing.T) {
	for _, n := range []int{0, 127, 128, 16383, 16384, 200000} {
		p := publishPacket("t/x", 7, bytes.Repeat([]byte{'a'}, n))
		got, err := readPacket(bufio.NewReader(bytes.NewReader(p.encode())))
		if err != nil {
			t.Fatalf("%d: %v", n, err)
		}
		topic, qos, id, payload, err := parsePublish(got)
		if err != nil || topic != "t/x" || qos != 1 || id != 7 || len(payload) != n {
			t.Errorf("%d: %q %d %d %d %v", n, topic, qos, id, len(payload), err)
		}
	}
	// a remaining length above the limit, and one longer than 4 bytes
	for _, raw := range [][]byte{{0x30, 0xff, 0xff, 0xff, 0x7f}, {0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, {0x30, 0x05, 0x00}} {
		if _, err := readPacket(bufio.NewReader(bytes.NewReader(raw))); err == nil {
			t.Errorf("% x accepted", raw)
		}
	}
}
