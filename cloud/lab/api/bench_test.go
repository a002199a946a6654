package api

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
)

// BenchmarkSDK measures lab operations through aws-sdk-go-v2 over TLS
// (one keep-alive connection, SigV4 verified with --credentials). Run:
//
//	go test -run '^$' -bench SDK ./cloud/lab/api
func BenchmarkSDK(b *testing.B) {
	b.Run("DescribeThing", func(b *testing.B) {
		l := startLabB(b)
		c := l.clientB(b)
		if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")}); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := c.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("CreateCertificateFromCsr", func(b *testing.B) {
		l := startLabB(b)
		c := l.clientB(b)
		k := newKey(b)
		der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gw-1"}}, k)
		csr := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		for b.Loop() {
			if _, err := c.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: &csr, SetAsActive: true}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func startLabB(b *testing.B) *lab {
	return startLab(b, labOpts{creds: &Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"}})
}

func (l *lab) clientB(b *testing.B) *iot.Client { return l.client(b, "AK", "SK", 1) }
