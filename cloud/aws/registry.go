// Package cloudaws implements the cloud functions' ports over aws-sdk-go-v2:
// the IoT control plane (service/iot), S3 (service/s3) and the IoT data-plane
// Publish, signed with SigV4 from the SDK core (the iotdataplane module is
// not used). Endpoints come from the standard AWS configuration or from
// explicit overrides (the lab).
package cloudaws

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/protocol"
)

var (
	_ ports.Registry  = (*Registry)(nil)
	_ ports.Store     = (*Store)(nil)
	_ ports.Publisher = (*Publisher)(nil)
)

// Registry is ports.Registry over the AWS IoT control plane.
type Registry struct {
	IoT *iot.Client
}

// NewIoTClient makes an IoT client. endpoint overrides the base endpoint
// when not empty. SDK retries are off: throttling is retried by
// ports.Backoff within the function's deadline.
func NewIoTClient(cfg aws.Config, endpoint string) *iot.Client {
	return iot.NewFromConfig(cfg, func(o *iot.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.RetryMaxAttempts = 1
	})
}

// NewRegistry makes a Registry.
func NewRegistry(cfg aws.Config, endpoint string) *Registry {
	return &Registry{IoT: NewIoTClient(cfg, endpoint)}
}

// mapErr turns SDK errors into the ports sentinels, keeping the original.
func mapErr(op, what string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	var api smithy.APIError
	if errors.As(err, &api) {
		switch api.ErrorCode() {
		case "ResourceNotFoundException", "NoSuchKey", "NotFound", "NoSuchBucket":
			sentinel = ports.ErrNotFound
		case "ResourceAlreadyExistsException", "PreconditionFailed":
			sentinel = ports.ErrExists
		case "ThrottlingException", "TooManyRequestsException", "Throttling", "SlowDown", "RequestLimitExceeded", "ConditionalRequestConflict":
			sentinel = ports.ErrThrottled
		case "NotModified":
			sentinel = ports.ErrNotModified
		}
	}
	if sentinel == nil {
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) {
			switch re.HTTPStatusCode() {
			case http.StatusTooManyRequests:
				sentinel = ports.ErrThrottled
			case http.StatusNotFound:
				sentinel = ports.ErrNotFound
			case http.StatusPreconditionFailed:
				sentinel = ports.ErrExists
			case http.StatusNotModified:
				sentinel = ports.ErrNotModified
			}
		}
	}
	if sentinel != nil {
		return fmt.Errorf("%s %s: %w (%w)", op, what, sentinel, err)
	}
	return fmt.Errorf("%s %s: %w", op, what, err)
}

// DescribeCertificate implements ports.Registry.
func (r *Registry) DescribeCertificate(ctx context.Context, id string) (ports.Certificate, error) {
	out, err := r.IoT.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		return ports.Certificate{}, mapErr("DescribeCertificate", id, err)
	}
	d := out.CertificateDescription
	if d == nil {
		return ports.Certificate{}, fmt.Errorf("DescribeCertificate %s: empty answer", id)
	}
	return ports.Certificate{
		ID: aws.ToString(d.CertificateId), ARN: aws.ToString(d.CertificateArn), Status: string(d.Status),
		PEM: aws.ToString(d.CertificatePem), CACertificateID: aws.ToString(d.CaCertificateId),
	}, nil
}

// UpdateCertificate implements ports.Registry.
func (r *Registry) UpdateCertificate(ctx context.Context, id, status string) error {
	_, err := r.IoT.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatus(status)})
	return mapErr("UpdateCertificate", id+" "+status, err)
}

// DeleteCertificate implements ports.Registry (the certificate must be
// INACTIVE or REVOKED and detached).
func (r *Registry) DeleteCertificate(ctx context.Context, id string) error {
	_, err := r.IoT.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: aws.String(id)})
	return mapErr("DeleteCertificate", id, err)
}

