package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/bootcert/bootcert/cloud"
	"github.com/bootcert/bootcert/cloud/lab/broker"
	"github.com/bootcert/bootcert/cloud/lab/iam"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/cloud/lab/rules"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/cloud/ports"
)

// loadTemplate applies the template like a stack deployment would, without
// overwriting state a previous run created: IoT policies (created when
// missing; a stored policy whose document differs is kept and reported),
// thing types and groups, buckets; then builds every function the template
// declares with cloud.Build (Config.Functions take precedence) and installs
// the topic rules.
func (l *Lab) loadTemplate(ctx context.Context) error {
	for id, f := range l.cfg.Functions {
		l.invoker.set(id, f)
	}
	if l.cfg.TemplatePath == "" {
		l.log.Info("no template: no IoT policies, topic rules or functions besides Config.Functions (bootcert-lab serve --template cloud/template.yaml)")
		return nil
	}
	t, err := template.Load(l.cfg.TemplatePath, template.Options{Region: l.cfg.Region, AccountID: l.cfg.AccountID, Parameters: l.cfg.Parameters})
	if err != nil {
		return fmt.Errorf("lab: --template: %w", err)
	}
	log := l.log.With("component", "template", "template", l.cfg.TemplatePath)

	for _, p := range t.Policies {
		cur, err := l.reg.GetPolicy(p.Name)
		switch {
		case errors.Is(err, registry.ErrNotFound):
			if _, err := l.reg.CreatePolicy(p.Name, string(p.Document)); err != nil {
				return fmt.Errorf("lab: template %s: policy %s (%s): %w", l.cfg.TemplatePath, p.Name, p.LogicalID, err)
			}
			log.Info("policy created", "policy", p.Name)
		case err != nil:
			return fmt.Errorf("lab: template policy %s: %w", p.Name, err)
		case !sameJSON(cur.Document, string(p.Document)):
			log.Warn("policy in the registry differs from the template; keeping the registry's (delete DIR to start over)", "policy", p.Name)
		}
	}
	for _, tt := range t.ThingTypes {
		if _, err := l.reg.CreateThingType(tt, "", nil); err != nil && !errors.Is(err, registry.ErrAlreadyExists) {
			return fmt.Errorf("lab: template thing type %s: %w", tt, err)
		}
	}
	for _, g := range t.ThingGroups {
		if _, err := l.reg.CreateThingGroup(g, "", "", nil); err != nil && !errors.Is(err, registry.ErrAlreadyExists) {
			return fmt.Errorf("lab: template thing group %s: %w", g, err)
		}
	}
	for _, b := range t.Buckets {
		if err := l.createBucket(b); err != nil {
			return fmt.Errorf("lab: template bucket %s: %w", b, err)
		}
	}

	awsCfg := ClientConfig(l.pki.ServerCAPEM(), l.cfg.Region)
	if l.creds != nil {
		awsCfg.Credentials = credentials.NewStaticCredentialsProvider(l.creds.AccessKeyID, l.creds.SecretAccessKey, "")
	}
	baseDeps := cloud.Deps{
		AWS: awsCfg,
		Endpoints: cloud.Endpoints{
			IoT: l.endpoints.API, S3: l.endpoints.S3, IoTData: l.endpoints.API,
		},
		Clock:  l.cfg.Clock,
		Logger: l.log.With("component", "function"),
		// One pacer for every function: the lab is one process and one
		// account, so the functions share each API's quota exactly
		// (in AWS each execution environment paces at its share,
		// API_QUOTA_SHARE in the template). Without limits it never waits.
		Pacer: l.functionPacer(),
	}
	for _, f := range t.Functions {
		for _, e := range f.Events {
			if e.Type == "Schedule" {
				l.addSchedule(f.LogicalID, e.Name, e.Schedule)
			}
		}
		l.addRole(f)
		if f.Timeout > 0 {
			l.invoker.setTimeout(f.LogicalID, time.Duration(f.Timeout)*time.Second)
		}
		if f.ReservedConcurrency > 0 {
			l.invoker.setConcurrency(f.LogicalID, f.ReservedConcurrency)
		}
		l.invoker.setAsyncConfig(f.LogicalID, f.MaxRetryAttempts, time.Duration(f.MaxEventAge)*time.Second)
		if l.cfg.Functions[f.LogicalID] != nil {
			log.Info("function from Config.Functions", "function", f.LogicalID)
			continue
		}
		if l.cfg.NoBuild {
			continue
		}
		env := map[string]string{}
		for k, v := range f.Env {
			env[k] = v
		}
		for k, v := range l.cfg.Env {
			env[k] = v
		}
		// Each function signs with its own role's key pair: the lab's S3
		// authorizes its calls with the role's policies, as AWS does.
		deps := baseDeps
		deps.AWS = awsCfg.Copy()
		role := l.addRole(f)
		deps.AWS.Credentials = credentials.NewStaticCredentialsProvider(role.AccessKeyID, role.SecretAccessKey, "")
		fn, err := cloud.Build(ctx, f.LogicalID, func(k string) string { return env[k] }, deps)
		if errors.Is(err, cloud.ErrUnknownFunction) {
			log.Warn("template function has no Go handler in package cloud; its invocations will fail", "function", f.LogicalID)
			continue
		}
		if err != nil {
			return fmt.Errorf("lab: template %s: %w", l.cfg.TemplatePath, err)
		}
		l.invoker.set(f.LogicalID, Function(fn))
		log.Info("function built", "function", f.LogicalID)
	}

	var compiled []*compiledRule
	for _, r := range t.Rules {
		if r.Disabled {
			log.Info("rule disabled", "rule", r.Name)
			continue
		}
		st := r.Statement
		cr := &compiledRule{name: r.Name, sql: r.SQL, matches: st.Matches}
		cr.apply = func(m broker.Message) ([]byte, bool, error) {
			return st.Apply(rules.Message{Topic: m.Topic, Payload: m.Payload, ClientID: m.ClientID, Principal: m.Principal, Timestamp: m.Timestamp})
		}
		convert := func(a template.Action) (ruleAction, error) {
			switch a.Kind {
			case template.ActionLambda:
				if !l.invoker.has(a.FunctionLogicalID) {
					log.Warn("rule invokes a function the lab does not have", "rule", r.Name, "function", a.FunctionLogicalID)
				}
				return ruleAction{kind: "lambda", function: a.FunctionLogicalID}, nil
			case template.ActionRepublish:
				return ruleAction{kind: "republish", topic: a.Topic, qos: byte(a.QoS)}, nil
			}
			return ruleAction{}, fmt.Errorf("lab: template rule %s: action %q is not supported by the lab", r.Name, a.Kind)
		}
		for _, a := range r.Actions {
			ra, err := convert(a)
			if err != nil {
				return err
			}
			cr.actions = append(cr.actions, ra)
		}
		if r.ErrorAction != nil {
			ra, err := convert(*r.ErrorAction)
			if err != nil {
				return err
			}
			cr.errorAction = &ra
		}
		compiled = append(compiled, cr)
		log.Info("rule installed", "rule", r.Name, "sql", r.SQL, "actions", len(cr.actions))
	}
	l.rules.set(compiled)
	l.loadProvisioning(t, log)
	return nil
}

