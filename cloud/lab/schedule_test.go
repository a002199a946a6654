package lab

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/clock"
)

// The template's RenewalFunction Schedule event runs on the lab's clock:
// nothing before the period, one Scheduled Event per period after.
func TestTemplateScheduleRunsOnTheLabClock(t *testing.T) {
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	called := make(chan json.RawMessage, 10)
	l := start(t, Config{TemplatePath: filepath.Join("..", "template.yaml"), NoBuild: true, Clock: clk,
		Parameters: map[string]string{"RenewalSchedule": "rate(2 hours)"},
		Functions: map[string]Function{"RenewalFunction": func(_ context.Context, ev json.RawMessage) (json.RawMessage, error) {
			called <- ev
			return json.RawMessage(`{}`), nil
		}}})
	_ = l
	if !clk.WaitForWaiters(1, 10*time.Second) {
		t.Fatal("no schedule waits on the lab clock")
	}
	clk.Advance(time.Hour + 59*time.Minute)
	select {
	case ev := <-called:
		t.Fatalf("invoked before the period: %s", ev)
	case <-time.After(200 * time.Millisecond):
	}
	clk.Advance(time.Minute)
	var ev struct {
		Source     string `json:"source"`
		DetailType string `json:"detail-type"`
		Time       string `json:"time"`
	}
	select {
	case raw := <-called:
		if err := json.Unmarshal(raw, &ev); err != nil || ev.Source != "aws.events" || ev.DetailType != "Scheduled Event" || ev.Time != "2030-01-01T02:00:00Z" {
			t.Fatalf("event %s (%v)", raw, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not invoked after the period")
	}
	for _, bad := range []string{"cron(0 12 * * ? *)", "rate(0 hours)", "rate(1 week)"} {
		if _, err := parseRate(bad); err == nil {
			t.Errorf("parseRate(%q) accepted", bad)
		}
	}
	if d, err := parseRate("rate(1 day)"); err != nil || d != 24*time.Hour {
		t.Errorf("rate(1 day) = %v %v", d, err)
	}
}
