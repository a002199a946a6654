// Package provisioning is the lab's AWS IoT fleet provisioning service: the
// three operations of the device MQTT API (the broker routes them here,
// broker/provisioning.go), the provisioning templates the lab took from the
// SAM template (AWS::IoT::ProvisioningTemplate), the pre-provisioning hook
// and the certificate ownership tokens.
//
// What AWS documents and the lab does
// (https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html,
// https://docs.aws.amazon.com/iot/latest/developerguide/pre-provisioning-hook.html,
// https://docs.aws.amazon.com/iot/latest/developerguide/provision-template.html):
//   - CreateCertificateFromCsr issues a certificate in PENDING_ACTIVATION
//     and a certificateOwnershipToken that expires after one hour;
//     RegisterThing makes it ACTIVE or INACTIVE as the template says.
//   - CreateKeysAndCertificate makes the key pair in the cloud and returns
//     the private key (bootcert never uses it; it is served for SDKs).
//   - RegisterThing runs the template's pre-provisioning hook first: the
//     hook gets {claimCertificateId, certificateId, certificatePem,
//     templateArn, clientId, parameters}; provisioning proceeds only when it
//     returns "allowProvisioning": true, its parameterOverrides are added to
//     the parameters; a hook that fails, does not allow, or does not return
//     within 5 seconds refuses with ACCESS_DENIED. A refusal creates
//     nothing: every resource is checked before any is created.
//   - parameters: keys up to 2048, values up to 4096 characters
//     (API_RegisterThing.html).
//
// Lab choices, where AWS does not say: an ownership token is single-use and
// kept in memory (a lab restart invalidates outstanding tokens: the device
// starts over with CreateCertificateFromCsr); error codes other than
// AccessDenied are the protocol.Provisioning* names.
package provisioning

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/broker"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

// Invoker runs a template function synchronously (the lab's invoker).
type Invoker func(ctx context.Context, logicalID string, event json.RawMessage) (json.RawMessage, error)

// Config configures a Service.
type Config struct {
	Registry  *registry.Registry
	Invoke    Invoker
	Region    string
	AccountID string
	Clock     clock.Clock
	Logger    *slog.Logger
}

// Service is the fleet provisioning service. It implements
// broker.Provisioning.
type Service struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	templates map[string]template.ProvisioningTemplate
	tokens    map[string]*ownership
}

type ownership struct {
	certID  string
	claimID string
	expires time.Time
	used    bool
}

var _ broker.Provisioning = (*Service)(nil)

// New makes a service without templates (SetTemplates adds them).
func New(cfg Config) *Service {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Service{cfg: cfg, log: cfg.Logger.With("component", "provisioning"), templates: map[string]template.ProvisioningTemplate{}, tokens: map[string]*ownership{}}
}

// SetTemplates replaces the provisioning templates.
func (s *Service) SetTemplates(ts []template.ProvisioningTemplate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.templates = map[string]template.ProvisioningTemplate{}
	for _, t := range ts {
		s.templates[t.Name] = t
	}
}

// Templates lists the template names (for /lab/state).
func (s *Service) Templates() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.templates {
		out = append(out, n)
	}
	return out
}

func perr(status int, code, format string, a ...any) *protocol.ProvisioningError {
	return &protocol.ProvisioningError{StatusCode: status, ErrorCode: code, ErrorMessage: fmt.Sprintf(format, a...)}
}

func denied(format string, a ...any) *protocol.ProvisioningError {
	return perr(403, protocol.ProvisioningAccessDenied, format, a...)
}

func invalid(format string, a ...any) *protocol.ProvisioningError {
	return perr(400, protocol.ProvisioningInvalidRequest, format, a...)
}

func (s *Service) newToken(certID, claimID string) string {
	var b [48]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Clock.Now()
	for k, o := range s.tokens { // forget expired tokens
		if now.After(o.expires) {
			delete(s.tokens, k)
		}
	}
	s.tokens[tok] = &ownership{certID: certID, claimID: claimID, expires: now.Add(protocol.OwnershipTokenLifetime)}
	return tok
}

