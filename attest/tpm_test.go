package attest_test

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
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/tcp"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/keystore/tpm"
)

// Two TPMs from the same factory line (same swtpm local CA), made once.
var tpmA, tpmB *testenv.Manufactured

func TestMain(m *testing.M) {
	tpm.TCPIdleRelease = 0
	dir, err := os.MkdirTemp("", "attest-tpms-")
	if err != nil {
		panic(err)
	}
	tpmA, err = testenv.Manufacture(filepath.Join(dir, "a"), filepath.Join(dir, "ca"))
	if err == nil {
		tpmB, err = testenv.Manufacture(filepath.Join(dir, "b"), filepath.Join(dir, "ca"))
	}
	if err != nil {
		tpmA, tpmB = nil, nil
		fmt.Fprintln(os.Stderr, "manufacturing swtpm with EK certificates:", err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// device is one running manufactured TPM with an enrolled AK.
type device struct {
	sw     *testenv.SWTPM
	dir    string
	ek     keystore.Endorsement
	akURI  string
	akPath string
	rec    *attest.Record
}

func (d *device) uri(name string) string {
	return fmt.Sprintf("tpm:device=%s;blob=%s", d.sw.Device(), filepath.Join(d.dir, name))
}

func trustOf(t testing.TB, m *testenv.Manufactured) attest.Trust {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	if !roots.AppendCertsFromPEM(m.RootPEM) || !inter.AppendCertsFromPEM(m.IssuerPEM) {
		t.Fatal("local CA PEM")
	}
	return attest.Trust{Roots: roots, Intermediates: inter}
}

// startDevice starts a manufactured TPM and enrols an AK on it, as the
// factory does.
func startDevice(t testing.TB, m *testenv.Manufactured) *device {
	t.Helper()
	if m == nil {
		testenv.Missing(t, "swtpm_setup could not manufacture a TPM with EK certificates (run `make deps`)")
	}
	d := &device{sw: testenv.StartManufactured(t, m), dir: t.TempDir()}
	t.Cleanup(func() { tpm.CloseDevice(d.sw.Device()) })
	ctx := context.Background()
	d.akPath = filepath.Join(d.dir, "ak.tpmkey")
	d.akURI = d.uri("ak.tpmkey")
	var err error
	if d.ek, err = keystore.ReadEndorsement(ctx, d.akURI); err != nil {
		t.Fatal(err)
	}
	ak, err := keystore.CreateAK(ctx, d.akURI)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := attest.NewChallenge(d.ek.Public, ak.Name)
	if err != nil {
		t.Fatal(err)
	}
	ans, err := keystore.ActivateCredential(ctx, d.akURI, d.ek, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	rec, res, err := attest.Enrol(attest.Enrolment{EKCert: d.ek.Certificate, EKPublic: d.ek.Public, AKPublic: ak.Public}, ch, ans, trustOf(t, m))
	if err != nil {
		t.Fatal(err)
	}
	if res.EK != attest.EKCertified {
		t.Fatalf("EK %s, want certified", res.EK)
	}
	// A challenge is single use.
	if _, _, err := attest.Enrol(attest.Enrolment{EKCert: d.ek.Certificate, EKPublic: d.ek.Public, AKPublic: ak.Public}, ch, ans, trustOf(t, m)); attest.ReasonOf(err) != attest.ReasonActivationFailed {
		t.Fatalf("second use of a challenge: %v", err)
	}
	d.rec = rec
	return d
}

// newKey makes a key and its CSR.
func (d *device) newKey(t testing.TB, name string) (string, *x509.CertificateRequest) {
	t.Helper()
	u := d.uri(name)
	s, err := keystore.Generate(context.Background(), u, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	defer keystore.CloseSigner(s)
	der, err := csr.Create(s, "gw-1")
	if err != nil {
		t.Fatal(err)
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return u, req
}

func (d *device) certify(t testing.TB, keyURI string, qd []byte) *attest.Evidence {
	t.Helper()
	c, err := keystore.Certify(context.Background(), keyURI, d.akURI, qd)
	if err != nil {
		t.Fatal(err)
	}
	return &attest.Evidence{Attest: c.Attest, Signature: c.Signature, Public: c.Public, EKCert: d.ek.Certificate}
}

// raw opens the TPM directly (the keystore lets go of it first), for
// forgeries the keystore would never make.
func (d *device) raw(t *testing.T, fn func(tp transport.TPM)) {
	t.Helper()
	if err := tpm.CloseDevice(d.sw.Device()); err != nil {
		t.Fatal(err)
	}
	tp, err := tcp.Open(tcp.Config{CommandAddress: d.sw.Addr(), PlatformAddress: fmt.Sprintf("127.0.0.1:%d", d.sw.Port+1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	fn(tp)
}

const srk = tpm2.TPMHandle(0x81000001)

func srkAuth(t *testing.T, tp transport.TPM) tpm2.AuthHandle {
	rsp, err := tpm2.ReadPublic{ObjectHandle: srk}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.AuthHandle{Handle: srk, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)}
}

type loaded struct {
	h      tpm2.TPMHandle
	name   tpm2.TPM2BName
	public []byte
}

func (l loaded) auth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: l.h, Name: l.name, Auth: tpm2.PasswordAuth(nil)}
}

func createLoad(t *testing.T, tp transport.TPM, tmpl tpm2.TPMTPublic) loaded {
	t.Helper()
	parent := srkAuth(t, tp)
	c, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	l, err := tpm2.Load{ParentHandle: parent, InPrivate: c.OutPrivate, InPublic: c.OutPublic}.Execute(tp)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {})
	return loaded{h: l.ObjectHandle, name: l.Name, public: c.OutPublic.Bytes()}
}

func loadAK(t *testing.T, tp transport.TPM, path string) loaded {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	kf, err := keyfile.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tpm2.Load{ParentHandle: srkAuth(t, tp), InPrivate: kf.Privkey, InPublic: kf.Pubkey}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return loaded{h: l.ObjectHandle, name: l.Name, public: kf.Pubkey.Bytes()}
}

func rawCertify(t *testing.T, tp transport.TPM, obj, ak loaded, qd []byte) *attest.Evidence {
	t.Helper()
	var rsp *tpm2.CertifyResponse
	var err error
	for i := 0; i < 5; i++ { // swtpm answers the first signature after a start with TPM_RC_RETRY
		rsp, err = tpm2.Certify{ObjectHandle: obj.auth(), SignHandle: ak.auth(), QualifyingData: tpm2.TPM2BData{Buffer: qd}, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}}.Execute(tp)
		if !errors.Is(err, tpm2.TPMRCRetry) {
			break
		}
	}
	if err != nil {
		t.Fatalf("certify: %v", err)
	}
	return &attest.Evidence{Attest: rsp.CertifyInfo.Bytes(), Signature: tpm2.Marshal(rsp.Signature), Public: obj.public}
}

func flush(tp transport.TPM, ls ...loaded) {
	for _, l := range ls {
		tpm2.FlushContext{FlushHandle: l.h}.Execute(tp)
	}
}

func eccTemplate(attrs tpm2.TPMAObject, scheme tpm2.TPMTECCScheme) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    scheme, CurveID: tpm2.TPMECCNistP256,
			KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

var ecdsaScheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})}

func binding(job string) []byte {
	return attest.Binding{Purpose: "rotation", ThingName: "gw-1", JobID: job, Nonce: []byte("0123456789abcdef")}.QualifyingData()
}

func wantReason(t *testing.T, err error, want attest.Reason) {
	t.Helper()
	if got := attest.ReasonOf(err); got != want {
		t.Fatalf("reason %q (err %v), want %q", got, err, want)
	}
}

func TestVerifySWTPM(t *testing.T) {
	a := startDevice(t, tpmA)
	trust := trustOf(t, tpmA)
	qd := binding("job-1")
	keyURI, req := a.newKey(t, "op-1.tpmkey")
	ev := a.certify(t, keyURI, qd)

	t.Run("ok/rotation", func(t *testing.T) {
		// Through JSON, as the record is stored and the evidence sent.
		rb, _ := json.Marshal(a.rec)
		eb, _ := json.Marshal(ev)
		rec, err := attest.ParseRecord(rb)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := attest.ParseEvidence(eb)
		if err != nil {
			t.Fatal(err)
		}
		res, err := attest.Verify(rec, e2, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		if err != nil {
			t.Fatal(err)
		}
		if res.EK != attest.EKCertified || res.Algorithm != string(keystore.ECDSAP256) || !res.PublicKey.(*ecdsa.PublicKey).Equal(req.PublicKey) {
			t.Fatalf("result %+v", res)
		}
		// The manifest form carries the same record.
		if m := attest.FromManifest(manifestEntry(rec)); m == nil || m.AKName == nil {
			t.Fatal("manifest round trip")
		}
	})
	t.Run("fail/replayed-or-other-job", func(t *testing.T) {
		_, err := attest.Verify(a.rec, ev, attest.Expected{QualifyingData: binding("job-2"), CSR: req}, trust)
		wantReason(t, err, attest.ReasonQualifyingData)
	})
	t.Run("fail/csr-for-another-key", func(t *testing.T) {
		_, req2 := a.newKey(t, "other.tpmkey")
		_, err := attest.Verify(a.rec, ev, attest.Expected{QualifyingData: qd, CSR: req2}, trust)
		wantReason(t, err, attest.ReasonCSRKeyMismatch)
	})
	t.Run("fail/wrong-name", func(t *testing.T) {
		// Certify one key, present another key's public area and CSR.
		otherURI, req2 := a.newKey(t, "other2.tpmkey")
		other := a.certify(t, otherURI, qd)
		forged := *ev
		forged.Public = other.Public
		_, err := attest.Verify(a.rec, &forged, attest.Expected{QualifyingData: qd, CSR: req2}, trust)
		wantReason(t, err, attest.ReasonNameMismatch)
	})
	t.Run("fail/reused-key", func(t *testing.T) {
		seen := func(name []byte) (bool, error) { return true, nil }
		_, err := attest.Verify(a.rec, ev, attest.Expected{QualifyingData: qd, CSR: req, KeySeen: seen}, trust)
		wantReason(t, err, attest.ReasonKeyReused)
	})
	t.Run("fail/clock-rollback", func(t *testing.T) {
		res, err := attest.Verify(a.rec, ev, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		if err != nil {
			t.Fatal(err)
		}
		last := res.Clock
		last.ResetCount++
		_, err = attest.Verify(a.rec, ev, attest.Expected{QualifyingData: qd, CSR: req, LastClock: &last}, trust)
		wantReason(t, err, attest.ReasonClockRollback)
	})
	t.Run("fail/untrusted-ek-root", func(t *testing.T) {
		other := attest.Trust{Roots: x509.NewCertPool()}
		other.Roots.AddCert(selfSigned(t))
		_, err := attest.Verify(a.rec, ev, attest.Expected{QualifyingData: qd, CSR: req}, other)
		wantReason(t, err, attest.ReasonEKUntrusted)
	})
	t.Run("fail/ek-cert-missing", func(t *testing.T) {
		forged := *ev
		forged.EKCert = nil
		_, err := attest.Verify(a.rec, &forged, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		wantReason(t, err, attest.ReasonEKCertMissing)
	})
	t.Run("fail/quote-instead-of-certify", func(t *testing.T) {
		var forged *attest.Evidence
		a.raw(t, func(tp transport.TPM) {
			ak := loadAK(t, tp, a.akPath)
			defer flush(tp, ak)
			rsp, err := tpm2.Quote{SignHandle: ak.auth(), QualifyingData: tpm2.TPM2BData{Buffer: qd}, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
				PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{1, 0, 0}}}}}.Execute(tp)
			if err != nil {
				t.Fatal(err)
			}
			forged = &attest.Evidence{Attest: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), Public: ev.Public, EKCert: ev.EKCert}
		})
		_, err := attest.Verify(a.rec, forged, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		wantReason(t, err, attest.ReasonAttestNotCertify)
	})
	t.Run("fail/ak-signed-non-tpm-data", func(t *testing.T) {
		// A restricted key signs outside data only with a hash ticket, and the
		// TPM gives one only when the data does not start with
		// TPM_GENERATED_VALUE: that is what the magic check relies on.
		fake := append([]byte{0xff, 0x54, 0x43, 0x48}, ev.Attest[4:]...)
		var forged *attest.Evidence
		a.raw(t, func(tp transport.TPM) {
			ak := loadAK(t, tp, a.akPath)
			defer flush(tp, ak)
			h, err := tpm2.Hash{Data: tpm2.TPM2BMaxBuffer{Buffer: fake}, HashAlg: tpm2.TPMAlgSHA256, Hierarchy: tpm2.TPMRHOwner}.Execute(tp)
			if err != nil {
				t.Fatal(err)
			}
			s, err := tpm2.Sign{KeyHandle: ak.auth(), Digest: h.OutHash, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}, Validation: h.Validation}.Execute(tp)
			if err != nil {
				t.Fatal(err)
			}
			forged = &attest.Evidence{Attest: fake, Signature: tpm2.Marshal(s.Signature), Public: ev.Public, EKCert: ev.EKCert}
		})
		_, err := attest.Verify(a.rec, forged, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		wantReason(t, err, attest.ReasonAttestBadMagic)
	})
	t.Run("fail/imported-key", func(t *testing.T) {
		// A software key put into the TPM (TPM2_LoadExternal with its
		// private part), certified by the genuine AK.
		sk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		sreq := csrOf(t, sk)
		var forged *attest.Evidence
		a.raw(t, func(tp transport.TPM) {
			ak := loadAK(t, tp, a.akPath)
			tmpl := eccTemplate(tpm2.TPMAObject{UserWithAuth: true, SignEncrypt: true}, tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull})
			tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: sk.X.FillBytes(make([]byte, 32))}, Y: tpm2.TPM2BECCParameter{Buffer: sk.Y.FillBytes(make([]byte, 32))}})
			priv := tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC, Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: scalarBytes(t, sk)})}
			l, err := tpm2.LoadExternal{InPrivate: tpm2.New2B(priv), InPublic: tpm2.New2B(tmpl), Hierarchy: tpm2.TPMRHNull}.Execute(tp)
			if err != nil {
				t.Fatalf("load external: %v", err)
			}
			obj := loaded{h: l.ObjectHandle, name: l.Name, public: tpm2.Marshal(tmpl)}
			defer flush(tp, ak, obj)
			forged = rawCertify(t, tp, obj, ak, qd)
			forged.EKCert = ev.EKCert
		})
		_, err := attest.Verify(a.rec, forged, attest.Expected{QualifyingData: qd, CSR: sreq}, trust)
		wantReason(t, err, attest.ReasonKeyNotTPMGenerated)
	})
	t.Run("fail/exportable-key", func(t *testing.T) {
		var forged *attest.Evidence
		a.raw(t, func(tp transport.TPM) {
			ak := loadAK(t, tp, a.akPath)
			obj := createLoad(t, tp, eccTemplate(tpm2.TPMAObject{SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true}, tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull}))
			defer flush(tp, ak, obj)
			forged = rawCertify(t, tp, obj, ak, qd)
			forged.EKCert = ev.EKCert
		})
		pub, _ := attest.ParsePublic(forged.Public)
		k, _ := tpm2.Pub(*pub)
		_, err := attest.Verify(a.rec, forged, attest.Expected{QualifyingData: qd, PublicKey: k}, trust)
		wantReason(t, err, attest.ReasonKeyExportable)
	})

	// Forged AKs: the factory's enrolment refuses them, and a record that
	// holds one anyway is refused by Verify.
	forgedAK := func(t *testing.T, attrs tpm2.TPMAObject, scheme tpm2.TPMTECCScheme, want attest.Reason) {
		var forged *attest.Evidence
		var akPub []byte
		a.raw(t, func(tp transport.TPM) {
			ak := createLoad(t, tp, eccTemplate(attrs, scheme))
			k, _ := keyfile.Decode(mustRead(t, filepath.Join(a.dir, "op-1.tpmkey")))
			l, err := tpm2.Load{ParentHandle: srkAuth(t, tp), InPrivate: k.Privkey, InPublic: k.Pubkey}.Execute(tp)
			if err != nil {
				t.Fatal(err)
			}
			obj := loaded{h: l.ObjectHandle, name: l.Name, public: k.Pubkey.Bytes()}
			defer flush(tp, ak, obj)
			forged = rawCertify(t, tp, obj, ak, qd)
			forged.EKCert = ev.EKCert
			akPub = ak.public
		})
		name, _ := attest.Name(akPub)
		rec := *a.rec
		rec.AKPublic, rec.AKName = akPub, name
		_, err := attest.Verify(&rec, forged, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		wantReason(t, err, want)
		ch, _ := attest.NewChallenge(a.ek.Public, name)
		_, _, err = attest.Enrol(attest.Enrolment{EKCert: a.ek.Certificate, EKPublic: a.ek.Public, AKPublic: akPub}, ch, nil, trust)
		wantReason(t, err, want)
	}
	t.Run("fail/unrestricted-ak", func(t *testing.T) {
		forgedAK(t, tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true}, ecdsaScheme, attest.ReasonAKNotRestrictedSign)
	})
	t.Run("fail/exportable-ak", func(t *testing.T) {
		forgedAK(t, tpm2.TPMAObject{SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, SignEncrypt: true}, ecdsaScheme, attest.ReasonAKNotFixed)
	})
}

