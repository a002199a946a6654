package lab

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Lab credentials: any key pair is accepted unless the lab runs with
// --credentials, so these are placeholders, not secrets.
const (
	LabAccessKeyID     = "AKIALABLABLABLABLAB0"
	LabSecretAccessKey = "lab-secret-not-a-secret"
)

// ClientConfig returns an AWS SDK configuration for talking to a lab: an
// HTTP client that trusts the lab's server CA (caPEM, DIR/server-ca.pem),
// the region and static placeholder credentials. Set BaseEndpoint per
// service (Endpoints.API for service/iot, Endpoints.S3 with UsePathStyle for
// service/s3).
func ClientConfig(caPEM []byte, region string) aws.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	tr.MaxIdleConnsPerHost = 64
	if region == "" {
		region = "us-east-1"
	}
	return aws.Config{
		Region:      region,
		Credentials: credentials.NewStaticCredentialsProvider(LabAccessKeyID, LabSecretAccessKey, ""),
		HTTPClient:  &http.Client{Transport: tr, Timeout: 60 * time.Second},
	}
}
