package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Function is the in-process stand-in for a Lambda function: the same
// signature as cloud.Function, so a cloud.Function converts to it.
type Function func(ctx context.Context, event json.RawMessage) (json.RawMessage, error)

// ErrNoFunction is returned for an invocation of a function the lab does
// not have.
var ErrNoFunction = errors.New("no such function")

// ErrQueueFull is logged when an asynchronous invocation is dropped.
var ErrQueueFull = errors.New("invocation queue full")

// invoker runs functions: asynchronously from rule actions, like AWS's
// asynchronous Lambda invocation, on a bounded pool of workers, and
// synchronously for POST /lab/functions/{id}/invoke.
type invoker struct {
	log     *slog.Logger
	timeout time.Duration

	mu       sync.RWMutex
	fns      map[string]Function
	timeouts map[string]time.Duration // per function (the template's Timeout)

	queue  chan invocation
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc

	statsMu sync.Mutex
	stats   map[string]*FunctionStats
}

// FunctionStats counts invocations of one function for GET /lab/state.
type FunctionStats struct {
	Invocations int64  `json:"invocations"`
	Errors      int64  `json:"errors"`
	Dropped     int64  `json:"dropped"`
	LastError   string `json:"lastError,omitempty"`
}

type invocation struct {
	id     string
	event  json.RawMessage
	source string // rule name, for the log
	fn     func(context.Context) error
}

func newInvoker(log *slog.Logger, workers, queue int, timeout time.Duration) *invoker {
	ctx, cancel := context.WithCancel(context.Background())
	iv := &invoker{log: log.With("component", "functions"), timeout: timeout, fns: map[string]Function{}, timeouts: map[string]time.Duration{},
		queue: make(chan invocation, queue), ctx: ctx, cancel: cancel, stats: map[string]*FunctionStats{}}
	for i := 0; i < workers; i++ {
		iv.wg.Add(1)
		go iv.work()
	}
	return iv
}

func (iv *invoker) set(id string, f Function) {
	iv.mu.Lock()
	iv.fns[id] = f
	iv.mu.Unlock()
}

// setTimeout bounds one function's invocations (Lambda's Timeout).
func (iv *invoker) setTimeout(id string, d time.Duration) {
	iv.mu.Lock()
	iv.timeouts[id] = d
	iv.mu.Unlock()
}

func (iv *invoker) has(id string) bool {
	iv.mu.RLock()
	defer iv.mu.RUnlock()
	return iv.fns[id] != nil
}

func (iv *invoker) names() []string {
	iv.mu.RLock()
	defer iv.mu.RUnlock()
	var n []string
	for k := range iv.fns {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func (iv *invoker) stat(id string) *FunctionStats {
	s := iv.stats[id]
	if s == nil {
		s = &FunctionStats{}
		iv.stats[id] = s
	}
	return s
}

// Invoke runs a function now and returns its result.
func (iv *invoker) Invoke(ctx context.Context, id string, event json.RawMessage, source string) (json.RawMessage, error) {
	iv.mu.RLock()
	f := iv.fns[id]
	timeout := iv.timeouts[id]
	iv.mu.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("invoking %s: %w (the lab has %v)", id, ErrNoFunction, iv.names())
	}
	if timeout <= 0 {
		timeout = iv.timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	out, err := safeCall(ctx, f, event)
	iv.statsMu.Lock()
	st := iv.stat(id)
	st.Invocations++
	if err != nil {
		st.Errors++
		st.LastError = err.Error()
	}
	iv.statsMu.Unlock()
	if err != nil {
		iv.log.Warn("function failed", "function", id, "source", source, "duration", time.Since(start), "err", err)
		return out, err
	}
	iv.log.Info("function invoked", "function", id, "source", source, "duration", time.Since(start))
	return out, nil
}

func safeCall(ctx context.Context, f Function, event json.RawMessage) (out json.RawMessage, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("function panicked: %v", r)
		}
	}()
	return f(ctx, event)
}

// InvokeAsync queues an invocation. It fails when the function does not
// exist or the queue is full (the invocation is dropped and logged; a rule
// then runs its error action).
func (iv *invoker) InvokeAsync(id string, event json.RawMessage, source string) error {
	if !iv.has(id) {
		iv.log.Error("invocation of a missing function", "function", id, "source", source)
		return fmt.Errorf("invoking %s: %w", id, ErrNoFunction)
	}
	return iv.enqueue(invocation{id: id, event: event, source: source})
}

// Go queues other asynchronous work (republish) on the same pool.
func (iv *invoker) Go(source string, fn func(context.Context) error) error {
	return iv.enqueue(invocation{source: source, fn: fn})
}

func (iv *invoker) enqueue(inv invocation) error {
	select {
	case <-iv.ctx.Done():
		return context.Canceled
	default:
	}
	select {
	case iv.queue <- inv:
		return nil
	default:
		iv.statsMu.Lock()
		iv.stat(inv.id).Dropped++
		iv.statsMu.Unlock()
		iv.log.Error("invocation dropped", "function", inv.id, "source", inv.source, "err", ErrQueueFull)
		return ErrQueueFull
	}
}

func (iv *invoker) work() {
	defer iv.wg.Done()
	for {
		select {
		case <-iv.ctx.Done():
			return
		case inv := <-iv.queue:
			if inv.fn != nil {
				if err := inv.fn(iv.ctx); err != nil {
					iv.log.Warn("action failed", "source", inv.source, "err", err)
				}
				continue
			}
			iv.Invoke(iv.ctx, inv.id, inv.event, inv.source)
		}
	}
}

// close stops the workers; queued invocations are abandoned.
func (iv *invoker) close() {
	iv.cancel()
	iv.wg.Wait()
}

func (iv *invoker) snapshot() map[string]FunctionStats {
	iv.statsMu.Lock()
	defer iv.statsMu.Unlock()
	out := map[string]FunctionStats{}
	for _, n := range iv.names() {
		out[n] = FunctionStats{}
	}
	for k, v := range iv.stats {
		if k != "" {
			out[k] = *v
		}
	}
	return out
}