// CreateCertificateFromCSR issues a PENDING_ACTIVATION certificate for the
// device's CSR.
func (s *Service) CreateCertificateFromCSR(ctx context.Context, p broker.Principal, req protocol.CreateCertificateFromCSRRequest) (protocol.CreateCertificateFromCSRResponse, *protocol.ProvisioningError) {
	if req.CertificateSigningRequest == "" {
		return protocol.CreateCertificateFromCSRResponse{}, invalid("certificateSigningRequest is required")
	}
	c, err := s.cfg.Registry.CreateProvisioningCertificate(req.CertificateSigningRequest)
	if err != nil {
		return protocol.CreateCertificateFromCSRResponse{}, s.registryError(err)
	}
	s.log.Info("CreateCertificateFromCsr: certificate issued (PENDING_ACTIVATION), ownership token valid 1h", "certificateId", c.ID, "claimCertificateId", p.CertificateID)
	return protocol.CreateCertificateFromCSRResponse{CertificateOwnershipToken: s.newToken(c.ID, p.CertificateID), CertificateID: c.ID, CertificatePEM: c.PEM}, nil
}

// CreateKeysAndCertificate makes a key pair and a certificate for it.
func (s *Service) CreateKeysAndCertificate(ctx context.Context, p broker.Principal) (protocol.CreateKeysAndCertificateResponse, *protocol.ProvisioningError) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return protocol.CreateKeysAndCertificateResponse{}, perr(500, protocol.ProvisioningInternalFailure, "generating a key: %v", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "AWS IoT Certificate"}}, key)
	if err != nil {
		return protocol.CreateKeysAndCertificateResponse{}, perr(500, protocol.ProvisioningInternalFailure, "making a CSR: %v", err)
	}
	c, err := s.cfg.Registry.CreateProvisioningCertificate(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})))
	if err != nil {
		return protocol.CreateKeysAndCertificateResponse{}, s.registryError(err)
	}
	der, _ := x509.MarshalECPrivateKey(key)
	s.log.Info("CreateKeysAndCertificate: key made in the cloud, certificate issued (PENDING_ACTIVATION)", "certificateId", c.ID, "claimCertificateId", p.CertificateID)
	return protocol.CreateKeysAndCertificateResponse{CertificateID: c.ID, CertificatePEM: c.PEM,
		PrivateKey:                string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})),
		CertificateOwnershipToken: s.newToken(c.ID, p.CertificateID)}, nil
}

func (s *Service) registryError(err error) *protocol.ProvisioningError {
	var re *registry.Error
	if errors.As(err, &re) && re.Code == registry.CodeInvalidRequest {
		return invalid("%s", re.Message)
	}
	s.log.Error("registry failed", "err", err)
	return perr(500, protocol.ProvisioningInternalFailure, "internal failure")
}

// Parameter limits of RegisterThing (API_RegisterThing.html: keys "Maximum
// length of 2048", values "Maximum length of 4096").
const (
	MaxParameterKey   = 2048
	MaxParameterValue = 4096
)

// hookEvent is the pre-provisioning hook's input.
type hookEvent struct {
	ClaimCertificateID string            `json:"claimCertificateId"`
	CertificateID      string            `json:"certificateId"`
	CertificatePEM     string            `json:"certificatePem"`
	TemplateARN        string            `json:"templateArn"`
	ClientID           string            `json:"clientId"`
	Parameters         map[string]string `json:"parameters"`
}

// hookResult is the pre-provisioning hook's output.
type hookResult struct {
	AllowProvisioning  *bool             `json:"allowProvisioning"`
	ParameterOverrides map[string]string `json:"parameterOverrides"`
}

