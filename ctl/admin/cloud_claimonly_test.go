package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
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

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/factory"
)

// TestCloudSetupClaimOnly: a maker without a factory CA sets up the cloud
// with a claim option only: no CA registered or uploaded, the allow list,
// the job and the claim certificate are; run again with the claim
// certificate it changes nothing. Without --ca-cert and without a claim
// option, and --crl without --ca-cert, are refused before anything changes.
func TestCloudSetupClaimOnly(t *testing.T) {
	dir := t.TempDir()
	labDir := filepath.Join(dir, "lab")
	l, err := lab.Start(context.Background(), lab.Config{DataDir: labDir, MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		TemplatePath: filepath.Join("..", "..", "cloud", "template.yaml"), NoBuild: true})
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	ctx := context.Background()
	cfg := lab.ClientConfig(l.ServerCAPEM(), "us-east-1")
	api := iot.NewFromConfig(cfg, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.Endpoints().API) })
	s3c := s3.NewFromConfig(cfg, func(o *s3.Options) { o.BaseEndpoint = aws.String(l.Endpoints().S3); o.UsePathStyle = true })
	const bucket = "bootcert-123456789012-us-east-1"

	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "claim batch 1"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	csr := filepath.Join(dir, "claim.csr")
	os.WriteFile(csr, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600)
	allow := filepath.Join(dir, "serials.csv")
	os.WriteFile(allow, []byte("device_id,bootstrap_sha256,final_csr\ngw-1,,\n"), 0o600)
	caDir := filepath.Join(dir, "ca")
	if _, err := (&factory.Provisioner{}).InitCA(ctx, factory.CASpec{Dir: caDir, CommonName: "Test Factory CA", Days: 30}); err != nil {
		t.Fatal(err)
	}
	crl := filepath.Join(dir, "crl.pem")
	os.WriteFile(crl, []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), 0o600)
	claimOut := filepath.Join(dir, "claim-cert.pem")
	base := []string{"cloud", "setup", "--lab", labDir, "--bucket", bucket}

	// nothing changed: no CA, no certificate, no job, no object.
	unchanged := func(t *testing.T) {
		t.Helper()
		if cas, err := api.ListCACertificates(ctx, &iot.ListCACertificatesInput{}); err != nil || len(cas.Certificates) != 0 {
			t.Errorf("CA certificates %+v %v, want none", cas, err)
		}
		if cs, err := api.ListCertificates(ctx, &iot.ListCertificatesInput{}); err != nil || len(cs.Certificates) != 0 {
			t.Errorf("certificates %+v %v, want none", cs, err)
		}
		if _, err := api.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("bootcert-rotation")}); err == nil {
			t.Error("job bootcert-rotation exists")
		}
		if _, err := os.Stat(claimOut); !os.IsNotExist(err) {
			t.Errorf("--claim-out written: %v", err)
		}
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"fail/no-ca-no-claim", []string{"--allow-list", allow}, []string{"--ca-cert", "--claim-csr", "--claim-cert", "or both"}},
		{"fail/claim-out-alone", []string{"--claim-out", claimOut}, []string{"--claim-out needs --claim-csr or --claim-cert"}},
		{"fail/crl-without-ca", []string{"--claim-csr", csr, "--claim-out", claimOut, "--crl", crl}, []string{"--crl needs --ca-cert"}},
		{"fail/ca-key-without-ca", []string{"--claim-csr", csr, "--ca-key", "file:" + filepath.Join(caDir, "ca.key")}, []string{"--ca-key needs --ca-cert"}},
		{"fail/bad-claim-csr", []string{"--claim-csr", allow, "--allow-list", allow}, []string{"--claim-csr", "CERTIFICATE REQUEST"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runAdmin(t, append(append([]string{}, base...), tc.args...)...)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
			unchanged(t)
		})
	}

	type result struct {
		CACertificateID string   `json:"caCertificateId"`
		CARegistered    bool     `json:"caRegistered"`
		JobCreated      bool     `json:"jobCreated"`
		EventsEnabled   bool     `json:"jobExecutionEventsEnabled"`
		Uploaded        []string `json:"uploaded"`
		Claim           *struct {
			CertificateID  string `json:"certificateId"`
			CertificatePEM string `json:"certificatePem"`
			Created        bool   `json:"created"`
		} `json:"claim"`
	}
	var first result
	t.Run("ok/claim-only", func(t *testing.T) {
		out := mustAdmin(t, append(append([]string{}, base...), "--claim-csr", csr, "--claim-out", claimOut, "--allow-list", allow, "--json")...)
		if err := json.Unmarshal([]byte(out), &first); err != nil {
			t.Fatal(err)
		}
		if first.CACertificateID != "" || first.CARegistered || !first.JobCreated || !first.EventsEnabled {
			t.Errorf("%+v", first)
		}
		if len(first.Uploaded) != 1 || first.Uploaded[0] != "s3://"+bucket+"/trust/allow-list.csv" {
			t.Errorf("uploaded %v, want the allow list only", first.Uploaded)
		}
		if first.Claim == nil || !first.Claim.Created {
			t.Fatalf("claim %+v", first.Claim)
		}
		if b, err := os.ReadFile(claimOut); err != nil || string(b) != first.Claim.CertificatePEM {
			t.Errorf("--claim-out: %v", err)
		}
		d, err := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(first.Claim.CertificateID)})
		if err != nil || d.CertificateDescription.Status != types.CertificateStatusActive {
			t.Errorf("claim certificate: %+v %v", d, err)
		}
		if cas, err := api.ListCACertificates(ctx, &iot.ListCACertificatesInput{}); err != nil || len(cas.Certificates) != 0 {
			t.Errorf("CA certificates %+v %v, want none", cas, err)
		}
		_, err = s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("trust/factory-ca.pem")})
		var apiErr smithy.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "NoSuchKey" {
			t.Errorf("trust/factory-ca.pem: %v, want NoSuchKey (no CA object in a claim-only fleet)", err)
		}
		for _, key := range []string{"trust/allow-list.csv", "trust/decommissioned.json"} {
			if _, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
				t.Errorf("%s: %v", key, err)
			}
		}
		if _, err := api.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("bootcert-rotation")}); err != nil {
			t.Errorf("job: %v", err)
		}
	})
	t.Run("ok/again-with-the-claim-certificate-is-idempotent", func(t *testing.T) {
		out := mustAdmin(t, append(append([]string{}, base...), "--claim-cert", claimOut, "--allow-list", allow)...)
		for _, w := range []string{"(none: no --ca-cert", first.Claim.CertificateID + " (policy bootcert-claim, already registered)", "bootcert-rotation (exists)"} {
			if !strings.Contains(out, w) {
				t.Errorf("output does not say %q:\n%s", w, out)
			}
		}
		if cs, err := api.ListCertificates(ctx, &iot.ListCertificatesInput{}); err != nil || len(cs.Certificates) != 1 {
			t.Errorf("certificates %+v %v, want the one claim certificate", cs, err)
		}
	})
	t.Run("ok/factory-ca-added-later", func(t *testing.T) {
		// A claim-only maker that gets a factory CA later adds it.
		var r result
		out := mustAdmin(t, append(append([]string{}, base...), "--ca-cert", filepath.Join(caDir, "ca.pem"), "--ca-key", "file:"+filepath.Join(caDir, "ca.key"), "--json")...)
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		if !r.CARegistered || r.JobCreated || len(r.Uploaded) != 1 || r.Uploaded[0] != "s3://"+bucket+"/trust/factory-ca.pem" {
			t.Errorf("%+v", r)
		}
	})
}
