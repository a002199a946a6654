// Package activation is the explicit activation API behind API Gateway (HTTP
// API, IAM auth): POST /devices/{deviceId}/activation approves a device and
// adds it to the rotation group; POST /devices/{deviceId}/deactivation
// decommissions it for good (lifecycle.Decommission: every certificate
// revoked, the thing deleted, the device on the deny list); GET
// /devices/{deviceId} reports its state.
package activation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/aws/aws-lambda-go/events"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/lifecycle"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/protocol"
)

// Device is the GET answer (and the POST answer after activation).
type Device struct {
	DeviceID        string        `json:"deviceId"`
	AllowListed     bool          `json:"allowListed"`
	Registered      bool          `json:"registered"`
	Activated       bool          `json:"activated"`
	InRotationGroup bool          `json:"inRotationGroup"`
	Bootstrap       string        `json:"bootstrapCertificateId,omitempty"`
	Operational     string        `json:"operationalCertificateId,omitempty"`
	Certificates    []Certificate `json:"certificates,omitempty"`
}

// Certificate is one certificate attached to the thing.
type Certificate struct {
	ID     string `json:"certificateId"`
	Status string `json:"status"`
}

// Registry is what the activation API needs of the AWS IoT registry
// (ports.Registry has it all).
type Registry interface {
	DescribeThing(ctx context.Context, name string) (ports.Thing, error)
	// CreateThing returns an error wrapping ports.ErrExists when the thing
	// exists with other attributes.
	CreateThing(ctx context.Context, name, thingType string, attrs map[string]string) error
	UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error
	ListThingGroupsForThing(ctx context.Context, thing string) ([]string, error)
	AddThingToGroup(ctx context.Context, group, thing string) error
	ListThingPrincipals(ctx context.Context, thing string) ([]string, error)
	DescribeCertificate(ctx context.Context, id string) (ports.Certificate, error)
}

// API serves the routes.
type API struct {
	// Lifecycle decommissions (the deactivation route); nil: the route
	// answers 501.
	Lifecycle *lifecycle.Manager
	Registry  Registry
	Trust     *fleet.Trust
	Settings  fleet.Settings
	Log       *slog.Logger
}

// HandleEvent decodes an API Gateway (HTTP API, payload 2.0) request.
func (a *API) HandleEvent(ctx context.Context, b []byte) (events.APIGatewayV2HTTPResponse, error) {
	var req events.APIGatewayV2HTTPRequest
	if err := protocol.Decode("API Gateway request", b, &req); err != nil {
		return respond(http.StatusBadRequest, map[string]string{"error": err.Error()}), nil
	}
	return a.Handle(ctx, req), nil
}

// Handle routes one request. Errors become JSON error responses.
func (a *API) Handle(ctx context.Context, req events.APIGatewayV2HTTPRequest) events.APIGatewayV2HTTPResponse {
	method := req.RequestContext.HTTP.Method
	path := req.RawPath
	if path == "" {
		path = req.RequestContext.HTTP.Path
	}
	if method == "" || path == "" {
		if m, p, ok := strings.Cut(req.RouteKey, " "); ok {
			if method == "" {
				method = m
			}
			if path == "" {
				path = p
			}
		}
	}
	parts := strings.Split(strings.Trim(path, "/"), "/")
	id := req.PathParameters["deviceId"]
	if id == "" && len(parts) >= 2 && parts[0] == "devices" {
		id = parts[1]
	}
	if err := protocol.ValidThingName(id); err != nil {
		return respond(http.StatusBadRequest, map[string]string{"error": err.Error()})
	}
	activate := strings.HasSuffix(strings.TrimRight(path, "/"), "/activation") || strings.HasSuffix(req.RouteKey, "/activation")
	deactivate := strings.HasSuffix(strings.TrimRight(path, "/"), "/deactivation") || strings.HasSuffix(req.RouteKey, "/deactivation")
	var d Device
	var err error
	switch {
	case deactivate && method == http.MethodPost:
		if a.Lifecycle == nil {
			return respond(http.StatusNotImplemented, map[string]string{"error": "deactivation is not configured"})
		}
		rec, err := a.Lifecycle.Decommission(ctx, id, "POST /devices/"+id+"/deactivation")
		if err != nil {
			a.Log.Error("deactivation", "deviceId", id, "err", err)
			if errors.Is(err, ports.ErrThrottled) {
				return respond(http.StatusTooManyRequests, map[string]string{"error": "throttled, retry later"})
			}
			return respond(http.StatusInternalServerError, map[string]string{"error": "internal error (the decommission is idempotent: retry)"})
		}
		return respond(http.StatusOK, rec)
	case deactivate:
		return respond(http.StatusMethodNotAllowed, map[string]string{"error": method + " " + path + " is not a route (POST /devices/{id}/deactivation)"})
	case activate && method == http.MethodPost:
		d, err = a.Activate(ctx, id)
	case !activate && method == http.MethodGet:
		d, err = a.Describe(ctx, id)
	default:
		return respond(http.StatusMethodNotAllowed, map[string]string{"error": method + " " + path + " is not a route (POST /devices/{id}/activation, POST /devices/{id}/deactivation, GET /devices/{id})"})
	}
	switch {
	case err == nil:
		return respond(http.StatusOK, d)
	case errors.Is(err, fleet.ErrDecommissioned):
		return respond(http.StatusGone, map[string]string{"error": err.Error()})
	case errors.Is(err, fleet.ErrNotAllowed):
		return respond(http.StatusNotFound, map[string]string{"error": err.Error()})
	case errors.Is(err, fleet.ErrRevoked):
		return respond(http.StatusConflict, map[string]string{"error": err.Error()})
	case errors.Is(err, ports.ErrThrottled):
		return respond(http.StatusTooManyRequests, map[string]string{"error": "throttled, retry later"})
	default:
		a.Log.Error("activation API", "deviceId", id, "err", err)
		return respond(http.StatusInternalServerError, map[string]string{"error": "internal error"})
	}
}

