package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// schedule is a SAM Schedule event of a template function, which the lab
// runs on its clock (Config.Clock: a test's clock.Fake fires it by
// Advance), as EventBridge would run the rule on AWS.
type schedule struct {
	function, name, expr string
	every                time.Duration
}

var rateRE = regexp.MustCompile(`^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$`)

// parseRate reads an EventBridge rate expression: rate(value unit), with
// unit minute(s), hour(s) or day(s)
// (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-scheduled-rule-pattern.html).
// cron() expressions are not supported by the lab.
func parseRate(expr string) (time.Duration, error) {
	m := rateRE.FindStringSubmatch(expr)
	if m == nil {
		return 0, fmt.Errorf("schedule %q: the lab runs rate(N minute|minutes|hour|hours|day|days) only", expr)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n < 1 {
		return 0, fmt.Errorf("schedule %q: the value must be a positive integer", expr)
	}
	unit := map[string]time.Duration{"minute": time.Minute, "minutes": time.Minute, "hour": time.Hour, "hours": time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour}[m[2]]
	return time.Duration(n) * unit, nil
}

// addSchedule records a function's Schedule event (loadTemplate).
func (l *Lab) addSchedule(function, name, expr string) {
	every, err := parseRate(expr)
	if err != nil {
		l.log.Warn("schedule not run by the lab", "function", function, "event", name, "err", err)
		return
	}
	l.schedules = append(l.schedules, schedule{function: function, name: name, expr: expr, every: every})
	l.log.Info("schedule installed", "function", function, "event", name, "schedule", expr)
}

// runSchedules invokes each scheduled function every period of the lab's
// clock, asynchronously like EventBridge, with a Scheduled Event payload.
func (l *Lab) runSchedules(ctx context.Context) {
	for _, s := range l.schedules {
		l.wg.Add(1)
		go func(s schedule) {
			defer l.wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case t := <-l.cfg.Clock.After(s.every):
					ev, _ := json.Marshal(map[string]any{
						"version": "0", "id": fmt.Sprintf("lab-%s-%d", s.name, t.UnixNano()), "detail-type": "Scheduled Event",
						"source": "aws.events", "account": l.cfg.AccountID, "time": t.UTC().Format(time.RFC3339), "region": l.cfg.Region,
						"resources": []string{fmt.Sprintf("arn:aws:events:%s:%s:rule/%s-%s", l.cfg.Region, l.cfg.AccountID, s.function, s.name)},
						"detail":    map[string]any{},
					})
					if err := l.invoker.InvokeAsync(s.function, ev, "schedule "+s.name+" "+s.expr); err != nil {
						l.log.Warn("scheduled invocation not queued", "function", s.function, "err", err)
					}
				}
			}
		}(s)
	}
}
