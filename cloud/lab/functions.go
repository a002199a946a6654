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

	"github.com/bootcert/bootcert/internal/clock"
)

// Function is the in-process stand-in for a Lambda function: the same
// signature as cloud.Function, so a cloud.Function converts to it.
type Function func(ctx context.Context, event json.RawMessage) (json.RawMessage, error)

// ErrNoFunction is returned for an invocation of a function the lab does
// not have.
var ErrNoFunction = errors.New("no such function")

// ErrQueueFull is logged when an asynchronous invocation is dropped.
var ErrQueueFull = errors.New("invocation queue full")

// Lambda's asynchronous error handling, as AWS documents it ("How Lambda
// handles errors and retries with asynchronous invocation",
// https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html):
// "If the function returns an error, by default Lambda attempts to run it
// two more times, with a one-minute wait between the first two attempts,
// and two minutes between the second and third attempts. Function errors
// include ... timeouts." An event stays in the queue up to the maximum
// event age, 6 hours by default (MaximumEventAgeInSeconds,
// https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-configuring.html).
const (
	DefaultAsyncRetries = 2
	DefaultMaxEventAge  = 6 * time.Hour
)

// DefaultAsyncRetryDelays are the waits before the first and second retry.
var DefaultAsyncRetryDelays = []time.Duration{time.Minute, 2 * time.Minute}

// invoker runs functions: asynchronously from rule actions and schedules,
// like AWS's asynchronous Lambda invocation, and synchronously for
// POST /lab/functions/{id}/invoke and the provisioning hook.
//
// Each function has its own queue and its own workers, as many as its
// reserved concurrency (the template's ReservedConcurrentExecutions; the
// invoker's default where not set), so one function's backlog never
// delays another's events; in AWS every function has its own queue and
// concurrency, too. A failed asynchronous invocation is retried like
// Lambda does it (see DefaultAsyncRetries). Synchronous invocations run at
// once, outside the queues (the lab does not throttle them).
type invoker struct {
	log         *slog.Logger
	clock       clock.Clock
	timeout     time.Duration
	workers     int // per function without reserved concurrency, and for Go
	queueSize   int // per function
	retryDelays []time.Duration

	mu       sync.RWMutex
	fns      map[string]Function
	timeouts map[string]time.Duration // per function (the template's Timeout)
	conc     map[string]int           // reserved concurrency
	retries  map[string]int           // MaximumRetryAttempts, where set
	maxAge   map[string]time.Duration // MaximumEventAgeInSeconds, where set
	queues   map[string]*fnQueue      // "" is the queue of Go's work

	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc

	statsMu sync.Mutex
	stats   map[string]*FunctionStats
}

// FunctionStats counts invocations of one function for GET /lab/state.
type FunctionStats struct {
	Invocations int64 `json:"invocations"`
	Errors      int64 `json:"errors"`
	Dropped     int64 `json:"dropped"`
	// Retries counts asynchronous retries after a function error;
	// Expired events dropped because they were older than the maximum
	// event age; Concurrency is the function's number of workers (0
	// until its first asynchronous invocation).
	Retries     int64  `json:"retries"`
	Expired     int64  `json:"expired"`
	Concurrency int    `json:"concurrency,omitempty"`
	Queued      int    `json:"queued"`
	LastError   string `json:"lastError,omitempty"`
}

type invocation struct {
	id       string
	event    json.RawMessage
	source   string // rule name, for the log
	fn       func(context.Context) error
	queued   time.Time // the first enqueue: the event's age counts from it
	attempts int       // failed attempts so far
}

// fnQueue is one function's queue: unbounded up to the invoker's
// queueSize, served by its own workers.
type fnQueue struct {
	mu      sync.Mutex
	items   []invocation
	ready   chan struct{} // one token per queued item
	workers int
}