func respond(status int, v any) events.APIGatewayV2HTTPResponse {
	b, _ := json.Marshal(v)
	return events.APIGatewayV2HTTPResponse{StatusCode: status, Headers: map[string]string{"content-type": "application/json"}, Body: string(b)}
}

// Activate approves a device. The device must be on the allow list; when it
// has not connected yet its thing is created, already activated, and the
// activator adds it to the rotation group at JITR.
func (a *API) Activate(ctx context.Context, id string) (Device, error) {
	if _, err := a.Trust.Lookup(ctx, id); err != nil {
		return Device{}, err
	}
	t, err := a.Registry.DescribeThing(ctx, id)
	switch {
	case errors.Is(err, ports.ErrNotFound):
		err = a.Registry.CreateThing(ctx, id, a.Settings.ThingType, map[string]string{fleet.AttrActivated: "true"})
		if err != nil && !errors.Is(err, ports.ErrExists) {
			return Device{}, fmt.Errorf("creating thing %s: %w", id, err)
		}
		if errors.Is(err, ports.ErrExists) {
			if err := a.Registry.UpdateThingAttributes(ctx, id, map[string]string{fleet.AttrActivated: "true"}); err != nil {
				return Device{}, err
			}
		}
	case err != nil:
		return Device{}, err
	default:
		if b := t.Attributes[fleet.AttrBootstrap]; b != "" {
			c, err := a.Registry.DescribeCertificate(ctx, b)
			switch {
			case errors.Is(err, ports.ErrNotFound):
			case err != nil:
				return Device{}, fmt.Errorf("describing the bootstrap certificate %s of %s: %w", b, id, err)
			case c.Status == ports.StatusRevoked && t.Attributes[fleet.AttrOperational] == "":
				return Device{}, fmt.Errorf("%w: the bootstrap certificate %s of %s is revoked", fleet.ErrRevoked, b, id)
			}
		}
		if t.Attributes[fleet.AttrActivated] != "true" {
			if err := a.Registry.UpdateThingAttributes(ctx, id, map[string]string{fleet.AttrActivated: "true"}); err != nil {
				return Device{}, err
			}
		}
		// Registered (JITR done) and not rotated yet: rotate now.
		if t.Attributes[fleet.AttrBootstrap] != "" && t.Attributes[fleet.AttrOperational] == "" {
			if err := a.Registry.AddThingToGroup(ctx, a.Settings.RotationGroup, id); err != nil {
				return Device{}, err
			}
		}
	}
	a.Log.Info("device activated", "deviceId", id)
	return a.Describe(ctx, id)
}

// Describe reports a device's state.
func (a *API) Describe(ctx context.Context, id string) (Device, error) {
	d := Device{DeviceID: id}
	_, err := a.Trust.Lookup(ctx, id)
	switch {
	case err == nil:
		d.AllowListed = true
	case errors.Is(err, fleet.ErrNotAllowed):
	default:
		return d, err
	}
	t, err := a.Registry.DescribeThing(ctx, id)
	if errors.Is(err, ports.ErrNotFound) {
		if !d.AllowListed {
			return d, fmt.Errorf("%w: %s is neither on the allow list nor registered", fleet.ErrNotAllowed, id)
		}
		return d, nil
	}
	if err != nil {
		return d, err
	}
	d.Registered = t.Attributes[fleet.AttrBootstrap] != ""
	d.Activated = t.Attributes[fleet.AttrActivated] == "true"
	d.Bootstrap = t.Attributes[fleet.AttrBootstrap]
	d.Operational = t.Attributes[fleet.AttrOperational]
	groups, err := a.Registry.ListThingGroupsForThing(ctx, id)
	if err != nil {
		return d, err
	}
	d.InRotationGroup = slices.Contains(groups, a.Settings.RotationGroup)
	principals, err := a.Registry.ListThingPrincipals(ctx, id)
	if err != nil {
		return d, err
	}
	for _, arn := range principals {
		cid := fleet.CertARNID(arn)
		if cid == "" {
			continue
		}
		c, err := a.Registry.DescribeCertificate(ctx, cid)
		if err != nil {
			if errors.Is(err, ports.ErrNotFound) {
				continue
			}
			return d, err
		}
		d.Certificates = append(d.Certificates, Certificate{ID: cid, Status: c.Status})
	}
	return d, nil
}
