// Package cloud builds bootcert's cloud functions (activator, vendor,
// reaper, activation, renewal, provisioning hook) by their template logical IDs, over the AWS
// adapters in cloud/aws. The same Build serves the Lambda mains in
// cmd/lambda/<name> (real AWS) and the lab, which invokes the functions
// in-process from its rule actions.
package cloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/bootcert/bootcert/cloud/activation"
	"github.com/bootcert/bootcert/cloud/activator"
	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/certvendor"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/lifecycle"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/cloud/provisionhook"
	"github.com/bootcert/bootcert/cloud/reaper"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/internal/clock"
)

// Function is one cloud function: it takes the event (the JSON a rule's
// SELECT produced, an API Gateway request, a schedule event) and returns its
// JSON result.
type Function func(ctx context.Context, event json.RawMessage) (json.RawMessage, error)

// Logical IDs of the functions in cloud/template.yaml.
const (
	Activator  = "ActivatorFunction"
	Vendor     = "VendorFunction"
	Reaper     = "ReaperFunction"
	Activation = "ActivationFunction"
	Renewal    = "RenewalFunction"
	// ProvisionHook is the fleet provisioning template's pre-provisioning
	// hook (cloud/provisionhook).
	ProvisionHook = "ProvisionHookFunction"
)

// LogicalIDs lists every function Build knows.
var LogicalIDs = []string{Activator, Vendor, Reaper, Activation, Renewal, ProvisionHook}

// Endpoints are optional per-service base URLs (the lab). Empty fields use
// the standard AWS configuration (including AWS_ENDPOINT_URL_IOT and
// AWS_ENDPOINT_URL_S3).
type Endpoints struct {
	IoT     string // control plane, e.g. https://127.0.0.1:8443
	S3      string // path-style S3, e.g. https://127.0.0.1:9443
	IoTData string // data plane for Publish; else IOT_DATA_ENDPOINT, else DescribeEndpoint
}

// Deps are what Build wires the functions to.
type Deps struct {
	// AWS is the SDK configuration: region, credentials, HTTP client (for
	// the lab: one that trusts the lab's CA).
	AWS       aws.Config
	Endpoints Endpoints
	Clock     clock.Clock  // nil: clock.Real
	Logger    *slog.Logger // nil: slog.Default()
	// Pacer, when not nil, paces every control-plane call of the
	// function (the lab passes one sized from its limits and shared by
	// all its functions: one process, one account). Nil: Build makes one
	// per function from ports.DefaultQuotas times the environment's
	// API_QUOTA_SHARE (ports.QuotaShareFromEnv), or none without it.
	Pacer *ports.Pacer
}

// ErrUnknownFunction is returned by Build for a logical ID it does not know.
var ErrUnknownFunction = errors.New("unknown function logical ID")

// Build makes the function named by its template logical ID. getenv reads
// its environment (os.Getenv in Lambda, the template's
// Environment.Variables in the lab).
func Build(ctx context.Context, logicalID string, getenv func(string) string, deps Deps) (Function, error) {
	settings, err := fleet.FromEnv(getenv)
	if err != nil {
		return nil, fmt.Errorf("building %s: %w", logicalID, err)
	}
	clk := deps.Clock
	if clk == nil {
		clk = clock.Real{}
	}
	log := deps.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("function", logicalID)
	pacer := deps.Pacer
	if pacer == nil {
		share, err := ports.QuotaShareFromEnv(getenv)
		if err != nil {
			return nil, fmt.Errorf("building %s: %w", logicalID, err)
		}
		if share > 0 {
			pacer = ports.NewPacer(clk, ports.SharedRates(share))
		}
	}
	raw := cloudaws.NewRegistry(deps.AWS, deps.Endpoints.IoT)
	// Paced inside the retries: a retry waits for its turn too, so the
	// process never calls an API above its share of the quota.
	reg := ports.RetryingRegistry(ports.PacedRegistry(raw, pacer), ports.Backoff{Clock: clk})
	store := cloudaws.NewStore(deps.AWS, settings.Bucket, deps.Endpoints.S3)
	dataEP := deps.Endpoints.IoTData
	if dataEP == "" {
		dataEP = settings.DataEndpoint
	}
	pub := &cloudaws.Publisher{Config: deps.AWS, Endpoint: dataEP, Resolve: raw.DataEndpoint, Now: clk.Now}
	trust := &fleet.Trust{Store: store, Settings: settings, Clock: clk}

	switch logicalID {
	case Activator:
		h := &activator.Activator{Registry: reg, Store: store, Trust: trust, Settings: settings, Clock: clk, Log: log}
		return func(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
			ev, err := activator.ParseEvent(event)
			if err != nil {
				return nil, err
			}
			return marshal(h.Handle(ctx, ev))
		}, nil
	case Vendor:
		h := &certvendor.Vendor{Registry: reg, Store: store, Publisher: pub, Trust: trust, Settings: settings, Clock: clk, Log: log}
		return func(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
			return marshal(h.HandleEvent(ctx, event))
		}, nil
	case Reaper:
		h := &reaper.Reaper{Registry: reg, Store: store, Settings: settings, Log: log}
		return func(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
			ev, err := reaper.ParseEvent(event)
			if err != nil {
				return nil, err
			}
			return marshal(h.Handle(ctx, ev))
		}, nil
	case Activation:
		lc := &lifecycle.Manager{Registry: reg, Deleter: raw, Store: store, Settings: settings, Clock: clk, Log: log}
		h := &activation.API{Registry: reg, Trust: trust, Settings: settings, Log: log, Lifecycle: lc}
		return func(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
			return marshal(h.HandleEvent(ctx, event))
		}, nil
	case ProvisionHook:
		deny := getenv(provisionhook.EnvDenyListKey)
		if deny == "" {
			deny = provisionhook.DefaultDenyListKey
		}
		h := &provisionhook.Hook{Registry: reg, Store: store, Trust: trust, DenyListKey: deny, Clock: clk, Log: log}
		return func(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
			ev, err := provisionhook.ParseEvent(event)
			if err != nil {
				return nil, err
			}
			return marshal(h.Handle(ctx, ev))
		}, nil
	case Renewal:
		cfg, err := renewal.ConfigFromEnv(getenv)
		if err != nil {
			return nil, fmt.Errorf("building %s: %w", logicalID, err)
		}
		h := &renewal.Renewal{Registry: reg, Jobs: ports.RetryingJobCreator(ports.PacedJobCreator(raw, pacer), ports.Backoff{Clock: clk}), Store: store, Publisher: pub,
			Trust: trust, Settings: settings, Config: cfg, Clock: clk, Log: log}
		return func(ctx context.Context, event json.RawMessage) (json.RawMessage, error) {
			return marshal(h.HandleEvent(ctx, event))
		}, nil
	}
	return nil, fmt.Errorf("%w: %q (known: %v)", ErrUnknownFunction, logicalID, LogicalIDs)
}

func marshal[T any](v T, err error) (json.RawMessage, error) {
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}
