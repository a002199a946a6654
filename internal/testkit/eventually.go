// Package testkit holds the helpers every test package shares: polling a
// condition with a deadline, and listing a binary's dependencies.
package testkit

import (
	"fmt"
	"testing"
	"time"
)

// Eventually polls cond every 10 ms until it returns true or timeout passes,
// then fails the test with the message (fmt.Sprintf(format, args...)). Use it
// for state another process or goroutine changes; never to measure time.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("after %v: %s", timeout, fmt.Sprintf(format, args...))
	}
}

// Poll is Eventually without a test: it reports whether cond became true
// within timeout.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
