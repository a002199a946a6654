package setup

import (
	"context"
	"strings"
	"testing"
)

// TestRunRefusesBeforeTouchingAnything: Run's input errors come before any
// call (the clients are nil: a call would panic).
func TestRunRefusesBeforeTouchingAnything(t *testing.T) {
	csr := []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
	for _, tc := range []struct {
		name string
		o    Options
		want []string
	}{
		{"fail/no-ca-no-claim", Options{Bucket: "b"}, []string{"--ca-cert", "--claim-csr", "--claim-cert"}},
		{"fail/crl-without-ca", Options{Bucket: "b", CRL: []byte("x"), Claim: &ClaimOptions{CSRPEM: csr}}, []string{"--crl needs --ca-cert"}},
		{"fail/claim-both", Options{Bucket: "b", Claim: &ClaimOptions{CSRPEM: csr, CertPEM: []byte("x")}}, []string{"either a CSR"}},
		{"fail/claim-bad-csr", Options{Bucket: "b", Claim: &ClaimOptions{CSRPEM: csr}}, []string{"--claim-csr"}},
		{"fail/claim-bad-cert", Options{Bucket: "b", Claim: &ClaimOptions{CertPEM: []byte("not pem")}}, []string{"--claim-cert"}},
		{"fail/no-bucket", Options{Claim: &ClaimOptions{CertPEM: []byte("x")}}, []string{"bucket"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(context.Background(), nil, nil, tc.o)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}
