package admin

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/spf13/cobra"

	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/lifecycle"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/ctl/internal/cliout"
	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/clock"
)

// conn are the account connection flags of the lifecycle commands (the
// same meaning as cloud setup's).
type conn struct {
	bucket, endpoint, s3Endpoint, caBundle, lab, region string
}

func (c *conn) flags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&c.bucket, "bucket", "", "the stack's bucket (output BucketName) (required)")
	fl.StringVar(&c.endpoint, "endpoint-url", "", "IoT control plane endpoint override")
	fl.StringVar(&c.s3Endpoint, "s3-endpoint-url", "", "S3 endpoint override (path-style)")
	fl.StringVar(&c.caBundle, "ca-bundle", "", "PEM file of CAs to trust for the endpoints")
	fl.StringVar(&c.lab, "lab", "", "bootcert-lab data directory: endpoints, CA bundle and region from it")
	fl.StringVar(&c.region, "region", "", "AWS region (default from the AWS configuration)")
	cmd.MarkFlagRequired("bucket")
}

func (c *conn) config(ctx context.Context) (aws.Config, error) {
	if c.lab != "" {
		p := filepath.Join(c.lab, "endpoints.json")
		b, err := os.ReadFile(p)
		if err != nil {
			return aws.Config{}, fmt.Errorf("--lab: %w (is bootcert-lab serve --data %s running?)", err, c.lab)
		}
		var ep labEndpoints
		if err := json.Unmarshal(b, &ep); err != nil {
			return aws.Config{}, fmt.Errorf("--lab: %s: %w", p, err)
		}
		c.endpoint, c.s3Endpoint = or(c.endpoint, ep.API), or(c.s3Endpoint, ep.S3)
		c.caBundle, c.region = or(c.caBundle, filepath.Join(c.lab, "server-ca.pem")), or(c.region, ep.Region)
	}
	var opts []func(*config.LoadOptions) error
	if c.region != "" {
		opts = append(opts, config.WithRegion(c.region))
	}
	if c.caBundle != "" {
		pem, err := os.ReadFile(c.caBundle)
		if err != nil {
			return aws.Config{}, fmt.Errorf("--ca-bundle: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return aws.Config{}, fmt.Errorf("--ca-bundle %s: no PEM certificate", c.caBundle)
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	if c.lab != "" && os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		// Placeholders the lab accepts, not secrets (see cloud setup).
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKIALABPLACEHOLDER00", "lab-placeholder", "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return cfg, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	return cfg, nil
}

func or(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

// manager builds the lifecycle manager; its audit lines go to stderr.
func (c *conn) manager(ctx context.Context, cmd *cobra.Command) (*lifecycle.Manager, error) {
	cfg, err := c.config(ctx)
	if err != nil {
		return nil, err
	}
	s, err := fleet.FromEnv(func(k string) string {
		if k == fleet.EnvBucket {
			return c.bucket
		}
		return os.Getenv(k) // RECOVERY_BUDGET etc., as the stack sets them
	})
	if err != nil {
		return nil, err
	}
	rc, err := renewal.ConfigFromEnv(os.Getenv) // JOB_TIMEOUT etc., as the stack sets them
	if err != nil {
		return nil, err
	}
	reg := cloudaws.NewRegistry(cfg, c.endpoint)
	store := cloudaws.NewStore(cfg, c.bucket, c.s3Endpoint)
	log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
	rot := &renewal.Renewal{Registry: reg, Jobs: reg, Store: store, Settings: s, Config: rc, Clock: clock.Real{}, Log: log}
	return &lifecycle.Manager{Registry: reg, Deleter: reg, Rotations: rot, Store: store, Settings: s, Log: log}, nil
}

func newLifecycleCmds() []*cobra.Command {
	var asJSON *bool
	out := func(cmd *cobra.Command, v any, fields ...string) error {
		if *asJSON {
			return cliout.WriteJSON(cmd.OutOrStdout(), v)
		}
		return cliout.WriteFields(cmd.OutOrStdout(), fields...)
	}
	var c conn
	var certID, reason string
	revoke := &cobra.Command{
		Use:   "revoke DEVICE [--certificate-id ID]",
		Short: "Revoke a device's operational certificate; within its recovery budget the device is re-admitted on its bootstrap identity and rotates",
		Long: `Revokes the committed operational certificate (or --certificate-id) in AWS IoT.
Within the device's recovery budget (RECOVERY_BUDGET, default 2, raised with
"recovery-budget") the bootstrap certificate is made ACTIVE again and a rotation job
(a snapshot job bootcert-r-*, printed) is created for the thing: bootcertd,
refused on the revoked certificate, falls back to its bootstrap identity and
rotates to a new hardware key. Past the budget nothing is re-admitted and the
audit line (stderr) says RECOVERY_BUDGET_EXHAUSTED.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c.manager(cmd.Context(), cmd)
			if err != nil {
				return err
			}
			res, err := m.Revoke(cmd.Context(), args[0], certID)
			if res.Revoked != "" {
				if werr := out(cmd, res, "device", res.Thing, "revoked", res.Revoked, "recovered", strconv.FormatBool(res.Recovered), "reason", res.Reason, "recoveries left", strconv.Itoa(res.Remaining)); werr != nil {
					return werr
				}
			}
			return err
		},
	}
	c.flags(revoke)
	revoke.Flags().StringVar(&certID, "certificate-id", "", "the certificate to revoke (default: the committed operational certificate)")

	var c2 conn
	recoverCmd := &cobra.Command{
		Use:   "recover DEVICE",
		Short: "Re-admit a device on its bootstrap identity and queue a rotation (its key is gone, or its budget was raised); counts against the budget",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c2.manager(cmd.Context(), cmd)
			if err != nil {
				return err
			}
			res, err := m.Recover(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return out(cmd, res, "device", res.Thing, "recovered", strconv.FormatBool(res.Recovered), "reason", res.Reason, "recoveries left", strconv.Itoa(res.Remaining))
		},
	}
	c2.flags(recoverCmd)

	var c3 conn
	budget := &cobra.Command{
		Use:   "recovery-budget DEVICE [N]",
		Short: "Show or set a device's total number of automatic recoveries",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c3.manager(cmd.Context(), cmd)
			if err != nil {
				return err
			}
			var st lifecycle.BudgetStatus
			if len(args) == 2 {
				n, perr := strconv.Atoi(args[1])
				if perr != nil {
					return fmt.Errorf("recovery budget %q is not a whole number", args[1])
				}
				st, err = m.SetBudget(cmd.Context(), args[0], n)
			} else {
				st, err = m.Budget(cmd.Context(), args[0])
			}
			if err != nil {
				return err
			}
			return out(cmd, st, "device", st.Thing, "budget", strconv.Itoa(st.Budget), "used", strconv.Itoa(st.Used), "remaining", strconv.Itoa(st.Remaining))
		},
	}
	c3.flags(budget)

	var c4 conn
	decom := &cobra.Command{
		Use:   "decommission DEVICE [--reason TEXT]",
		Short: "Retire a device for good: revoke every certificate, delete the thing, put it on the deny list",
		Long: `Idempotent (run it again after a failure). The device goes on the deny list
(s3://BUCKET/trust/decommissioned.json) first, so that nothing admits it again
whatever the allow list says; then every certificate attached to the thing is
REVOKED (kept, so that AWS refuses it and JITR never registers it again) and
detached, and the thing is deleted. Also put the bootstrap certificate on the
factory CA's CRL (bootcertctl ca revoke, then bootcert-admin cloud setup --crl).
On the gateway: bootcertctl key delete, then remove /var/lib/bootcert
(docs/bootcertd.md, "Decommissioning").`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := c4.manager(cmd.Context(), cmd)
			if err != nil {
				return err
			}
			rec, err := m.Decommission(cmd.Context(), args[0], reason)
			if err != nil {
				return err
			}
			return out(cmd, rec, "device", rec.Thing, "decommissioned at", rec.At, "revoked certificates", fmt.Sprint(rec.Certificates), "bootstrap certificate (add to the factory CRL)", rec.BootstrapCertificateID)
		},
	}
	c4.flags(decom)
	decom.Flags().StringVar(&reason, "reason", "", "why (kept in the deny list record)")

	var c5 conn
	var caCert string
	retire := &cobra.Command{
		Use:   "retire-ca --ca-cert OLD.pem",
		Short: "End a factory CA's trust (CA rollover, a contract manufacturer dropped): AWS CA INACTIVE, out of the trusted bundle",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := c5.config(cmd.Context())
			if err != nil {
				return err
			}
			ca, err := factory.ReadCertificate(caCert)
			if err != nil {
				return fmt.Errorf("--ca-cert: %w", err)
			}
			res, err := setup.RetireCA(cmd.Context(), cloudaws.NewIoTClient(cfg, c5.endpoint), cloudaws.NewS3Client(cfg, c5.s3Endpoint), c5.bucket, ca)
			if err != nil {
				return err
			}
			return out(cmd, res, "CA certificate ID", res.CACertificateID, "deactivated", strconv.FormatBool(res.Deactivated), "CAs still trusted", strconv.Itoa(res.RemainingCAs))
		},
	}
	c5.flags(retire)
	retire.Flags().StringVar(&caCert, "ca-cert", "", "the CA certificate to retire, PEM (required)")
	retire.MarkFlagRequired("ca-cert")

	cmds := []*cobra.Command{revoke, recoverCmd, budget, decom, retire}
	asJSON = new(bool)
	for _, cmd := range cmds {
		cmd.Flags().BoolVar(asJSON, "json", false, "print the result as JSON")
	}
	return cmds
}
