package attest

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// Seeds: structures as a TPM makes them.
func seedPublic() []byte {
	return tpm2.Marshal(tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}, Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID: tpm2.TPMECCNistP256, KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{1}, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: bytes.Repeat([]byte{2}, 32)}}),
	})
}

func seedAttest() []byte {
	return tpm2.Marshal(tpm2.TPMSAttest{
		Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestCertify,
		QualifiedSigner: tpm2.TPM2BName{Buffer: []byte{0, 0x0b, 1, 2}},
		ExtraData:       tpm2.TPM2BData{Buffer: bytes.Repeat([]byte{3}, 32)},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
			Name: tpm2.TPM2BName{Buffer: []byte{0, 0x0b, 4}}, QualifiedName: tpm2.TPM2BName{Buffer: []byte{0, 0x0b, 5}},
		}),
	})
}

func seedSignature() []byte {
	return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: []byte{1}}, SignatureS: tpm2.TPM2BECCParameter{Buffer: []byte{2}},
	})})
}

// Parsers of outside input never panic, and what they accept re-encodes to
// the same bytes.
func FuzzParsePublic(f *testing.F) {
	f.Add(seedPublic())
	f.Add([]byte{0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePublic(data)
		if err == nil && !bytes.Equal(tpm2.Marshal(*p), data) {
			t.Fatal("accepted a non-canonical TPMT_PUBLIC")
		}
		if err == nil {
			Name(data)
			publicKey(p)
			checkKey(p)
			checkAK(data, nil)
		}
	})
}

func FuzzParseAttest(f *testing.F) {
	f.Add(seedAttest())
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18})
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := ParseAttest(data)
		if err == nil {
			if !bytes.Equal(tpm2.Marshal(*a), data) {
				t.Fatal("accepted a non-canonical TPMS_ATTEST")
			}
			a.Attested.Certify()
		}
	})
}

func FuzzParseSignature(f *testing.F) {
	f.Add(seedSignature())
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSignature(data)
		if err == nil && !bytes.Equal(tpm2.Marshal(*s), data) {
			t.Fatal("accepted a non-canonical TPMT_SIGNATURE")
		}
	})
}

// The record and evidence encodings, and Verify over whatever they carry:
// a rejection, never a panic or an acceptance of unsigned data.
func FuzzRecordEvidence(f *testing.F) {
	f.Add([]byte(`{"ek_pub_sha256":"`+string(bytes.Repeat([]byte("a"), 64))+`","ak_public":"AAE=","ak_name":"AAE="}`), []byte(`{"attest":"/1RDRw==","signature":"AAE=","public":"AAE="}`))
	f.Fuzz(func(t *testing.T, rec, ev []byte) {
		r, err := ParseRecord(rec)
		if err != nil {
			if ReasonOf(err) == "" {
				t.Fatalf("untyped record error: %v", err)
			}
			return
		}
		e, err := ParseEvidence(ev)
		if err != nil {
			return
		}
		k := seedPublic()
		p, _ := ParsePublic(k)
		pub, _ := tpm2.Pub(*p)
		if _, err := Verify(r, e, Expected{QualifyingData: []byte{1}, PublicKey: pub}, Trust{AllowUnverifiedEK: true}); err == nil {
			t.Fatal("fuzzed evidence verified")
		}
	})
}
