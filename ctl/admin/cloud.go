package admin

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/spf13/cobra"

	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/ctl/internal/cliout"
	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/keystore"
)

func newCloudCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cloud",
		Short: "Cloud side: one-time setup of AWS IoT (or the lab) after the stack is deployed",
		Long: `The cloud side is an AWS SAM stack (cloud/template.yaml, see docs/cloud.md).
CloudFormation has no resource for a continuous IoT job or for registering a
CA certificate, so "bootcert-admin cloud setup" does those through the AWS SDK.`,
	}
	cmd.AddCommand(newCloudSetupCmd())
	cmd.AddCommand(newCloudRotateCmd())
	cmd.AddCommand(newLifecycleCmds()...)
	return cmd
}

type cloudSetupFlags struct {
	bucket, caCert, caKey, allowList, crl string
	endpoint, s3Endpoint, caBundle, lab   string
	region, jobID, group                  string
	skipEvents                            bool
	claimCSR, claimCert, claimOut         string
}

func newCloudSetupCmd() *cobra.Command {
	var f cloudSetupFlags
	var asJSON *bool
	cmd := &cobra.Command{
		Use:   "setup --bucket BUCKET {--ca-cert ca.pem [--ca-key URI] [--crl crl.pem] | --claim-csr claim.csr | --claim-cert claim.pem} [--claim-out FILE] [--allow-list manifest.csv]",
		Short: "Register the factory CA and/or the claim certificate, upload allow list and CRL, create the continuous rotation job",
		Long: `Idempotent; run it after "sam deploy" and again whenever the allow list or
the CRL changes. Give --ca-cert (devices onboard by JITR with a bootstrap
certificate of your factory CA), a claim option (--claim-csr or --claim-cert:
devices onboard by claim, AWS IoT fleet provisioning, for makers without a
factory CA), or both:

  1. with --ca-cert: registers the factory CA with AWS IoT (registration code,
     a verification certificate signed by --ca-key, ACTIVE, auto-registration
     on), or turns an already registered one ACTIVE with auto-registration;
  2. uploads the allow list (the factory manifest) and, with --ca-cert, the CA
     certificate and the CRL to the stack's bucket (validated first: a bad
     file changes nothing);
  3. enables JOB_EXECUTION events (the reaper's input);
  4. creates the continuous job bootcert-rotation on the group bootcert-rotation;
  5. with --claim-csr or --claim-cert: the claim certificate of onboarding by
     claim (fleet provisioning, docs/protocol.md): AWS IoT issues it from your
     CSR (the claim key stays where you made it) or registers the one you
     bring, ACTIVE, with the policy bootcert-claim; --claim-out writes it.

Without --ca-cert (a claim-only maker) no CA is registered or uploaded: the
functions then trust no factory CA (a JITR is refused; AWS-issued
certificates are checked as usual) and --crl is refused. To upload a new
allow list later, run it again with --claim-cert and the claim certificate
--claim-out wrote: registering it again changes nothing (--claim-csr would
issue another claim certificate each time).

AWS endpoints and credentials come from the standard AWS configuration
(AWS_PROFILE, AWS_REGION, ...). --lab DIR points at a running bootcert-lab
(its DIR/endpoints.json and DIR/server-ca.pem).`,
		Example: `  bootcert-admin cloud setup --bucket bootcert-123456789012-eu-west-1 \
    --ca-cert /etc/bootcert/factory-ca/ca.pem \
    --ca-key 'pkcs11:token=factory;object=factory-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/hsm-pin' \
    --allow-list manifest.csv --crl /etc/bootcert/factory-ca/crl.pem

  # a maker without a factory CA: onboarding by claim only
  bootcert-admin cloud setup --bucket bootcert-123456789012-eu-west-1 \
    --claim-csr claim.csr --claim-out claim-cert.pem --allow-list serials.csv
  # later allow lists: the same claim certificate, registered again
  bootcert-admin cloud setup --bucket bootcert-123456789012-eu-west-1 \
    --claim-cert claim-cert.pem --allow-list serials.csv

  # against the lab
  bootcert-admin cloud setup --lab /tmp/lab --bucket bootcert-123456789012-us-east-1 \
    --ca-cert ca/ca.pem --ca-key file:$PWD/ca/ca.key --allow-list manifest.csv`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := runCloudSetup(cmd.Context(), f)
			if err != nil {
				return err
			}
			if *asJSON {
				return cliout.WriteJSON(cmd.OutOrStdout(), res)
			}
			caID := res.CACertificateID
			if caID == "" {
				caID = "(none: no --ca-cert, onboarding by claim only)"
			}
			return cliout.WriteFields(cmd.OutOrStdout(),
				"CA certificate ID", caID,
				"CA registered now", fmt.Sprint(res.CARegistered),
				"uploaded", strings.Join(res.Uploaded, " "),
				"job execution events", fmt.Sprint(res.EventsEnabled),
				"rotation job", res.JobID+map[bool]string{true: " (created)", false: " (exists)"}[res.JobCreated],
				"claim certificate", claimSummary(res.Claim))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.bucket, "bucket", "", "the stack's bucket (output BucketName) (required)")
	fl.StringVar(&f.caCert, "ca-cert", "", "factory CA certificate, PEM (JITR onboarding; optional for a maker that onboards only by claim)")
	fl.StringVar(&f.caKey, "ca-key", "", "factory CA key URI (pkcs11:, tpm:, file:), needed to register the CA the first time")
	fl.StringVar(&f.allowList, "allow-list", "", "allow list to upload (factory manifest CSV)")
	fl.StringVar(&f.crl, "crl", "", "CRL to upload (DER or PEM, signed by the factory CA)")
	fl.StringVar(&f.endpoint, "endpoint-url", "", "IoT control plane endpoint override (e.g. the lab's https://127.0.0.1:PORT)")
	fl.StringVar(&f.s3Endpoint, "s3-endpoint-url", "", "S3 endpoint override (path-style)")
	fl.StringVar(&f.caBundle, "ca-bundle", "", "PEM file of CAs to trust for the endpoints (the lab's server-ca.pem)")
	fl.StringVar(&f.lab, "lab", "", "bootcert-lab data directory: endpoints, CA bundle and region from it")
	fl.StringVar(&f.region, "region", "", "AWS region (default from the AWS configuration)")
	fl.StringVar(&f.jobID, "job-id", "bootcert-rotation", "continuous job ID")
	fl.StringVar(&f.group, "group", "bootcert-rotation", "rotation thing group")
	fl.StringVar(&f.claimCSR, "claim-csr", "", "fleet provisioning: CSR (PEM) of the claim key; AWS IoT issues the claim certificate")
	fl.StringVar(&f.claimCert, "claim-cert", "", "fleet provisioning: a claim certificate (PEM) you bring, registered without its CA")
	fl.StringVar(&f.claimOut, "claim-out", "", "write the claim certificate (PEM) to this file for the firmware image")
	fl.BoolVar(&f.skipEvents, "skip-event-config", false, "do not call UpdateEventConfigurations (JOB_EXECUTION events; the reaper needs them)")
	asJSON = cliout.AddJSONFlag(cmd)
	cmd.MarkFlagRequired("bucket")
	return cmd
}

