package certvendor_test

import (
	"context"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/certvendor"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
)

// BenchmarkGet measures the vendor's own CPU per certificate request (CSR
// checks, allow list and CRL from the ETag cache, issuance over the fakes;
// the fake registry signs the certificate, which AWS does in production).
// The Lambda cost estimate in docs/cloud.md is dominated by the control-plane
// round trips, not by this.
func BenchmarkGet(b *testing.B) {
	r := newRig(b, nil, nil)
	csrs := make([]string, b.N)
	for i := range csrs {
		csrs[i] = string(testpki.CSR(b, r.dev.ID, nil))
	}
	v := r.b.Vendor()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rep, err := v.Handle(context.Background(), certvendor.Event{ThingName: r.dev.ID, Operation: "get", Principal: r.dev.CertID, ClientID: r.dev.ID, JobID: job, ClientToken: "t", CSR: csrs[i]})
		if err != nil || !strings.HasSuffix(rep.Topic, "/accepted") {
			b.Fatalf("%s %s %v", rep.Topic, rep.Payload, err)
		}
	}
}
