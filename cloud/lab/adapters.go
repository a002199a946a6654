package lab

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"

	"github.com/bootcert/bootcert/cloud/lab/broker"
	"github.com/bootcert/bootcert/cloud/lab/policy"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/protocol"
)

// brokerRegistry adapts the registry to broker.Registry.
type brokerRegistry struct{ r *registry.Registry }

func (b brokerRegistry) CertificateStatus(id string) (string, bool) {
	st, err := b.r.CertificateStatus(id)
	if err != nil {
		return "", false
	}
	return st, true
}

func (b brokerRegistry) FindCA(chain []*x509.Certificate) (string, bool, bool) {
	ca, err := b.r.FindCAFor(chain[0])
	if err != nil {
		return "", false, false
	}
	return ca.ID, ca.Status == registry.StatusActive && ca.AutoRegistrationStatus == registry.AutoRegistrationEnable, true
}

func (b brokerRegistry) RegisterPendingCertificate(der []byte, caID string) (bool, error) {
	_, created, err := b.r.RegisterPendingCertificate(der, caID)
	return created, err
}

// authorizer evaluates the IoT policies attached to a certificate (and to
// the groups of its thing) with the policy package. Parsed documents are
// cached by content.
type authorizer struct {
	r   *registry.Registry
	log *slog.Logger

	mu    sync.Mutex
	cache map[[32]byte]*policy.Document
}

func newAuthorizer(r *registry.Registry, log *slog.Logger) *authorizer {
	return &authorizer{r: r, log: log, cache: map[[32]byte]*policy.Document{}}
}

func (a *authorizer) parse(p registry.Policy) *policy.Document {
	key := sha256.Sum256([]byte(p.Document))
	a.mu.Lock()
	doc, ok := a.cache[key]
	a.mu.Unlock()
	if ok {
		return doc
	}
	doc, err := policy.Parse([]byte(p.Document))
	if err != nil {
		// CreatePolicy validated it; a stored document that no longer
		// parses grants nothing.
		a.log.Error("stored policy does not parse; it grants nothing", "policy", p.Name, "err", err)
		doc = nil
	}
	a.mu.Lock()
	if len(a.cache) > 1000 {
		a.cache = map[[32]byte]*policy.Document{}
	}
	a.cache[key] = doc
	a.mu.Unlock()
	return doc
}

// Authorize implements broker.Authorizer. The thing variables are set when
// a thing named like the client ID is attached to the certificate (AWS:
// iot:Connection.Thing.* need the client ID to be the thing name).
func (a *authorizer) Authorize(p broker.Principal, action broker.Action, resource string) broker.Decision {
	thing := ""
	things, err := a.r.ListPrincipalThings(a.r.CertificateARN(p.CertificateID))
	if err == nil {
		for _, t := range things {
			if t == p.ClientID {
				thing = t
				break
			}
		}
	}
	var named []policy.Named
	for _, pol := range a.r.EffectivePolicies(p.CertificateID, thing) {
		named = append(named, policy.Named{Name: pol.Name, Doc: a.parse(pol)})
	}
	vars := policy.Vars{ClientID: p.ClientID, ThingName: thing, IsAttached: thing != "", CertificateCN: p.CommonName, CertificateID: p.CertificateID}
	if thing != "" {
		if t, err := a.r.DescribeThing(thing); err == nil {
			vars.ThingTypeName = t.TypeName
		}
	}
	d := policy.Evaluate(named, policy.Request{Action: string(action), Resource: resource, Vars: vars})
	return broker.Decision{Allowed: d.Allowed, Policy: d.Policy, Statement: d.Statement, Sid: d.Sid, Effect: d.Effect, Reason: d.Reason}
}

// brokerJobs adapts the registry's job executions to broker.Jobs.
type brokerJobs struct{ r *registry.Registry }

func jobErr(err error) error {
	if err == nil {
		return nil
	}
	code := registry.JobsCode(err)
	msg := err.Error()
	var re *registry.Error
	if errors.As(err, &re) && re.Message != "" {
		msg = re.Message
	}
	return &broker.JobError{Code: code, Message: msg}
}

func summary(s registry.JobExecutionSummary) protocol.JobExecutionSummary {
	out := protocol.JobExecutionSummary{JobID: s.JobID, QueuedAt: s.QueuedAt.Unix(), LastUpdatedAt: s.LastUpdatedAt.Unix(),
		VersionNumber: s.VersionNumber, ExecutionNumber: s.ExecutionNumber}
	if !s.StartedAt.IsZero() {
		out.StartedAt = s.StartedAt.Unix()
	}
	return out
}

