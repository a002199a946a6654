package lab

import (
	"log/slog"

	"github.com/bootcert/bootcert/cloud/lab/template"
)

// loadProvisioning installs the template's fleet provisioning templates
// (AWS::IoT::ProvisioningTemplate) in the lab's provisioning service.
func (l *Lab) loadProvisioning(t *template.Template, log *slog.Logger) {
	for _, p := range t.Provisioning {
		hook := ""
		if p.Hook != nil {
			hook = p.Hook.FunctionLogicalID
			if !l.invoker.has(hook) {
				log.Warn("provisioning template's pre-provisioning hook is a function the lab does not have: every RegisterThing will be refused", "template", p.Name, "function", hook)
			}
		}
		log.Info("provisioning template installed", "template", p.Name, "enabled", p.Enabled, "hook", hook)
	}
	l.prov.SetTemplates(t.Provisioning)
}
