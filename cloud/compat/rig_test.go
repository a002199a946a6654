package compat_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/manifest"
)

// templatePath is the real SAM template: the lab enforces its policies and
// runs its rules, so these tests see what a deployment would.
const templatePath = "../template.yaml"

// bucket is the template's bucket name (bootcert-${AWS::AccountId}-${AWS::Region})
// for the lab's default account and region.
const bucket = "bootcert-123456789012-us-east-1"

type rig struct {
	t     *testing.T
	lab   *lab.Lab
	dir   string
	iot   *iot.Client
	s3    *s3.Client
	ca    *testpki.CA
	setup setup.Result
}

// startLab starts the lab in-process with the real template and the
// functions built in-process (cfg adjusts the configuration, e.g. NoBuild).
func startLab(t *testing.T, adjust func(*lab.Config)) *rig {
	t.Helper()
	dir := t.TempDir()
	cfg := lab.Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0", TemplatePath: templatePath}
	if adjust != nil {
		adjust(&cfg)
	}
	l, err := lab.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	ac := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	return &rig{t: t, lab: l, dir: dir,
		iot: iot.NewFromConfig(ac, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) }),
		s3: s3.NewFromConfig(ac, func(o *s3.Options) {
			o.BaseEndpoint = aws.String(l.Endpoints().S3)
			o.UsePathStyle = true
		}),
		ca: testpki.NewCA(t, "bootcert factory CA", time.Now()),
	}
}

// runSetup runs the code of `bootcertctl cloud setup`: registers the
// factory CA (auto-registration on), uploads the allow list, the CRL and
// the CA, creates the continuous rotation job.
func (r *rig) runSetup(entries []manifest.Entry, revoked ...*testpki.Device) {
	r.t.Helper()
	var certs []*x509.Certificate
	for _, d := range revoked {
		certs = append(certs, d.Cert)
	}
	res, err := setup.Run(context.Background(), r.iot, r.s3, setup.Options{Bucket: bucket, CACert: r.ca.Cert, CASigner: r.ca.Key,
		AllowList: testpki.AllowList(r.t, entries...), CRL: r.ca.CRL(r.t, time.Now(), certs...)})
	if err != nil {
		r.t.Fatalf("cloud setup: %v", err)
	}
	r.setup = res
}

// writeFile writes name under the rig's directory and returns its path.
func (r *rig) writeFile(name string, b []byte) string {
	r.t.Helper()
	p := filepath.Join(r.t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		r.t.Fatal(err)
	}
	return p
}

func (r *rig) certStatus(id string) string {
	out, err := r.iot.DescribeCertificate(context.Background(), &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
	if err != nil {
		return ""
	}
	return string(out.CertificateDescription.Status)
}

func (r *rig) jobStatus(thing string) string {
	out, err := r.iot.DescribeJobExecution(context.Background(), &iot.DescribeJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String(thing)})
	if err != nil || out.Execution == nil {
		return ""
	}
	return string(out.Execution.Status)
}

// eventually polls cond (another process or goroutine changes the state).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, cond, "%s", what)
}
