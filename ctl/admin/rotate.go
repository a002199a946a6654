package admin

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/spf13/cobra"

	cloudaws "github.com/bootcert/bootcert/cloud/aws"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/cloud/renewal"
	"github.com/bootcert/bootcert/ctl/internal/cliout"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

type cloudRotateFlags struct {
	all                             bool
	olderThan                       string
	thingType                       string
	maxTPS                          float64
	endpoint, caBundle, lab, region string
}

func newCloudRotateCmd() *cobra.Command {
	var f cloudRotateFlags
	var asJSON *bool
	cmd := &cobra.Command{
		Use:   "rotate DEVICE... | --all | --older-than DURATION",
		Short: "Ask for a key and certificate rotation of devices (breach response)",
		Long: `Marks each selected device with the thing attribute rotationRequested (the time
now). The renewal function queues a rotation for every marked device whose
certificate was issued before that time, oldest first, at the fleet's pace
(template parameters RotationsPerHour and RotationBurst), on its next scan
(RenewalSchedule) -- run the scan at once with
  aws lambda invoke --function-name <the stack's RenewalFunction> /dev/stdout
(the lab: POST /lab/functions/RenewalFunction/invoke).

Idempotent: a device already marked after its current certificate was issued
is left alone, so running the command twice queues one rotation. The
registry updates themselves are paced by --max-tps.

  DEVICE...               these devices (thing names)
  --all                   every thing of the bootcert thing type
  --older-than DURATION   things whose certificate was issued more than
                          DURATION ago (e.g. 90d, 720h), or that have none`,
		Example: `  bootcert-admin cloud rotate gw-0001 gw-0002
  bootcert-admin cloud rotate --older-than 180d --json
  bootcert-admin cloud rotate --all --lab /tmp/lab`,
		RunE: func(cmd *cobra.Command, args []string) error {
			sel := 0
			if len(args) > 0 {
				sel++
			}
			if f.all {
				sel++
			}
			if f.olderThan != "" {
				sel++
			}
			if sel != 1 {
				return errors.New("cloud rotate: name devices, or give --all, or --older-than DURATION (exactly one of them)")
			}
			var older time.Duration
			if f.olderThan != "" {
				d, err := renewal.ParseDays(f.olderThan)
				if err != nil || d <= 0 {
					return fmt.Errorf("cloud rotate: --older-than %q: a positive duration such as 90d or 720h", f.olderThan)
				}
				older = d
			}
			for _, a := range args {
				if err := protocol.ValidThingName(a); err != nil {
					return fmt.Errorf("cloud rotate: device %q: %w", a, err)
				}
			}
			if !(f.maxTPS > 0) {
				return fmt.Errorf("cloud rotate: --max-tps %v: must be above 0", f.maxTPS)
			}
			cfg, err := adminAWSConfig(cmd.Context(), f.lab, &f.endpoint, f.caBundle, f.region)
			if err != nil {
				return err
			}
			reg := ports.RetryingRegistry(cloudaws.NewRegistry(cfg, f.endpoint), ports.Backoff{})
			res, err := RequestRotation(cmd.Context(), reg, RotateOptions{Things: args, All: f.all, OlderThan: older,
				ThingType: f.thingType, MaxTPS: f.maxTPS, Clock: clock.Real{}})
			if *asJSON {
				if werr := cliout.WriteJSON(cmd.OutOrStdout(), res); werr != nil {
					return werr
				}
			} else {
				for _, n := range res.Requested {
					fmt.Fprintf(cmd.OutOrStdout(), "%s\trotation requested\n", n)
				}
				for _, n := range res.AlreadyRequested {
					fmt.Fprintf(cmd.OutOrStdout(), "%s\talready requested\n", n)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d requested, %d already requested, %d scanned; the renewal function queues them at the fleet's pace\n",
					len(res.Requested), len(res.AlreadyRequested), res.Scanned)
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.all, "all", false, "every thing of --thing-type")
	fl.StringVar(&f.olderThan, "older-than", "", "things whose certificate is older than this (e.g. 90d, 720h), or have none")
	fl.StringVar(&f.thingType, "thing-type", "bootcert-gateway", "thing type scanned by --all and --older-than")
	fl.Float64Var(&f.maxTPS, "max-tps", 10, "most registry updates per second (UpdateThing)")
	fl.StringVar(&f.endpoint, "endpoint-url", "", "IoT control plane endpoint override")
	fl.StringVar(&f.caBundle, "ca-bundle", "", "PEM file of CAs to trust for the endpoint (the lab's server-ca.pem)")
	fl.StringVar(&f.lab, "lab", "", "bootcert-lab data directory: endpoint, CA bundle and region from it")
	fl.StringVar(&f.region, "region", "", "AWS region (default from the AWS configuration)")
	asJSON = cliout.AddJSONFlag(cmd)
	return cmd
}

// RotateRegistry is what cloud rotate needs of the registry.
type RotateRegistry interface {
	ListThings(ctx context.Context, thingType, nextToken string) ([]ports.Thing, string, error)
	DescribeThing(ctx context.Context, name string) (ports.Thing, error)
	UpdateThingAttributes(ctx context.Context, name string, attrs map[string]string) error
}

// RotateOptions select the things of cloud rotate.
type RotateOptions struct {
	Things    []string
	All       bool
	OlderThan time.Duration
	ThingType string
	MaxTPS    float64
	Clock     clock.Clock
}

// RotateResult is what cloud rotate did.
type RotateResult struct {
	Requested        []string `json:"requested"`
	AlreadyRequested []string `json:"alreadyRequested"`
	Scanned          int      `json:"scanned"`
}

// RequestRotation marks the selected things with renewal.AttrRotationRequested.
func RequestRotation(ctx context.Context, reg RotateRegistry, o RotateOptions) (RotateResult, error) {
	res := RotateResult{Requested: []string{}, AlreadyRequested: []string{}}
	var things []ports.Thing
	if len(o.Things) > 0 {
		for _, n := range o.Things {
			t, err := reg.DescribeThing(ctx, n)
			if errors.Is(err, ports.ErrNotFound) {
				return res, fmt.Errorf("cloud rotate: device %s: no such thing (nothing was changed)", n)
			}
			if err != nil {
				return res, fmt.Errorf("cloud rotate: device %s: %w", n, err)
			}
			things = append(things, t)
		}
	} else {
		next := ""
		for {
			page, n, err := reg.ListThings(ctx, o.ThingType, next)
			if err != nil {
				return res, fmt.Errorf("cloud rotate: listing things of type %s: %w", o.ThingType, err)
			}
			things = append(things, page...)
			if n == "" {
				break
			}
			next = n
		}
	}
	now := o.Clock.Now()
	interval := time.Duration(float64(time.Second) / o.MaxTPS)
	var last time.Time
	for _, t := range things {
		res.Scanned++
		nb, nbErr := strconv.ParseInt(t.Attributes[fleet.AttrNotBefore], 10, 64)
		if o.OlderThan > 0 && nbErr == nil && t.Attributes[fleet.AttrOperational] != "" && now.Sub(time.Unix(nb, 0)) <= o.OlderThan {
			continue
		}
		if req, err := strconv.ParseInt(t.Attributes[renewal.AttrRotationRequested], 10, 64); err == nil && (nbErr != nil || req >= nb) {
			res.AlreadyRequested = append(res.AlreadyRequested, t.Name)
			continue
		}
		if !last.IsZero() {
			if wait := interval - o.Clock.Now().Sub(last); wait > 0 {
				select {
				case <-ctx.Done():
					return res, ctx.Err()
				case <-o.Clock.After(wait):
				}
			}
		}
		last = o.Clock.Now()
		if err := reg.UpdateThingAttributes(ctx, t.Name, map[string]string{renewal.AttrRotationRequested: strconv.FormatInt(now.Unix(), 10)}); err != nil {
			return res, fmt.Errorf("cloud rotate: marking %s (%d marked before it; run again to continue): %w", t.Name, len(res.Requested), err)
		}
		res.Requested = append(res.Requested, t.Name)
	}
	return res, nil
}

// adminAWSConfig loads the AWS configuration, or the lab's (--lab DIR:
// endpoint, CA bundle and region from DIR/endpoints.json).
func adminAWSConfig(ctx context.Context, lab string, endpoint *string, caBundle, region string) (aws.Config, error) {
	if lab != "" {
		p := filepath.Join(lab, "endpoints.json")
		b, err := os.ReadFile(p)
		if err != nil {
			return aws.Config{}, fmt.Errorf("--lab: %w (is bootcert-lab serve --data %s running?)", err, lab)
		}
		var ep labEndpoints
		if err := json.Unmarshal(b, &ep); err != nil {
			return aws.Config{}, fmt.Errorf("--lab: %s: %w", p, err)
		}
		if *endpoint == "" {
			*endpoint = ep.API
		}
		if caBundle == "" {
			caBundle = filepath.Join(lab, "server-ca.pem")
		}
		if region == "" {
			region = ep.Region
		}
	}
	var opts []func(*config.LoadOptions) error
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	if caBundle != "" {
		pem, err := os.ReadFile(caBundle)
		if err != nil {
			return aws.Config{}, fmt.Errorf("--ca-bundle: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return aws.Config{}, fmt.Errorf("--ca-bundle %s: no PEM certificate", caBundle)
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	if lab != "" && os.Getenv("AWS_ACCESS_KEY_ID") == "" {
		// The lab accepts any SigV4 credentials unless started with
		// --credentials; placeholders, not secrets.
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKIALABPLACEHOLDER00", "lab-placeholder", "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	return cfg, nil
}
