package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/manifest"
)

// newClaimOnlyCloud is a lab with the real template set up as a maker
// without a factory CA: through setup.Run, the code path of
// bootcert-admin cloud setup --claim-csr without --ca-cert (no CA
// registered, no CA object in the bucket). It returns the claim credential.
func newClaimOnlyCloud(t *testing.T) (*cloudEnv, claim) {
	t.Helper()
	c := &cloudEnv{t: t, dir: t.TempDir(), data: t.TempDir()}
	c.start()
	tmpl, err := template.Load(templatePath(), template.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range tmpl.Buckets {
		c.bucket = b
	}
	// newDevice signs a bootstrap certificate for every device; a claim
	// device never uses it. This CA is neither registered nor uploaded.
	c.ca = testca.New(t, "unregistered CA")

	ctx := context.Background()
	dir := t.TempDir()
	uri := "file:" + filepath.Join(dir, "claim.pem")
	k, err := keystore.Generate(ctx, uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bootcert claim"}}, k)
	keystore.CloseSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	res, err := setup.Run(ctx, c.api, c.s3, setup.Options{
		Bucket:    c.bucket,
		AllowList: []byte(strings.Join(manifest.Header, ",") + "\n"),
		Claim:     &setup.ClaimOptions{CSRPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})},
	})
	if err != nil {
		t.Fatalf("setup.Run (claim only): %v", err)
	}
	if res.CACertificateID != "" || res.CARegistered || !res.JobCreated || !res.EventsEnabled || res.Claim == nil {
		t.Fatalf("setup.Run (claim only): %+v", res)
	}
	f := filepath.Join(dir, "claim-cert.pem")
	os.WriteFile(f, []byte(res.Claim.CertificatePEM), 0o600)
	return c, claim{keyURI: uri, certFile: f, id: res.Claim.CertificateID}
}

// TestFleetProvisioningClaimOnly: a maker without a factory CA. The cloud
// is set up with the claim certificate only (no CA registered, no CA object
// in the bucket); the real bootcertd onboards by claim (the hook checks the
// claim certificate against no factory CA) and then rotates through the
// continuous job (the vendor answers the get with no CA object).
func TestFleetProvisioningClaimOnly(t *testing.T) {
	c, cl := newClaimOnlyCloud(t)
	ctx := context.Background()
	if cas, err := c.api.ListCACertificates(ctx, &iot.ListCACertificatesInput{}); err != nil || len(cas.Certificates) != 0 {
		t.Fatalf("CA certificates %+v %v, want none", cas, err)
	}
	_, err := c.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(c.bucket), Key: aws.String("trust/factory-ca.pem")})
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "NoSuchKey" {
		t.Fatalf("trust/factory-ca.pem: %v, want NoSuchKey", err)
	}

	d := claimDevice(t, c, cl, "gw-fp-noca", onTPM)
	d.start()
	st := d.waitFor("operational generation 2", operational(2))
	if st.LastResult != "SUCCEEDED" {
		t.Errorf("status %+v", st)
	}
	log := d.Log()
	for _, want := range []string{"CreateCertificateFromCsr accepted", "RegisterThing accepted", "onboarded by claim"} {
		if !strings.Contains(log, want) {
			t.Errorf("no %q in the log", want)
		}
	}
	if s, det := c.jobStatus(d.name); s != types.JobExecutionStatusSucceeded {
		t.Errorf("job execution %s %v, want SUCCEEDED", s, det)
	}
	if got := c.certStatus(cl.id); got != types.CertificateStatusActive {
		t.Errorf("claim certificate %s, want ACTIVE", got)
	}
	if got := c.certStatus(st.Active.CertificateID); got != types.CertificateStatusActive {
		t.Errorf("operational certificate %s, want ACTIVE", got)
	}
	th, err := c.api.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(d.name)})
	if err != nil || th.Attributes["operationalCert"] != st.Active.CertificateID {
		t.Errorf("thing %s: %+v %v (want operationalCert %s)", d.name, th, err, st.Active.CertificateID)
	}

	// A later rotation (the renewal function's snapshot job) goes through
	// the vendor again, still with no CA object.
	c.addToRotation(d.name)
	st = d.waitFor("operational generation 3", operational(3))
	if st.LastResult != "SUCCEEDED" {
		t.Errorf("second rotation: status %+v", st)
	}
	if s, det := c.jobStatus(d.name); s != types.JobExecutionStatusSucceeded {
		t.Errorf("second rotation: job execution %s %v, want SUCCEEDED", s, det)
	}
	d.stop()
}
