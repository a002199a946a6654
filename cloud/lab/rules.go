package lab

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/bootcert/bootcert/cloud/lab/broker"
)

// ruleEngine runs the template's topic rules on every message the broker
// accepts: a rule whose FROM filter matches and whose WHERE holds produces
// the SELECT's JSON, and each action runs asynchronously on the invoker's
// pool: a Lambda action invokes the function in-process (AWS invokes rule
// Lambda actions asynchronously), a republish action publishes to its topic.
type ruleEngine struct {
	log     *slog.Logger
	inv     *invoker
	publish func(topic string, payload []byte, qos byte) error

	mu    sync.RWMutex
	rules []*compiledRule
}

type compiledRule struct {
	name    string
	sql     string
	matches func(topic string) bool
	apply   func(m broker.Message) (out []byte, matched bool, err error)
	actions []ruleAction
	// errorAction runs when an action fails.
	errorAction *ruleAction

	matched, errors atomic.Int64
}

type ruleAction struct {
	kind     string // "lambda" or "republish"
	function string // logical ID
	topic    string
	qos      byte
}

func (e *ruleEngine) set(rules []*compiledRule) {
	e.mu.Lock()
	e.rules = rules
	e.mu.Unlock()
}

func (e *ruleEngine) onMessage(m broker.Message) {
	e.mu.RLock()
	rules := e.rules
	e.mu.RUnlock()
	for _, r := range rules {
		if !r.matches(m.Topic) {
			continue
		}
		out, ok, err := r.apply(m)
		if err != nil {
			r.errors.Add(1)
			e.log.Warn("rule failed", "rule", r.name, "topic", m.Topic, "err", err)
			continue
		}
		if !ok {
			continue
		}
		r.matched.Add(1)
		e.log.Info("rule matched", "rule", r.name, "topic", m.Topic, "clientId", m.ClientID, "actions", len(r.actions))
		for _, a := range r.actions {
			e.run(r, a, m, out, true)
		}
	}
}

// run runs one action; a failure runs the rule's error action (not for the
// error action itself). Function errors of an asynchronous Lambda
// invocation are not action failures (AWS: the invocation was accepted).
func (e *ruleEngine) run(r *compiledRule, a ruleAction, m broker.Message, out []byte, withErrorAction bool) {
	fail := func(kind, resource string, err error) {
		r.errors.Add(1)
		e.log.Warn("rule action failed", "rule", r.name, "action", kind, "resource", resource, "err", err)
		if withErrorAction && r.errorAction != nil {
			e.run(r, *r.errorAction, m, errorMessage(r.name, m, kind, resource, err), false)
		}
	}
	switch a.kind {
	case "lambda":
		if err := e.inv.InvokeAsync(a.function, json.RawMessage(out), "rule "+r.name); err != nil {
			fail("LambdaAction", a.function, err)
		}
	case "republish":
		topic, qos, name := republishTopic(a.topic, m), a.qos, r.name
		err := e.inv.Go("rule "+name+" republish", func(context.Context) error {
			if err := e.publish(topic, out, qos); err != nil {
				fail("RepublishAction", topic, err)
				return nil
			}
			e.log.Info("rule republished", "rule", name, "topic", topic)
			return nil
		})
		if err != nil {
			fail("RepublishAction", topic, err)
		}
	}
}

// errorMessage is the payload AWS sends to a rule's error action
// ("Error handling (error action)", rule-error-handling.html).
func errorMessage(rule string, m broker.Message, kind, resource string, err error) []byte {
	b, _ := json.Marshal(map[string]any{
		"ruleName":              rule,
		"topic":                 m.Topic,
		"cloudwatchTraceId":     "",
		"clientId":              m.ClientID,
		"base64OriginalPayload": base64.StdEncoding.EncodeToString(m.Payload),
		"failures": []map[string]string{{
			"failedAction":   kind,
			"failedResource": resource,
			"errorMessage":   err.Error(),
		}},
	})
	return b
}

// RuleStats is one rule in GET /lab/state.
type RuleStats struct {
	SQL     string   `json:"sql"`
	Actions []string `json:"actions"`
	Matched int64    `json:"matched"`
	Errors  int64    `json:"errors"`
}

func (e *ruleEngine) snapshot() map[string]RuleStats {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := map[string]RuleStats{}
	for _, r := range e.rules {
		var acts []string
		for _, a := range r.actions {
			if a.kind == "lambda" {
				acts = append(acts, "lambda:"+a.function)
			} else {
				acts = append(acts, "republish:"+a.topic)
			}
		}
		out[r.name] = RuleStats{SQL: r.sql, Actions: acts, Matched: r.matched.Load(), Errors: r.errors.Load()}
	}
	return out
}
