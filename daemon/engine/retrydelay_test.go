package engine

import (
	"testing"
	"time"
)

// Re-asks back off from the reply timeout: the n-th wait is the reply
// timeout plus a full-jitter delay up to min(Max, ReplyTimeout·2^n), so a
// request that waits minutes in the cloud's queue is asked again a few
// times, not once per reply timeout (bench/README.md, "Per-function
// queues").
func TestRetryDelayBacksOffFromTheReplyTimeout(t *testing.T) {
	const rt = 30 * time.Second
	for _, tc := range []struct {
		name string
		max  time.Duration
		want []time.Duration // the waits with the jitter at its top
	}{
		{"ok/doubling-to-the-cap", 5 * time.Minute, []time.Duration{60 * time.Second, 90 * time.Second, 150 * time.Second, 270 * time.Second, 330 * time.Second, 330 * time.Second}},
		{"ok/cap-below-the-reply-timeout", 10 * time.Second, []time.Duration{40 * time.Second, 40 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &Engine{cfg: Config{ReplyTimeout: rt, Backoff: Backoff{Initial: time.Second, Max: tc.max, Rand: func() float64 { return 1 }}}}
			for i, want := range tc.want {
				if got := e.retryDelay(); got != want {
					t.Errorf("wait %d = %s, want %s", i, got, want)
				}
			}
			e.rot.replyTries = 0
			e.cfg.Backoff.Rand = func() float64 { return 0 }
			if got := e.retryDelay(); got != rt {
				t.Errorf("no jitter: %s, want the reply timeout %s", got, rt)
			}
		})
	}
}
