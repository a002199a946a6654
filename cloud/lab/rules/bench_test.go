package rules

import "testing"

// BenchmarkApplyVendor: the requests rule on a rotation request with a CSR.
func BenchmarkApplyVendor(b *testing.B) {
	s := mustParse(b, sqlVendor)
	csr := make([]byte, 600)
	for i := range csr {
		csr[i] = 'A'
	}
	msg := Message{Topic: "certificates/gw-0001/get", Payload: []byte(`{"jobId":"bootcert-rotation","clientToken":"t","csr":"` + string(csr) + `"}`),
		ClientID: "gw-0001", Principal: certID, Timestamp: ts}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := s.Apply(msg); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

func BenchmarkParseVendor(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(sqlVendor); err != nil {
			b.Fatal(err)
		}
	}
}
