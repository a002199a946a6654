// Package setup does what CloudFormation cannot: it registers the factory
// CA with AWS IoT (registration code, verification certificate,
// auto-registration on), uploads the factory CA certificate, the allow list
// and the CRL to the bucket, enables job execution events, creates the
// continuous rotation job on the rotation group and creates or registers
// the claim certificate of onboarding by claim. A maker without a factory
// CA (onboarding by claim only) gives no CA: the CA steps are skipped. Every
// step is idempotent: running it again changes only what differs.
package setup

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Options say what to set up.
type Options struct {
	Bucket string
	// CACert is the factory CA; CASigner its key (any keystore backend),
	// needed only when the CA is not registered yet (verification
	// certificate). CACert nil is a maker that onboards by claim only
	// (Claim must be set): no CA is registered, the CA bundle in the bucket
	// is left as it is (none: no factory CA trusted, fleet.Trust.CAs) and
	// no CRL can be given.
	CACert   *x509.Certificate
	CASigner crypto.Signer
	// AllowList (manifest CSV) and CRL (DER or PEM, signed by CACert) are
	// uploaded when non-nil, after validation.
	AllowList []byte
	CRL       []byte
	// Claim, when set, creates or registers the claim certificate of
	// onboarding by claim (Claim), after the job.
	Claim *ClaimOptions
	// Keys in the bucket; empty: the fleet defaults.
	AllowListKey, CRLKey, CAKey string
	JobID                       string // default bootcert-rotation
	Group                       string // default bootcert-rotation
	// SkipEventConfig skips UpdateEventConfigurations (JOB_EXECUTION
	// events, the reaper's input).
	SkipEventConfig bool
	Now             func() time.Time
}

// Result says what changed.
type Result struct {
	CACertificateID string   `json:"caCertificateId"`
	CARegistered    bool     `json:"caRegistered"`
	CAUpdated       bool     `json:"caUpdated"`
	Uploaded        []string `json:"uploaded,omitempty"`
	EventsEnabled   bool     `json:"jobExecutionEventsEnabled"`
	JobID           string   `json:"jobId"`
	JobCreated      bool     `json:"jobCreated"`
	// Claim is the fleet provisioning claim certificate (Claim), when one
	// was asked for.
	Claim *ClaimResult `json:"claim,omitempty"`
}

func code(err error) string {
	var api smithy.APIError
	if errors.As(err, &api) {
		return api.ErrorCode()
	}
	return ""
}

// Run performs the setup.
func Run(ctx context.Context, iotc *iot.Client, s3c *s3.Client, o Options) (Result, error) {
	var res Result
	if o.CACert == nil && o.Claim == nil {
		return res, errors.New("setup: give the factory CA (--ca-cert: devices onboard by JITR with a bootstrap certificate of that CA), a claim certificate (--claim-csr or --claim-cert: devices onboard by claim, fleet provisioning), or both")
	}
	if o.CACert == nil && o.CRL != nil {
		return res, errors.New("setup: --crl needs --ca-cert: a CRL is verified against the factory CA that signed it, and a fleet without a factory CA has no CRL")
	}
	if o.Bucket == "" {
		return res, errors.New("setup: the bucket is required (--bucket, the stack output BucketName)")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AllowListKey == "" {
		o.AllowListKey = fleet.DefaultAllowListKey
	}
	if o.CRLKey == "" {
		o.CRLKey = fleet.DefaultCRLKey
	}
	if o.CAKey == "" {
		o.CAKey = fleet.DefaultCAKey
	}
	if o.JobID == "" {
		o.JobID = "bootcert-rotation"
	}
	if o.Group == "" {
		o.Group = "bootcert-rotation"
	}
	// Validate inputs before touching anything.
	if o.Claim != nil {
		if err := o.Claim.validate(); err != nil {
			return res, err
		}
	}
	if o.AllowList != nil {
		if _, err := manifest.Parse(bytes.NewReader(o.AllowList)); err != nil {
			return res, fmt.Errorf("setup: allow list: %w", err)
		}
	}
	if o.CRL != nil {
		rl, err := fleet.ParseOneCRL(o.CRL, o.CACert)
		if err != nil {
			return res, fmt.Errorf("setup: CRL: %w", err)
		}
		if err := fleet.Fresh(rl, o.CACert, o.Now(), 0); err != nil {
			return res, fmt.Errorf("setup: CRL: %w", err)
		}
	}
	var caPEM, crlBody []byte
	if o.CACert != nil {
		if err := registerCA(ctx, iotc, o, &res); err != nil {
			return res, err
		}
		// Several factory CAs can be trusted at once: the CA is added to
		// the bundle and its CRL replaces only its own (trust.go).
		var err error
		if caPEM, crlBody, err = mergeTrust(ctx, s3c, o); err != nil {
			return res, err
		}
	} else if err := ensureDenyList(ctx, s3c, o.Bucket); err != nil {
		// Claim only: no CA object is uploaded. The functions read a
		// missing one as no factory CA trusted (fleet.Trust.CAs), which
		// is what an empty bundle would say; an object written for it
		// would only have to be special-cased everywhere the bundle is
		// merged or parsed.
		return res, err
	}
	for _, up := range []struct {
		key  string
		body []byte
	}{{o.CAKey, caPEM}, {o.AllowListKey, o.AllowList}, {o.CRLKey, crlBody}} {
		if up.body == nil {
			continue
		}
		_, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(o.Bucket), Key: aws.String(up.key), Body: bytes.NewReader(up.body), ContentLength: aws.Int64(int64(len(up.body)))})
		if err != nil {
			return res, fmt.Errorf("setup: uploading s3://%s/%s: %w", o.Bucket, up.key, err)
		}
		res.Uploaded = append(res.Uploaded, "s3://"+o.Bucket+"/"+up.key)
	}
	if !o.SkipEventConfig {
		_, err := iotc.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"JOB_EXECUTION": {Enabled: true}}})
		if err != nil {
			return res, fmt.Errorf("setup: enabling JOB_EXECUTION events (the reaper needs them): %w", err)
		}
		res.EventsEnabled = true
	}
	if err := createJob(ctx, iotc, o, &res); err != nil {
		return res, err
	}
	if o.Claim != nil {
		cr, err := Claim(ctx, iotc, *o.Claim)
		if err != nil {
			return res, err
		}
		res.Claim = &cr
	}
	return res, nil
}