// RegisterThing provisions a thing from a template with the certificate an
// ownership token proves.
func (s *Service) RegisterThing(ctx context.Context, p broker.Principal, name string, req protocol.RegisterThingRequest) (protocol.RegisterThingResponse, *protocol.ProvisioningError) {
	var none protocol.RegisterThingResponse
	s.mu.Lock()
	t, ok := s.templates[name]
	s.mu.Unlock()
	if !ok {
		return none, perr(404, protocol.ProvisioningTemplateNotFound, "provisioning template %s does not exist", name)
	}
	if !t.Enabled {
		return none, invalid("provisioning template %s is disabled", name)
	}
	for k, v := range req.Parameters {
		if len(k) > MaxParameterKey || len(v) > MaxParameterValue {
			return none, invalid("parameter %.40q: keys are at most %d and values at most %d characters", k, MaxParameterKey, MaxParameterValue)
		}
	}
	if req.CertificateOwnershipToken == "" {
		return none, invalid("certificateOwnershipToken is required")
	}
	s.mu.Lock()
	own := s.tokens[req.CertificateOwnershipToken]
	var tokErr *protocol.ProvisioningError
	switch {
	case own == nil:
		tokErr = perr(400, protocol.ProvisioningInvalidToken, "the certificate ownership token is not valid")
	case own.used:
		tokErr = perr(400, protocol.ProvisioningInvalidToken, "the certificate ownership token was already used")
	case s.cfg.Clock.Now().After(own.expires):
		tokErr = perr(400, protocol.ProvisioningInvalidToken, "the certificate ownership token expired (tokens are valid for one hour)")
	}
	var certID string
	if own != nil {
		certID = own.certID
	}
	s.mu.Unlock()
	if tokErr != nil {
		return none, tokErr
	}
	log := s.log.With("template", name, "certificateId", certID, "claimCertificateId", p.CertificateID, "clientId", p.ClientID)
	cert, err := s.cfg.Registry.DescribeCertificate(certID)
	if err != nil {
		return none, invalid("the certificate of the ownership token no longer exists")
	}
	if cert.Status != registry.StatusPendingActivation {
		return none, invalid("certificate %s is %s, not PENDING_ACTIVATION", certID, cert.Status)
	}
	params := maps.Clone(req.Parameters)
	if params == nil {
		params = map[string]string{}
	}
	if t.Hook != nil {
		ev := hookEvent{ClaimCertificateID: p.CertificateID, CertificateID: certID, CertificatePEM: cert.PEM,
			TemplateARN: fmt.Sprintf("arn:aws:iot:%s:%s:provisioningtemplate/%s", s.cfg.Region, s.cfg.AccountID, name),
			ClientID:    p.ClientID, Parameters: maps.Clone(params)}
		if ev.Parameters == nil {
			ev.Parameters = map[string]string{}
		}
		b, _ := json.Marshal(ev)
		hctx, cancel := context.WithTimeout(ctx, protocol.ProvisioningHookTimeout)
		out, err := s.cfg.Invoke(hctx, t.Hook.FunctionLogicalID, b)
		cancel()
		if err != nil {
			log.Info("RegisterThing refused: the pre-provisioning hook failed", "hook", t.Hook.FunctionLogicalID, "err", err)
			return none, denied("the pre-provisioning hook failed")
		}
		var res hookResult
		if err := json.Unmarshal(out, &res); err != nil || res.AllowProvisioning == nil || !*res.AllowProvisioning {
			log.Info("RegisterThing refused by the pre-provisioning hook", "hook", t.Hook.FunctionLogicalID, "result", string(out))
			return none, denied("provisioning was refused by the pre-provisioning hook")
		}
		for k, v := range res.ParameterOverrides {
			params[k] = v
		}
	}
	// AWS's built-in parameters: never the device's word.
	params[template.ParamCertificateID] = certID
	params[template.ParamClientID] = p.ClientID
	prov, err := t.Body.Provision(params)
	if err != nil {
		return none, invalid("template %s: %v", name, err)
	}
	if perr := s.check(prov, certID); perr != nil {
		log.Info("RegisterThing refused", "errorMessage", perr.ErrorMessage)
		return none, perr
	}
	// Every resource checked: consume the token, then create.
	s.mu.Lock()
	if own.used {
		s.mu.Unlock()
		return none, perr(400, protocol.ProvisioningInvalidToken, "the certificate ownership token was already used")
	}
	own.used = true
	s.mu.Unlock()
	if err := s.apply(prov, cert); err != nil {
		log.Error("RegisterThing failed while creating resources", "thing", prov.ThingName, "err", err)
		return none, perr(500, protocol.ProvisioningInternalFailure, "creating the resources failed")
	}
	log.Info("RegisterThing: thing provisioned", "thing", prov.ThingName, "thingType", prov.ThingType, "groups", prov.ThingGroups, "policies", prov.Policies, "certificateStatus", prov.CertificateStat)
	return protocol.RegisterThingResponse{DeviceConfiguration: prov.DeviceConfiguration, ThingName: prov.ThingName}, nil
}

