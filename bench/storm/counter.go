package storm

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"
)

// counter is a slog.Handler for the lab's log: it counts the REST API's
// answers ("api" records: op, outcome) and the broker's CONNECT outcomes
// ("connected", "connect refused") by second, and drops everything else.
type counter struct {
	mu    *sync.Mutex
	state *counterState
	attrs []slog.Attr
}

type counterState struct {
	t0       time.Time
	calls    map[string]*OpCount
	perSec   map[string]map[int]int // accepted calls by op and second
	throttle map[string]int         // throttles since the last throttlesSince
	totals   map[string]int
}

func newCounter() *counter {
	c := &counter{mu: &sync.Mutex{}, state: &counterState{}}
	c.reset()
	return c
}

func (c *counter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.state = counterState{calls: map[string]*OpCount{}, perSec: map[string]map[int]int{}, throttle: map[string]int{}, totals: map[string]int{}}
}

func (c *counter) start(t0 time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.t0 = t0
}

func (c *counter) Enabled(context.Context, slog.Level) bool { return true }

func (c *counter) WithAttrs(as []slog.Attr) slog.Handler {
	return &counter{mu: c.mu, state: c.state, attrs: append(append([]slog.Attr{}, c.attrs...), as...)}
}

func (c *counter) WithGroup(string) slog.Handler { return c }

func (c *counter) Handle(_ context.Context, r slog.Record) error {
	c.observe(r.Message, r.Time, func(k string) string {
		var v string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == k {
				v = a.Value.String()
				return false
			}
			return true
		})
		return v
	})
	return nil
}

// observe counts one log record: its message, time and attributes.
func (c *counter) observe(msg string, t time.Time, attr func(string) string) {
	var op, outcome string
	switch msg {
	case "api":
		op, outcome = attr("op"), attr("outcome")
	case "connected", "jitr":
		// a JITR connect (registered, then closed) took a token too
		op, outcome = "connect", "ok"
	case "connect refused":
		op, outcome = "connect", "refused"
		if reason := attr("reason"); containsFold(reason, "throttl") || containsFold(reason, "rate") {
			outcome = "ThrottlingException"
		}
	default:
		return
	}
	if op == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state
	oc := s.calls[op]
	if oc == nil {
		oc = &OpCount{}
		s.calls[op] = oc
	}
	switch outcome {
	case "ok":
		oc.OK++
		if !s.t0.IsZero() {
			sec := int(t.Sub(s.t0) / time.Second)
			if s.perSec[op] == nil {
				s.perSec[op] = map[int]int{}
			}
			s.perSec[op][sec]++
		}
	case "ThrottlingException":
		oc.Throttled++
		s.throttle[op]++
		s.totals[op]++
	default:
		oc.Other++
	}
}

func containsFold(s, sub string) bool {
	n, m := len(s), len(sub)
	for i := 0; i+m <= n; i++ {
		eq := true
		for j := 0; j < m; j++ {
			a, b := s[i+j], sub[j]
			if 'A' <= a && a <= 'Z' {
				a += 'a' - 'A'
			}
			if a != b {
				eq = false
				break
			}
		}
		if eq {
			return true
		}
	}
	return false
}

// throttlesSince returns the throttles counted since the last call.
func (c *counter) throttlesSince() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.state.throttle
	c.state.throttle = map[string]int{}
	return out
}

func (c *counter) throttleTotals() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.state.totals)
}

func (c *counter) okTotals() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.state.calls {
		out[k] = v.OK
	}
	return out
}

// snapshot returns the counts and, per operation, the most calls accepted
// in one wall-clock second.
func (c *counter) snapshot() (map[string]*OpCount, map[string]float64, map[string]map[int]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	calls := map[string]*OpCount{}
	for k, v := range c.state.calls {
		cp := *v
		calls[k] = &cp
	}
	peak := map[string]float64{}
	per := map[string]map[int]int{}
	for op, secs := range c.state.perSec {
		per[op] = maps.Clone(secs)
		for _, n := range secs {
			peak[op] = max(peak[op], float64(n))
		}
	}
	return calls, peak, per
}