func newInvoker(log *slog.Logger, clk clock.Clock, workers, queue int, timeout time.Duration) *invoker {
	if clk == nil {
		clk = clock.Real{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &invoker{log: log.With("component", "functions"), clock: clk, timeout: timeout, workers: workers, queueSize: queue,
		retryDelays: DefaultAsyncRetryDelays,
		fns:         map[string]Function{}, timeouts: map[string]time.Duration{}, conc: map[string]int{}, retries: map[string]int{},
		maxAge: map[string]time.Duration{}, queues: map[string]*fnQueue{},
		ctx: ctx, cancel: cancel, stats: map[string]*FunctionStats{}}
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

// setConcurrency sets a function's reserved concurrency: the number of
// its asynchronous invocations that run at once. It takes effect when the
// function's queue starts (its first asynchronous invocation).
func (iv *invoker) setConcurrency(id string, n int) {
	iv.mu.Lock()
	iv.conc[id] = n
	iv.mu.Unlock()
}

// setAsyncConfig sets a function's EventInvokeConfig: retries < 0 and
// maxAge 0 keep AWS's defaults.
func (iv *invoker) setAsyncConfig(id string, retries int, maxAge time.Duration) {
	iv.mu.Lock()
	if retries >= 0 {
		iv.retries[id] = retries
	}
	if maxAge > 0 {
		iv.maxAge[id] = maxAge
	}
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

// InvokeAsync queues an invocation on the function's queue. It fails when
// the function does not exist or its queue is full (the invocation is
// dropped and logged; a rule then runs its error action).
func (iv *invoker) InvokeAsync(id string, event json.RawMessage, source string) error {
	if !iv.has(id) {
		iv.log.Error("invocation of a missing function", "function", id, "source", source)
		return fmt.Errorf("invoking %s: %w", id, ErrNoFunction)
	}
	return iv.enqueue(invocation{id: id, event: event, source: source, queued: iv.clock.Now()})
}

// Go queues other asynchronous work (republish) on a queue of its own.
func (iv *invoker) Go(source string, fn func(context.Context) error) error {
	return iv.enqueue(invocation{source: source, fn: fn, queued: iv.clock.Now()})
}

// queue returns the queue of function id ("" for Go's work), starting it
// and its workers on first use.
func (iv *invoker) queue(id string) *fnQueue {
	iv.mu.RLock()
	q := iv.queues[id]
	iv.mu.RUnlock()
	if q != nil {
		return q
	}
	iv.mu.Lock()
	defer iv.mu.Unlock()
	if q := iv.queues[id]; q != nil {
		return q
	}
	n := iv.conc[id]
	if n <= 0 || id == "" {
		n = iv.workers
	}
	q = &fnQueue{ready: make(chan struct{}, iv.queueSize), workers: n}
	iv.queues[id] = q
	for i := 0; i < n; i++ {
		iv.wg.Add(1)
		go iv.work(id, q)
	}
	return q
}

func (iv *invoker) enqueue(inv invocation) error {
	if iv.ctx.Err() != nil {
		return context.Canceled
	}
	q := iv.queue(inv.id)
	q.mu.Lock()
	if len(q.items) >= iv.queueSize {
		q.mu.Unlock()
		iv.statsMu.Lock()
		iv.stat(inv.id).Dropped++
		iv.statsMu.Unlock()
		iv.log.Error("invocation dropped", "function", inv.id, "source", inv.source, "err", ErrQueueFull)
		return ErrQueueFull
	}
	q.items = append(q.items, inv)
	q.mu.Unlock()
	q.ready <- struct{}{} // room for queueSize tokens, one per item
	return nil
}

func (q *fnQueue) pop() invocation {
	q.mu.Lock()
	defer q.mu.Unlock()
	inv := q.items[0]
	q.items[0] = invocation{}
	q.items = q.items[1:]
	return inv
}

func (q *fnQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (iv *invoker) work(id string, q *fnQueue) {
	defer iv.wg.Done()
	for {
		select {
		case <-iv.ctx.Done():
			return
		case <-q.ready:
			iv.run(q.pop())
		}
	}
}

// run runs one queued invocation: an event older than the function's
// maximum event age is dropped; a function error schedules a retry.
func (iv *invoker) run(inv invocation) {
	if inv.fn != nil {
		if err := inv.fn(iv.ctx); err != nil {
			iv.log.Warn("action failed", "source", inv.source, "err", err)
		}
		return
	}
	iv.mu.RLock()
	maxAge, ok := iv.maxAge[inv.id]
	if !ok {
		maxAge = DefaultMaxEventAge
	}
	retries, ok := iv.retries[inv.id]
	if !ok {
		retries = DefaultAsyncRetries
	}
	iv.mu.RUnlock()
	if age := iv.clock.Now().Sub(inv.queued); age > maxAge {
		iv.statsMu.Lock()
		iv.stat(inv.id).Expired++
		iv.statsMu.Unlock()
		iv.log.Error("event dropped: older than the maximum event age", "function", inv.id, "source", inv.source, "age", age, "maxEventAge", maxAge, "attempts", inv.attempts)
		return
	}
	if _, err := iv.Invoke(iv.ctx, inv.id, inv.event, inv.source); err == nil || iv.ctx.Err() != nil {
		return
	}
	inv.attempts++
	if inv.attempts > retries {
		iv.log.Error("event dropped: retries exhausted", "function", inv.id, "source", inv.source, "attempts", inv.attempts)
		return
	}
	delay := iv.retryDelays[min(inv.attempts, len(iv.retryDelays))-1]
	iv.statsMu.Lock()
	iv.stat(inv.id).Retries++
	iv.statsMu.Unlock()
	iv.log.Warn("asynchronous invocation failed; retrying", "function", inv.id, "source", inv.source, "attempt", inv.attempts, "retryIn", delay)
	iv.wg.Add(1)
	go func() {
		defer iv.wg.Done()
		select {
		case <-iv.ctx.Done():
		case <-iv.clock.After(delay):
			iv.requeue(inv)
		}
	}()
}

// requeue puts a retry back on its function's queue (a full queue drops
// it, as a new event would be).
func (iv *invoker) requeue(inv invocation) {
	if err := iv.enqueue(inv); err != nil && !errors.Is(err, context.Canceled) {
		iv.log.Error("retry dropped", "function", inv.id, "source", inv.source, "err", err)
	}
}

// close stops the workers and pending retries; queued invocations are
// abandoned.
func (iv *invoker) close() {
	iv.cancel()
	iv.wg.Wait()
}

func (iv *invoker) snapshot() map[string]FunctionStats {
	names := iv.names()
	iv.mu.RLock()
	queued, conc := map[string]int{}, map[string]int{}
	for id, q := range iv.queues {
		queued[id], conc[id] = q.len(), q.workers
	}
	iv.mu.RUnlock()
	iv.statsMu.Lock()
	defer iv.statsMu.Unlock()
	out := map[string]FunctionStats{}
	for _, n := range names {
		out[n] = FunctionStats{}
	}
	for k, v := range iv.stats {
		if k != "" {
			out[k] = *v
		}
	}
	for k := range out {
		s := out[k]
		s.Queued, s.Concurrency = queued[k], conc[k]
		out[k] = s
	}
	return out
}
