package lab

import (
	"context"
	"fmt"
)

// loadTemplate applies the template: policies, thing types and groups,
// buckets, functions and topic rules.
func (l *Lab) loadTemplate(ctx context.Context) error {
	for id, f := range l.cfg.Functions {
		l.invoker.set(id, f)
	}
	if l.cfg.TemplatePath == "" {
		return nil
	}
	return fmt.Errorf("lab: --template %s: templates are not supported yet", l.cfg.TemplatePath)
}