// sameJSON compares two JSON documents ignoring whitespace.
func sameJSON(a, b string) bool {
	return strings.Join(strings.Fields(a), "") == strings.Join(strings.Fields(b), "")
}

// republishTopic expands the substitution templates AWS allows in a
// republish topic that the lab supports: ${topic()}, ${topic(n)},
// ${clientid()}, ${principal()}.
func republishTopic(tmpl string, m broker.Message) string {
	if !strings.Contains(tmpl, "${") {
		return tmpl
	}
	parts := strings.Split(m.Topic, "/")
	r := strings.NewReplacer("${topic()}", m.Topic, "${clientid()}", m.ClientID, "${principal()}", m.Principal)
	out := r.Replace(tmpl)
	for i := len(parts); i >= 1; i-- {
		out = strings.ReplaceAll(out, fmt.Sprintf("${topic(%d)}", i), parts[i-1])
	}
	return out
}

// addRole registers (once) the execution role of a template function: an
// access key of its own, with the role's policies.
func (l *Lab) addRole(f template.Function) *iam.Principal {
	ak := roleAccessKey(f.LogicalID)
	if p, ok := l.keys.Lookup(ak); ok {
		return p
	}
	secret := make([]byte, 20)
	_, _ = rand.Read(secret)
	role := strings.TrimPrefix(f.RoleARN[strings.LastIndex(f.RoleARN, ":")+1:], "role/")
	p := &iam.Principal{Name: f.LogicalID, AccessKeyID: ak, SecretAccessKey: hex.EncodeToString(secret), Policies: f.Policies,
		ARN: "arn:aws:sts::" + l.cfg.AccountID + ":assumed-role/" + role + "/" + f.Name}
	l.keys.Add(p)
	return p
}

// roleAccessKey is the access key ID of a function's role: ASIA (AWS's
// prefix of temporary credentials) and the logical ID.
func roleAccessKey(logicalID string) string {
	return "ASIA" + strings.ToUpper(logicalID)
}

// FunctionCredentials returns the key pair of a template function's
// execution role, for a test that runs the function outside the lab (the
// Lambda zips under the Runtime Interface Emulator): its S3 calls are then
// authorized with the role's policies.
func (l *Lab) FunctionCredentials(logicalID string) (accessKeyID, secretAccessKey string, ok bool) {
	p, ok := l.keys.Lookup(roleAccessKey(logicalID))
	if !ok {
		return "", "", false
	}
	return p.AccessKeyID, p.SecretAccessKey, true
}

// functionPacer paces the functions' control-plane calls at the lab's own
// API limits (ports.Pacer), so that they wait for their turn instead of
// being throttled and retrying.
func (l *Lab) functionPacer() *ports.Pacer {
	rates := map[string]float64{}
	for op := range ports.DefaultQuotas {
		if r := l.limits.APIRate(op); r > 0 {
			rates[op] = r
		}
	}
	return ports.NewPacer(l.cfg.Clock, rates)
}