type labEndpoints struct {
	API      string `json:"api"`
	S3       string `json:"s3"`
	ServerCA string `json:"serverCa"`
	Region   string `json:"region"`
}

func runCloudSetup(ctx context.Context, f cloudSetupFlags) (setup.Result, error) {
	if f.lab != "" {
		p := filepath.Join(f.lab, "endpoints.json")
		b, err := os.ReadFile(p)
		if err != nil {
			return setup.Result{}, fmt.Errorf("--lab: %w (is bootcert-lab serve --data %s running?)", err, f.lab)
		}
		var ep labEndpoints
		if err := json.Unmarshal(b, &ep); err != nil {
			return setup.Result{}, fmt.Errorf("--lab: %s: %w", p, err)
		}
		if f.endpoint == "" {
			f.endpoint = ep.API
		}
		if f.s3Endpoint == "" {
			f.s3Endpoint = ep.S3
		}
		if f.caBundle == "" {
			f.caBundle = filepath.Join(f.lab, "server-ca.pem")
		}
		if f.region == "" {
			f.region = ep.Region
		}
	}
	claim := f.claimCSR != "" || f.claimCert != ""
	if f.claimOut != "" && !claim {
		return setup.Result{}, fmt.Errorf("--claim-out needs --claim-csr or --claim-cert")
	}
	if f.caCert == "" {
		switch {
		case !claim:
			return setup.Result{}, fmt.Errorf("give --ca-cert (JITR onboarding: devices with a bootstrap certificate of your factory CA), --claim-csr or --claim-cert (onboarding by claim, fleet provisioning: makers without a factory CA), or both")
		case f.caKey != "":
			return setup.Result{}, fmt.Errorf("--ca-key needs --ca-cert (the factory CA it is the key of)")
		case f.crl != "":
			return setup.Result{}, fmt.Errorf("--crl needs --ca-cert: a CRL is checked against the factory CA that signed it, and a claim-only fleet (no --ca-cert) has no factory CA")
		}
	}
	var caCert *x509.Certificate
	var err error
	if f.caCert != "" {
		if caCert, err = factory.ReadCertificate(f.caCert); err != nil {
			return setup.Result{}, fmt.Errorf("--ca-cert: %w", err)
		}
	}
	var signer crypto.Signer
	if f.caKey != "" {
		signer, err = keystore.Open(ctx, f.caKey)
		if err != nil {
			return setup.Result{}, fmt.Errorf("--ca-key: %w", err)
		}
		defer keystore.CloseSigner(signer)
	}
	o := setup.Options{Bucket: f.bucket, CACert: caCert, CASigner: signer, JobID: f.jobID, Group: f.group, SkipEventConfig: f.skipEvents, Now: time.Now}
	if f.allowList != "" {
		if o.AllowList, err = os.ReadFile(f.allowList); err != nil {
			return setup.Result{}, fmt.Errorf("--allow-list: %w", err)
		}
	}
	if f.crl != "" {
		if o.CRL, err = os.ReadFile(f.crl); err != nil {
			return setup.Result{}, fmt.Errorf("--crl: %w", err)
		}
	}
	var opts []func(*config.LoadOptions) error
	if f.region != "" {
		opts = append(opts, config.WithRegion(f.region))
	}
	if f.caBundle != "" {
		pem, err := os.ReadFile(f.caBundle)
		if err != nil {
			return setup.Result{}, fmt.Errorf("--ca-bundle: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return setup.Result{}, fmt.Errorf("--ca-bundle %s: no PEM certificate", f.caBundle)
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	if f.lab != "" && os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		// The lab accepts any SigV4 credentials unless started with
		// --credentials; these are placeholders, not secrets.
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKIALABPLACEHOLDER00", "lab-placeholder", "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return setup.Result{}, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	iotc := cloudaws.NewIoTClient(cfg, f.endpoint)
	s3c := cloudaws.NewS3Client(cfg, f.s3Endpoint)
	if claim {
		o.Claim = &setup.ClaimOptions{}
		if f.claimCSR != "" {
			if o.Claim.CSRPEM, err = os.ReadFile(f.claimCSR); err != nil {
				return setup.Result{}, fmt.Errorf("--claim-csr: %w", err)
			}
		}
		if f.claimCert != "" {
			if o.Claim.CertPEM, err = os.ReadFile(f.claimCert); err != nil {
				return setup.Result{}, fmt.Errorf("--claim-cert: %w", err)
			}
		}
	}
	res, err := setup.Run(ctx, iotc, s3c, o)
	if err != nil || res.Claim == nil {
		return res, err
	}
	if f.claimOut != "" {
		if err := atomicfile.WriteFile(f.claimOut, []byte(res.Claim.CertificatePEM), 0o644); err != nil {
			return res, fmt.Errorf("--claim-out: %w", err)
		}
	}
	return res, nil
}

func claimSummary(c *setup.ClaimResult) string {
	if c == nil {
		return "(none asked for)"
	}
	return c.CertificateID + " (policy " + c.Policy + map[bool]string{true: ", created)", false: ", already registered)"}[c.Created]
}
