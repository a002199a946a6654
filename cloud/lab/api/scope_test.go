package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/smithy-go"
)

// TestSigV4Scope: a request scoped to another region or service is refused
// with AWS's InvalidSignatureException (HTTP 403), with and without
// --credentials; the data plane takes iotdata and iotdevicegateway, the
// control plane iot.
func TestSigV4Scope(t *testing.T) {
	for _, creds := range []*Credentials{nil, {AccessKeyID: "AK", SecretAccessKey: "SK"}} {
		l := startLab(t, labOpts{creds: creds})
		// The SDK itself, configured for another region.
		c := iot.NewFromConfig(aws.Config{Region: "eu-west-1", Credentials: credentials.NewStaticCredentialsProvider("AK", "SK", ""),
			HTTPClient: l.httpClient(t)}, func(o *iot.Options) { o.BaseEndpoint = aws.String(l.http.URL); o.RetryMaxAttempts = 1 })
		_, err := c.ListThings(ctx, &iot.ListThingsInput{})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != "InvalidSignatureException" || !strings.Contains(ae.ErrorMessage(), "region") {
			t.Fatalf("credentials %v: ListThings scoped to eu-west-1: %v, want InvalidSignatureException naming the region", creds != nil, err)
		}
		send := func(method, path, service, region string, body []byte) (int, string, string) {
			req, _ := http.NewRequest(method, l.http.URL+path, strings.NewReader(string(body)))
			sum := sha256.Sum256(body)
			if err := v4.NewSigner().SignHTTP(ctx, aws.Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"}, req, hex.EncodeToString(sum[:]), service, region, time.Now()); err != nil {
				t.Fatal(err)
			}
			resp, err := l.httpClient(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			var m struct{ Message string }
			json.Unmarshal(b, &m)
			return resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"), m.Message
		}
		for _, tc := range []struct {
			name, method, path, service string
			ok                          bool
		}{
			{"ok/control plane iot", "GET", "/things", "iot", true},
			{"ok/data plane iotdata", "POST", "/topics/a%2Fb?qos=1", "iotdata", true},
			{"ok/data plane iotdevicegateway", "POST", "/topics/a%2Fb?qos=1", "iotdevicegateway", true},
			{"fail/control plane signed s3", "GET", "/things", "s3", false},
			{"fail/control plane signed iotdata", "GET", "/things", "iotdata", false},
			{"fail/data plane signed iot", "POST", "/topics/a%2Fb?qos=1", "iot", false},
		} {
			status, typ, msg := send(tc.method, tc.path, tc.service, "us-east-1", []byte("x"))
			if tc.ok != (status == 200) {
				t.Errorf("credentials %v: %s: HTTP %d %s %q", creds != nil, tc.name, status, typ, msg)
			}
			if !tc.ok && (status != 403 || typ != "InvalidSignatureException" || !strings.Contains(msg, "service")) {
				t.Errorf("credentials %v: %s: HTTP %d %s %q, want 403 InvalidSignatureException naming the service", creds != nil, tc.name, status, typ, msg)
			}
		}
	}
}

// TestCertificateIDForm: a malformed certificate ID is answered 400
// InvalidRequestException, a well-formed unknown one 404
// ResourceNotFoundException; RegisterCertificate takes PENDING_ACTIVATION.
func TestCertificateIDForm(t *testing.T) {
	l := startLab(t, labOpts{})
	c := l.client(t, "AK", "SK", 1)
	_, err := c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String("not-a-certificate-id")})
	mustAs[*types.InvalidRequestException](t, err)
	_, err = c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String("abc"), NewStatus: types.CertificateStatusActive})
	mustAs[*types.InvalidRequestException](t, err)
	_, err = c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(strings.Repeat("ab", 32))})
	mustAs[*types.ResourceNotFoundException](t, err)

	caKey := newKey(t)
	caTmpl := leafTmpl("ca")
	caTmpl.IsCA, caTmpl.BasicConstraintsValid = true, true
	caPEM, ca := certPEM(t, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	k := newKey(t)
	leaf, _ := certPEM(t, leafTmpl("dev"), ca, &k.PublicKey, caKey)
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: &caPEM, CertificateMode: types.CertificateModeSniOnly})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: &leaf, CaCertificatePem: &caPEM, Status: types.CertificateStatusPendingActivation})
	if err != nil {
		t.Fatalf("RegisterCertificate PENDING_ACTIVATION: %v", err)
	}
	d, err := c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: out.CertificateId})
	if err != nil || d.CertificateDescription.Status != types.CertificateStatusPendingActivation {
		t.Fatalf("after RegisterCertificate PENDING_ACTIVATION: %+v %v", d, err)
	}
}