func TestCrossTPM(t *testing.T) {
	a := startDevice(t, tpmA)
	b := startDevice(t, tpmB)
	trust := trustOf(t, tpmA)
	qd := binding("job-1")

	t.Run("fail/another-tpms-ak", func(t *testing.T) {
		// Device B's genuine AK certifies B's genuine key; the cloud checks
		// it against A's record.
		keyURI, req := b.newKey(t, "op-1.tpmkey")
		ev := b.certify(t, keyURI, qd)
		ev.EKCert = a.ek.Certificate
		_, err := attest.Verify(a.rec, ev, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		wantReason(t, err, attest.ReasonBadSignature)
	})
	t.Run("fail/activation-with-another-tpms-ak", func(t *testing.T) {
		// A's EK certificate with B's AK: the challenge is encrypted to A's
		// EK, so B's TPM cannot answer it.
		akB, err := attest.Name(mustAK(t, b))
		if err != nil {
			t.Fatal(err)
		}
		ch, err := attest.NewChallenge(a.ek.Public, akB)
		if err != nil {
			t.Fatal(err)
		}
		ans, err := keystore.ActivateCredential(context.Background(), b.akURI, b.ek, ch.CredentialBlob, ch.EncryptedSecret)
		if err == nil {
			t.Fatal("TPM B answered a challenge for TPM A's EK")
		}
		_, _, err = attest.Enrol(attest.Enrolment{EKCert: a.ek.Certificate, EKPublic: a.ek.Public, AKPublic: mustAK(t, b)}, ch, ans, trust)
		wantReason(t, err, attest.ReasonActivationFailed)
	})
	t.Run("fail/ek-not-its-certificate", func(t *testing.T) {
		ch, _ := attest.NewChallenge(a.ek.Public, a.rec.AKName)
		_, _, err := attest.Enrol(attest.Enrolment{EKCert: b.ek.Certificate, EKPublic: a.ek.Public, AKPublic: a.rec.AKPublic}, ch, nil, trust)
		wantReason(t, err, attest.ReasonEKKeyMismatch)
		// At verification: B's certificate where A's is recorded.
		keyURI, req := a.newKey(t, "op-2.tpmkey")
		ev := a.certify(t, keyURI, qd)
		ev.EKCert = b.ek.Certificate
		_, err = attest.Verify(a.rec, ev, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		wantReason(t, err, attest.ReasonEKCertMismatch)
		// A record whose EK key hash is not its certificate's.
		rec := *a.rec
		rec.EKCertSHA256, rec.EKCert = b.rec.EKCertSHA256, b.ek.Certificate
		_, err = attest.Verify(&rec, ev, attest.Expected{QualifyingData: qd, CSR: req}, trust)
		wantReason(t, err, attest.ReasonEKKeyMismatch)
	})
}

func mustAK(t *testing.T, d *device) []byte { return d.rec.AKPublic }

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func csrOf(t *testing.T, k *ecdsa.PrivateKey) *x509.CertificateRequest {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gw-1"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := x509.ParseCertificateRequest(der)
	return r
}

func selfSigned(t *testing.T) *x509.Certificate {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "another TPM vendor"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	_ = pem.EncodeToMemory
	return c
}

// scalarBytes is an ECDSA private key's scalar, fixed length (what
// TPM2_LoadExternal takes as the sensitive part of an imported key).
func scalarBytes(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := k.Bytes()
	if err != nil {
		t.Fatalf("private key bytes: %v", err)
	}
	return b
}