func registerCA(ctx context.Context, iotc *iot.Client, o Options, res *Result) error {
	id := protocol.CertificateID(o.CACert.Raw)
	d, err := iotc.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: aws.String(id)})
	if err == nil && d.CertificateDescription != nil {
		res.CACertificateID = id
		cd := d.CertificateDescription
		if cd.Status != types.CACertificateStatusActive || cd.AutoRegistrationStatus != types.AutoRegistrationStatusEnable {
			_, err := iotc.UpdateCACertificate(ctx, &iot.UpdateCACertificateInput{CertificateId: aws.String(id), NewStatus: types.CACertificateStatusActive, NewAutoRegistrationStatus: types.AutoRegistrationStatusEnable})
			if err != nil {
				return fmt.Errorf("setup: activating CA %s with auto-registration: %w", id, err)
			}
			res.CAUpdated = true
		}
		return nil
	}
	if err != nil && code(err) != "ResourceNotFoundException" {
		return fmt.Errorf("setup: describing CA %s: %w", id, err)
	}
	if o.CASigner == nil {
		return fmt.Errorf("setup: CA %s is not registered and no CA key was given (--ca-key) for the verification certificate", id)
	}
	rc, err := iotc.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil {
		return fmt.Errorf("setup: GetRegistrationCode: %w", err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	ver, err := factory.IssueFor(o.CACert, o.CASigner, factory.Request{PublicKey: &k.PublicKey, CommonName: aws.ToString(rc.RegistrationCode), Days: 1}, o.Now())
	if err != nil {
		return fmt.Errorf("setup: verification certificate: %w", err)
	}
	out, err := iotc.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{
		CaCertificate:           aws.String(string(protocol.EncodeChain([]*x509.Certificate{o.CACert}))),
		VerificationCertificate: aws.String(string(protocol.EncodeChain([]*x509.Certificate{ver}))),
		SetAsActive:             true, AllowAutoRegistration: true,
	})
	if err != nil {
		return fmt.Errorf("setup: RegisterCACertificate: %w", err)
	}
	res.CACertificateID = aws.ToString(out.CertificateId)
	res.CARegistered = true
	return nil
}

func createJob(ctx context.Context, iotc *iot.Client, o Options, res *Result) error {
	res.JobID = o.JobID
	j, err := iotc.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String(o.JobID)})
	if err == nil && j.Job != nil {
		if j.Job.TargetSelection != types.TargetSelectionContinuous {
			return fmt.Errorf("setup: job %s exists but is not continuous; delete it or choose another --job-id", o.JobID)
		}
		return nil
	}
	if err != nil && code(err) != "ResourceNotFoundException" {
		return fmt.Errorf("setup: describing job %s: %w", o.JobID, err)
	}
	g, err := iotc.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String(o.Group)})
	if err != nil {
		return fmt.Errorf("setup: thing group %s (deploy the template first): %w", o.Group, err)
	}
	doc, err := json.Marshal(protocol.DefaultJobDocument())
	if err != nil {
		return fmt.Errorf("setup: encoding the job document: %w", err)
	}
	_, err = iotc.CreateJob(ctx, &iot.CreateJobInput{
		JobId: aws.String(o.JobID), Targets: []string{aws.ToString(g.ThingGroupArn)}, Document: aws.String(string(doc)),
		TargetSelection: types.TargetSelectionContinuous, Description: aws.String("bootcert key and certificate rotation"),
	})
	if err != nil {
		return fmt.Errorf("setup: creating continuous job %s on %s: %w", o.JobID, o.Group, err)
	}
	res.JobCreated = true
	return nil
}