// check verifies every resource a registration would touch, before any is
// created.
func (s *Service) check(prov *template.Provisioned, certID string) *protocol.ProvisioningError {
	reg := s.cfg.Registry
	if prov.CertificateID != certID {
		return invalid("the template's certificate resource names %q, not the certificate of the ownership token (use {\"Ref\": \"%s\"})", prov.CertificateID, template.ParamCertificateID)
	}
	if prov.ThingName == "" {
		return nil
	}
	if err := protocol.ValidThingName(prov.ThingName); err != nil {
		return invalid("thing name %q: %v", prov.ThingName, err)
	}
	if _, err := reg.DescribeThing(prov.ThingName); err == nil && prov.AttributeOverride == "FAIL" {
		return invalid("thing %s already exists and the template's OverrideSettings say FAIL", prov.ThingName)
	}
	if prov.ThingType != "" {
		if _, err := reg.DescribeThingType(prov.ThingType); err != nil {
			return invalid("thing type %s does not exist", prov.ThingType)
		}
	}
	for _, g := range prov.ThingGroups {
		if _, err := reg.DescribeThingGroup(g); err != nil {
			return invalid("thing group %s does not exist", g)
		}
	}
	for _, pol := range prov.Policies {
		if _, err := reg.GetPolicy(pol); err != nil {
			return invalid("policy %s does not exist", pol)
		}
	}
	return nil
}

// apply creates or updates the thing (attributes merged), its groups, the
// certificate's policies and principal, and sets the certificate's status
// last: an ACTIVE certificate means every step before it is done.
func (s *Service) apply(prov *template.Provisioned, cert registry.Certificate) error {
	reg := s.cfg.Registry
	if prov.ThingName != "" {
		if _, err := reg.DescribeThing(prov.ThingName); err != nil {
			if _, err := reg.CreateThing(prov.ThingName, prov.ThingType, prov.Attributes); err != nil {
				return fmt.Errorf("CreateThing %s: %w", prov.ThingName, err)
			}
		} else if prov.AttributeOverride == "MERGE" || prov.AttributeOverride == "REPLACE" {
			in := registry.UpdateThingInput{Name: prov.ThingName, Attributes: prov.Attributes, Merge: prov.AttributeOverride == "MERGE", SetAttributes: true}
			if _, err := reg.UpdateThing(in); err != nil {
				return fmt.Errorf("UpdateThing %s: %w", prov.ThingName, err)
			}
		}
		for _, g := range prov.ThingGroups {
			if err := reg.AddThingToThingGroup(g, prov.ThingName); err != nil {
				return fmt.Errorf("AddThingToThingGroup %s %s: %w", g, prov.ThingName, err)
			}
		}
	}
	for _, pol := range prov.Policies {
		if err := reg.AttachPolicy(pol, cert.ARN); err != nil {
			return fmt.Errorf("AttachPolicy %s: %w", pol, err)
		}
	}
	if prov.ThingName != "" {
		if err := reg.AttachThingPrincipal(prov.ThingName, cert.ARN); err != nil {
			return fmt.Errorf("AttachThingPrincipal %s: %w", prov.ThingName, err)
		}
	}
	return reg.UpdateCertificate(cert.ID, prov.CertificateStat)
}