// CreateCertificateFromCSR implements ports.Registry.
func (r *Registry) CreateCertificateFromCSR(ctx context.Context, csrPEM string, active bool) (ports.Certificate, error) {
	out, err := r.IoT.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(csrPEM), SetAsActive: active})
	if err != nil {
		return ports.Certificate{}, mapErr("CreateCertificateFromCsr", "", err)
	}
	st := ports.StatusInactive
	if active {
		st = ports.StatusActive
	}
	return ports.Certificate{ID: aws.ToString(out.CertificateId), ARN: aws.ToString(out.CertificateArn), PEM: aws.ToString(out.CertificatePem), Status: st}, nil
}

// CreateThing implements ports.Registry.
func (r *Registry) CreateThing(ctx context.Context, name, thingType string, attrs map[string]string) error {
	in := &iot.CreateThingInput{ThingName: aws.String(name)}
	if thingType != "" {
		in.ThingTypeName = aws.String(thingType)
	}
	if len(attrs) > 0 {
		in.AttributePayload = &types.AttributePayload{Attributes: attrs}
	}
	_, err := r.IoT.CreateThing(ctx, in)
	return mapErr("CreateThing", name, err)
}

// DescribeThing implements ports.Registry.
func (r *Registry) DescribeThing(ctx context.Context, name string) (ports.Thing, error) {
	out, err := r.IoT.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(name)})
	if err != nil {
		return ports.Thing{}, mapErr("DescribeThing", name, err)
	}
	attrs := out.Attributes
	if attrs == nil {
		attrs = map[string]string{}
	}
	return ports.Thing{Name: aws.ToString(out.ThingName), Type: aws.ToString(out.ThingTypeName), Attributes: attrs, Version: out.Version}, nil
}

// UpdateThingAttributes implements ports.Registry (merge).
func (r *Registry) UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error {
	_, err := r.IoT.UpdateThing(ctx, &iot.UpdateThingInput{ThingName: aws.String(name), AttributePayload: &types.AttributePayload{Attributes: attrs, Merge: true}})
	return mapErr("UpdateThing", name, err)
}

// ListThings implements ports.Registry: one page per call (the renewal scan
// checks its deadline between pages, so no paginator here).
func (r *Registry) ListThings(ctx context.Context, thingType, next string) ([]ports.Thing, string, error) {
	in := &iot.ListThingsInput{MaxResults: aws.Int32(250)}
	if thingType != "" {
		in.ThingTypeName = aws.String(thingType)
	}
	if next != "" {
		in.NextToken = aws.String(next)
	}
	out, err := r.IoT.ListThings(ctx, in)
	if err != nil {
		return nil, "", mapErr("ListThings", thingType, err)
	}
	things := make([]ports.Thing, 0, len(out.Things))
	for _, t := range out.Things {
		things = append(things, ports.Thing{Name: aws.ToString(t.ThingName), Type: aws.ToString(t.ThingTypeName), Attributes: t.Attributes, Version: t.Version})
	}
	return things, aws.ToString(out.NextToken), nil
}

// AttachPolicy implements ports.Registry.
func (r *Registry) AttachPolicy(ctx context.Context, policy, target string) error {
	_, err := r.IoT.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(policy), Target: aws.String(target)})
	return mapErr("AttachPolicy", policy+" to "+target, err)
}

// DetachPolicy implements ports.Registry.
func (r *Registry) DetachPolicy(ctx context.Context, policy, target string) error {
	_, err := r.IoT.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String(policy), Target: aws.String(target)})
	return mapErr("DetachPolicy", policy+" from "+target, err)
}

// AttachThingPrincipal implements ports.Registry. Every bootcert
// certificate belongs to one device: it is attached with EXCLUSIVE_THING, so
// AWS refuses to attach it to any other thing ("The thing will be the only
// thing that's attached to the principal",
// https://docs.aws.amazon.com/iot/latest/apireference/API_AttachThingPrincipal.html).
func (r *Registry) AttachThingPrincipal(ctx context.Context, thing, principal string) error {
	_, err := r.IoT.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(principal), ThingPrincipalType: types.ThingPrincipalTypeExclusiveThing})
	return mapErr("AttachThingPrincipal", principal+" to "+thing, err)
}

