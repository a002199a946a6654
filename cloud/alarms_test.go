package cloud

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/awslabs/goformation/v7"
)

// Every function has an Errors alarm, THROTTLED rejections have one, and
// every alarm notifies AlarmTopic.
func TestAlarms(t *testing.T) {
	tpl, err := goformation.Open(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	alarms := tpl.GetAllCloudWatchAlarmResources()
	byFunction := map[string]bool{}
	throttled := false
	for id, a := range alarms {
		for _, d := range a.Dimensions {
			if a.Namespace != nil && *a.Namespace == "AWS/Lambda" && d.Name == "FunctionName" {
				byFunction[id] = true
			}
			if d.Name == "Code" && d.Value == "THROTTLED" {
				throttled = true
			}
		}
	}
	// goformation resolves !Ref to nothing here: read the raw text
	raw, _ := os.ReadFile(templatePath)
	for _, id := range LogicalIDs {
		re := regexp.MustCompile(`Namespace: AWS/Lambda\s+MetricName: Errors\s+Dimensions:\s+- Name: FunctionName\s+Value: !Ref ` + id + `\n`)
		if !re.Match(raw) {
			t.Errorf("function %s has no Errors alarm", id)
		}
	}
	if n := strings.Count(string(raw), "AlarmActions: [!Ref AlarmTopic]"); n != len(alarms) {
		t.Errorf("%d of %d alarms notify AlarmTopic", n, len(alarms))
	}
	if len(byFunction) != len(LogicalIDs) {
		t.Errorf("%d Errors alarms, %d functions", len(byFunction), len(LogicalIDs))
	}
	if !throttled {
		t.Error("no alarm on THROTTLED rejections")
	}
}

// The metric filters match what the functions log: slog's JSON handler
// (cloud/lambdarun) writes "msg", "level" and the attributes as top-level
// keys, which the filters' $.msg, $.level and $.code select.
func TestMetricFiltersMatchTheLogs(t *testing.T) {
	tpl, err := goformation.Open(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	filters := tpl.GetAllLogsMetricFilterResources()
	var b bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&b, nil))
	// the vendor's and activator's lines (cloud/certvendor/vendor.go,
	// cloud/activator/activator.go)
	log.Warn("request rejected", "thing", "gw-1", "operation", "get", "jobId", "j", "code", "THROTTLED", "why", "x")
	log.Warn("jitr rejected", "thing", "gw-1", "certificateId", "c", "reason", "r")
	log.WarnContext(context.Background(), "deleting package", "thing", "gw-1")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	var got []map[string]any
	for _, l := range lines {
		var m map[string]any
		json.Unmarshal([]byte(l), &m)
		got = append(got, m)
	}
	want := map[string]int{"RejectionsMetricFilter": 0, "JitrRejectionsMetricFilter": 1, "ReaperAlertsMetricFilter": 2}
	for id, line := range want {
		f, ok := filters[id]
		if !ok {
			t.Errorf("metric filter %s missing", id)
			continue
		}
		m := got[line]
		switch id {
		case "RejectionsMetricFilter":
			if f.FilterPattern != `{ $.msg = "request rejected" }` || m["msg"] != "request rejected" || m["code"] != "THROTTLED" || f.MetricTransformations[0].Dimensions[0].Value != "$.code" {
				t.Errorf("%s: pattern %q vs line %v", id, f.FilterPattern, m)
			}
		case "JitrRejectionsMetricFilter":
			if !strings.Contains(f.FilterPattern, `$.msg = "jitr rejected"`) || m["msg"] != "jitr rejected" {
				t.Errorf("%s: pattern %q vs line %v", id, f.FilterPattern, m)
			}
		case "ReaperAlertsMetricFilter":
			if !strings.Contains(f.FilterPattern, `$.level = "WARN"`) || m["level"] != "WARN" {
				t.Errorf("%s: pattern %q vs line %v", id, f.FilterPattern, m)
			}
		}
	}
}
