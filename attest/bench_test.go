package attest_test

import (
	"testing"

	"github.com/bootcert/bootcert/attest"
)

// BenchmarkVerify: the vendor's verification of one rotation's evidence
// (attest.Verify: EK certificate hash, chain to the local CA and key match,
// AK checks, ECDSA signature, parse, qualifying data, name, key attributes,
// CSR signature and key). Evidence from swtpm with an EK certificate. Run:
// make bench, or go test -run '^$' -bench Verify ./attest/
func BenchmarkVerify(b *testing.B) {
	d := startDevice(b, tpmA)
	key, req := d.newKey(b, "k.tpmkey")
	qd := binding("job-1")
	ev := d.certify(b, key, qd)
	trust := trustOf(b, tpmA)
	exp := attest.Expected{QualifyingData: qd, CSR: req}
	if _, err := attest.Verify(d.rec, ev, exp, trust); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := attest.Verify(d.rec, ev, exp, trust); err != nil {
			b.Fatal(err)
		}
	}
}
