package lab

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/labtest"
)

// findRecord returns the first JSON log record in logs (the locked buffer
// of faults_test.go) with the message and the attributes given.
func findRecord(logs *faultLog, msg string, attrs map[string]any) map[string]any {
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec["msg"] != msg {
			continue
		}
		for k, v := range attrs {
			if rec[k] != v {
				continue next
			}
		}
		return rec
	}
	return nil
}

// TestDecisionLog: every policy denial is logged with the policy, the
// statement (index and Sid) and effect that decided it, the action and the
// resource; a denial no statement decided says so.
func TestDecisionLog(t *testing.T) {
	logs := &faultLog{}
	f := newFixture(t, Config{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	leaf := f.ca.NewLeaf(t, "gw-log")
	f.registerActive(leaf, `{"Version":"2012-10-17","Statement":[
 {"Sid":"Connect","Effect":"Allow","Action":"iot:Connect","Resource":"*"},
 {"Sid":"PublishAnything","Effect":"Allow","Action":"iot:Publish","Resource":"*"},
 {"Sid":"NoSecrets","Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/secret/*"}]}`, "log-policy")
	dev := f.client(leaf, "gw-log")

	if out, err := labtest.Pub(t, dev, "secret/x", "{}"); err == nil {
		t.Fatalf("publish to a denied topic succeeded: %s", out)
	}
	s := labtest.StartSub(t, dev, "open/topic")
	if g := s.Granted(); len(g) != 1 || g[0] != 128 {
		t.Fatalf("SUBACK %v, want [128]", g)
	}
	s.Stop()

	for _, tc := range []struct {
		name, msg string
		want      map[string]any
	}{
		{"explicit deny", "publish denied, client disconnected", map[string]any{
			"clientId": "gw-log", "action": "iot:Publish", "resource": acct + "topic/secret/x", "allowed": false,
			"effect": "Deny", "policy": "log-policy", "statement": float64(2), "sid": "NoSecrets"}},
		{"implicit deny", "subscribe denied", map[string]any{
			"clientId": "gw-log", "action": "iot:Subscribe", "resource": acct + "topicfilter/open/topic", "allowed": false,
			"effect": "implicit deny: no statement allowed it", "policy": "", "statement": float64(-1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec map[string]any
			deadline := time.Now().Add(10 * time.Second)
			for rec == nil && time.Now().Before(deadline) {
				if rec = findRecord(logs, tc.msg, tc.want); rec == nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
			if rec == nil {
				t.Fatalf("no %q log record with %v", tc.msg, tc.want)
			}
			if r, _ := rec["reason"].(string); r == "" {
				t.Errorf("record without a reason: %v", rec)
			}
		})
	}
}