func execution(e registry.JobExecution, j registry.Job, withDoc bool) *protocol.JobExecution {
	out := &protocol.JobExecution{JobID: e.JobID, ThingName: e.ThingName, Status: e.Status, StatusDetails: e.StatusDetails,
		QueuedAt: e.QueuedAt.Unix(), LastUpdatedAt: e.LastUpdatedAt.Unix(), VersionNumber: e.VersionNumber, ExecutionNumber: e.ExecutionNumber}
	if !e.StartedAt.IsZero() {
		out.StartedAt = e.StartedAt.Unix()
	}
	if withDoc && j.Document != "" {
		if json.Valid([]byte(j.Document)) {
			out.JobDocument = json.RawMessage(j.Document)
		} else {
			b, _ := json.Marshal(j.Document)
			out.JobDocument = b
		}
	}
	return out
}

func (b brokerJobs) Pending(thing string) ([]protocol.JobExecutionSummary, []protocol.JobExecutionSummary, error) {
	ip, q, err := b.r.GetPendingJobExecutions(thing)
	if err != nil {
		return nil, nil, jobErr(err)
	}
	var a, c []protocol.JobExecutionSummary
	for _, s := range ip {
		a = append(a, summary(s))
	}
	for _, s := range q {
		c = append(c, summary(s))
	}
	return a, c, nil
}

func (b brokerJobs) StartNext(thing string, req protocol.StartNextRequest) (*protocol.JobExecution, error) {
	e, j, ok, err := b.r.StartNextPendingJobExecution(thing, req.StatusDetails, req.StepTimeoutInMinutes)
	if err != nil {
		return nil, jobErr(err)
	}
	if !ok {
		return nil, nil
	}
	return execution(e, j, true), nil
}

func (b brokerJobs) Describe(thing, jobID string, n *int64, withDoc bool) (*protocol.JobExecution, error) {
	if jobID == "$next" {
		e, j, ok, err := b.r.NextPendingJobExecution(thing)
		if err != nil {
			return nil, jobErr(err)
		}
		if !ok {
			return nil, nil
		}
		return execution(e, j, withDoc), nil
	}
	e, err := b.r.DescribeJobExecution(jobID, thing, n)
	if err != nil {
		return nil, jobErr(err)
	}
	var j registry.Job
	if withDoc {
		if doc, err := b.r.GetJobDocument(jobID); err == nil {
			j.Document = doc
		}
	}
	return execution(e, j, withDoc), nil
}

func (b brokerJobs) Update(thing, jobID string, req protocol.UpdateRequest) (*protocol.JobExecution, error) {
	e, j, err := b.r.UpdateJobExecution(registry.UpdateJobExecutionInput{
		ThingName: thing, JobID: jobID, Status: req.Status, StatusDetails: req.StatusDetails,
		ExpectedVersion: req.ExpectedVersion, ExecutionNumber: req.ExecutionNumber, StepTimeoutInMinutes: req.StepTimeoutInMinutes,
	})
	if err != nil {
		je := jobErr(err).(*broker.JobError)
		// AWS includes the current state in VersionMismatch and
		// InvalidStateTransition rejections.
		if e.JobID != "" && (je.Code == protocol.JobsVersionMismatch || je.Code == protocol.JobsInvalidStateTransition) {
			je.State = &protocol.ExecutionState{Status: e.Status, StatusDetails: e.StatusDetails, VersionNumber: e.VersionNumber}
		}
		return nil, je
	}
	return execution(e, j, req.IncludeJobDocument), nil
}

// registryEvents forwards registry events to the broker. Job execution
// events go to $aws/events/jobExecution/... only while the JOB_EXECUTION
// event configuration is enabled (AWS: events-jobs.html).
func registryEvents(r *registry.Registry, b *broker.Server) registry.Listener {
	return func(ev registry.Event) {
		switch e := ev.(type) {
		case registry.CertificateStatusChanged:
			status := e.New
			if status == "" {
				status = "DELETED"
			}
			b.CertificateStatusChanged(e.ID, status)
		case registry.JobExecutionChanged:
			if e.OldStatus == e.Exec.Status {
				return // details only
			}
			op := "update"
			switch {
			case e.OldStatus == "":
				op = "queue"
			case e.Exec.Status == protocol.JobTimedOut:
				op = "timeout"
			case e.Exec.Status == protocol.JobCanceled || e.Exec.Status == protocol.JobRemoved:
				op = "cancel"
			}
			b.JobExecutionChanged(broker.JobExecutionEvent{ThingName: e.Exec.ThingName, JobID: e.Exec.JobID, Status: e.Exec.Status,
				OldStatus: e.OldStatus, StatusDetails: e.Exec.StatusDetails, Operation: op, NoEvent: !r.EventEnabled("JOB_EXECUTION")})
		}
	}
}