// DetachThingPrincipal implements ports.Registry.
func (r *Registry) DetachThingPrincipal(ctx context.Context, thing, principal string) error {
	_, err := r.IoT.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String(thing), Principal: aws.String(principal)})
	return mapErr("DetachThingPrincipal", principal+" from "+thing, err)
}

// ListThingPrincipals implements ports.Registry: every page, through the
// SDK's paginator (nextToken,
// https://docs.aws.amazon.com/iot/latest/apireference/API_ListThingPrincipals.html).
func (r *Registry) ListThingPrincipals(ctx context.Context, thing string) ([]string, error) {
	var all []string
	p := iot.NewListThingPrincipalsPaginator(r.IoT, &iot.ListThingPrincipalsInput{ThingName: aws.String(thing)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return nil, mapErr("ListThingPrincipals", thing, err)
		}
		all = append(all, out.Principals...)
	}
	return all, nil
}

// AddThingToGroup implements ports.Registry.
func (r *Registry) AddThingToGroup(ctx context.Context, group, thing string) error {
	_, err := r.IoT.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String(group), ThingName: aws.String(thing)})
	return mapErr("AddThingToThingGroup", thing+" to "+group, err)
}

// RemoveThingFromGroup implements ports.Registry.
func (r *Registry) RemoveThingFromGroup(ctx context.Context, group, thing string) error {
	_, err := r.IoT.RemoveThingFromThingGroup(ctx, &iot.RemoveThingFromThingGroupInput{ThingGroupName: aws.String(group), ThingName: aws.String(thing)})
	return mapErr("RemoveThingFromThingGroup", thing+" from "+group, err)
}

// ListThingGroupsForThing implements ports.Registry: every page, through
// the SDK's paginator (nextToken,
// https://docs.aws.amazon.com/iot/latest/apireference/API_ListThingGroupsForThing.html).
func (r *Registry) ListThingGroupsForThing(ctx context.Context, thing string) ([]string, error) {
	var all []string
	p := iot.NewListThingGroupsForThingPaginator(r.IoT, &iot.ListThingGroupsForThingInput{ThingName: aws.String(thing)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return nil, mapErr("ListThingGroupsForThing", thing, err)
		}
		for _, g := range out.ThingGroups {
			all = append(all, aws.ToString(g.GroupName))
		}
	}
	return all, nil
}

// JobExecutionStatus implements ports.Registry.
func (r *Registry) JobExecutionStatus(ctx context.Context, jobID, thing string) (protocol.JobStatus, error) {
	out, err := r.IoT.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String(jobID), ThingName: aws.String(thing)})
	if err != nil {
		return "", mapErr("DescribeJobExecution", jobID+" of "+thing, err)
	}
	if out.Execution == nil {
		return "", fmt.Errorf("DescribeJobExecution %s of %s: %w", jobID, thing, ports.ErrNotFound)
	}
	return protocol.JobStatus(out.Execution.Status), nil
}

// DataEndpoint asks for the account's iot:Data-ATS endpoint.
func (r *Registry) DataEndpoint(ctx context.Context) (string, error) {
	out, err := r.IoT.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")})
	if err != nil {
		return "", mapErr("DescribeEndpoint", "iot:Data-ATS", err)
	}
	return aws.ToString(out.EndpointAddress), nil
}

// DeleteThing deletes a thing (its principals must be detached first;
// deleting a thing that does not exist succeeds,
// https://docs.aws.amazon.com/iot/latest/apireference/API_DeleteThing.html).
func (r *Registry) DeleteThing(ctx context.Context, name string) error {
	_, err := r.IoT.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String(name)})
	return mapErr("DeleteThing", name, err)
}
