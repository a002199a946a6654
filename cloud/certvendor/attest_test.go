package certvendor_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/cloud/certvendor"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/keystore/tpm"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

var (
	tpmOnce sync.Once
	tpmMade *testenv.Manufactured
	tpmErr  error
)

// manufactured is one swtpm with an EK certificate from swtpm_setup's local
// CA, made once for the package's tests.
func manufactured(t *testing.T) *testenv.Manufactured {
	t.Helper()
	tpmOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vendor-attest-")
		if err != nil {
			tpmErr = err
			return
		}
		tpmMade, tpmErr = testenv.Manufacture(filepath.Join(dir, "tpm"), filepath.Join(dir, "ca"))
	})
	if tpmErr != nil {
		testenv.Missing(t, fmt.Sprintf("swtpm_setup could not manufacture a TPM with an EK certificate (run `make deps`): %v", tpmErr))
	}
	return tpmMade
}

// attestRig is a vendor rig whose device has a swtpm enrolled as the
// factory enrols it (bootstrap key, AK next to it, credential activation).
type attestRig struct {
	*rig
	sw    *testenv.SWTPM
	dir   string
	akURI string
	ek    keystore.Endorsement
	rec   *attest.Record
}

func newAttestRig(t *testing.T, policy string, enrolled bool) *attestRig {
	t.Helper()
	m := manufactured(t)
	tpm.TCPIdleRelease = 0
	a := &attestRig{sw: testenv.StartManufactured(t, m), dir: t.TempDir()}
	t.Cleanup(func() { tpm.CloseDevice(a.sw.Device()) })
	ctx := context.Background()
	a.akURI = a.uri("ak.tpmkey")
	var err error
	if a.ek, err = keystore.ReadEndorsement(ctx, a.akURI); err != nil {
		t.Fatal(err)
	}
	ak, err := keystore.CreateAK(ctx, a.akURI)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := attest.NewChallenge(a.ek.Public, ak.Name)
	if err != nil {
		t.Fatal(err)
	}
	ans, err := keystore.ActivateCredential(ctx, a.akURI, a.ek, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	a.rec, _, err = attest.Enrol(attest.Enrolment{EKCert: a.ek.Certificate, EKPublic: a.ek.Public, AKPublic: ak.Public}, ch, ans, attest.Trust{AllowUnverifiedEK: true})
	if err != nil {
		t.Fatal(err)
	}
	a.rig = newRig(t, map[string]string{fleet.EnvAttestationPolicy: policy}, func(d *testpki.Device) manifest.Entry {
		e := manifest.Entry{DeviceID: d.ID}
		if enrolled {
			e.Attestation = a.rec.Manifest()
		}
		return e
	})
	// The manufacturer's roots: swtpm's local CA (root and issuer).
	if err := a.b.Store.Put(ctx, fleet.DefaultEKRootsKey, append(append([]byte{}, m.RootPEM...), m.IssuerPEM...), nil); err != nil {
		t.Fatal(err)
	}
	return a
}

func (a *attestRig) uri(name string) string {
	return fmt.Sprintf("tpm:device=%s;blob=%s", a.sw.Device(), filepath.Join(a.dir, name))
}

// tpmKey makes a TPM key and its CSR (PEM).
func (a *attestRig) tpmKey(t *testing.T, name string) (string, []byte) {
	t.Helper()
	u := a.uri(name)
	s, err := keystore.Generate(context.Background(), u, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	defer keystore.CloseSigner(s)
	der, err := csr.Create(s, a.dev.ID)
	if err != nil {
		t.Fatal(err)
	}
	return u, pem.EncodeToMemory(&pem.Block{Type: csr.PEMType, Bytes: der})
}

// evidence certifies keyURI with akURI for the rig's request binding (with
// clientToken token).
func (a *attestRig) evidence(t *testing.T, keyURI, akURI, token string) *protocol.Attestation {
	t.Helper()
	qd := attest.RotationBinding(a.dev.ID, job, a.dev.CertID, token).QualifyingData()
	c, err := keystore.Certify(context.Background(), keyURI, akURI, qd)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.Attestation{Attest: c.Attest, Signature: c.Signature, Public: c.Public, EKCert: a.ek.Certificate}
}

func withAttestation(ev *protocol.Attestation) func(*certvendor.Event) {
	return func(e *certvendor.Event) { e.Attestation = ev }
}

// wantAttestRejected checks an ATTESTATION_FAILED rejection with reason and
// that nothing was issued.
func (a *attestRig) wantRejected(t *testing.T, reason string, csrPEM []byte, ev *protocol.Attestation) {
	t.Helper()
	before := a.principals(t)
	rep, _, rej := a.get(t, csrPEM, withAttestation(ev))
	if !strings.HasSuffix(rep.Topic, "/get/rejected") || rej.Code != protocol.AttestationFailed || !strings.HasPrefix(rej.Message, reason+": ") || rej.Retryable {
		t.Fatalf("want ATTESTATION_FAILED %s, got %s %+v", reason, rep.Topic, rej)
	}
	if n := a.principals(t); n != before {
		t.Errorf("%d certificates attached on a rejected attestation", n-before)
	}
}

func (a *attestRig) principals(t *testing.T) int {
	p, err := a.b.Reg.ListThingPrincipals(context.Background(), a.dev.ID)
	if err != nil {
		t.Fatal(err)
	}
	return len(p)
}

func TestAttestationRequired(t *testing.T) {
	a := newAttestRig(t, fleet.AttestationRequired, true)
	key, csrPEM := a.tpmKey(t, "op1.tpmkey")

	t.Run("fail/no-evidence", func(t *testing.T) { a.wantRejected(t, "NOT_ATTESTED", csrPEM, nil) })
	t.Run("fail/other-client-token", func(t *testing.T) {
		a.wantRejected(t, string(attest.ReasonQualifyingData), csrPEM, a.evidence(t, key, a.akURI, "another-token"))
	})
	t.Run("fail/different-AK", func(t *testing.T) {
		other := a.uri("other-ak.tpmkey")
		if _, err := keystore.CreateAK(context.Background(), other); err != nil {
			t.Fatal(err)
		}
		a.wantRejected(t, string(attest.ReasonBadSignature), csrPEM, a.evidence(t, key, other, "tok-1"))
	})
	t.Run("fail/software-key-CSR", func(t *testing.T) {
		sw, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := csr.Create(sw, a.dev.ID)
		if err != nil {
			t.Fatal(err)
		}
		a.wantRejected(t, string(attest.ReasonCSRKeyMismatch), pem.EncodeToMemory(&pem.Block{Type: csr.PEMType, Bytes: der}), a.evidence(t, key, a.akURI, "tok-1"))
	})
	t.Run("fail/untrusted-EK-root", func(t *testing.T) {
		// An EK roots bundle of another manufacturer: the vendor's own CA.
		a.b.Store.Put(context.Background(), fleet.DefaultEKRootsKey, a.b.CA.PEM, nil)
		defer a.b.Store.Put(context.Background(), fleet.DefaultEKRootsKey, append(append([]byte{}, manufactured(t).RootPEM...), manufactured(t).IssuerPEM...), nil)
		a.wantRejected(t, string(attest.ReasonEKUntrusted), csrPEM, a.evidence(t, key, a.akURI, "tok-1"))
	})

	t.Run("ok/attested", func(t *testing.T) {
		rep, acc, rej := a.get(t, csrPEM, withAttestation(a.evidence(t, key, a.akURI, "tok-1")))
		if !strings.HasSuffix(rep.Topic, "/get/accepted") || acc.CertificateID == "" {
			t.Fatalf("attested request refused: %s %+v", rep.Topic, rej)
		}
		if !acc.Attested {
			t.Errorf("get/accepted does not say attested: %+v", acc)
		}
		obj, err := a.b.Store.Get(context.Background(), fleet.LatestAttestationKey(a.dev.ID), "")
		if err != nil {
			t.Fatalf("no attested-key record: %v", err)
		}
		var r fleet.AttestedKey
		if err := json.Unmarshal(obj.Body, &r); err != nil {
			t.Fatal(err)
		}
		if r.AKName != hex.EncodeToString(a.rec.AKName) || r.EK != attest.EKCertified || r.JobID != job || r.Principal != a.dev.CertID || r.Policy != "required" || r.KeyName == "" {
			t.Errorf("attested-key record %+v", r)
		}
		if _, err := a.b.Store.Get(context.Background(), fleet.AttestedKeyKey(a.dev.ID, r.KeyName), ""); err != nil {
			t.Errorf("no per-key record: %v", err)
		}
		// A retry of the same request is not a reused key.
		rep, acc2, rej := a.get(t, csrPEM, withAttestation(a.evidence(t, key, a.akURI, "tok-1")))
		if !strings.HasSuffix(rep.Topic, "/get/accepted") || acc2.CertificateID != acc.CertificateID {
			t.Fatalf("retry: %s %+v", rep.Topic, rej)
		}
		// The same key in a later rotation (over another certificate) is.
		r.Principal = strings.Repeat("0", 64)
		body, _ := json.Marshal(r)
		a.b.Store.Put(context.Background(), fleet.AttestedKeyKey(a.dev.ID, r.KeyName), body, nil)
		a.b.Store.Put(context.Background(), fleet.LatestAttestationKey(a.dev.ID), body, nil)
		a.wantRejected(t, string(attest.ReasonKeyReused), csrPEM, a.evidence(t, key, a.akURI, "tok-1"))
	})
}

func TestAttestationRequiredNotEnrolled(t *testing.T) {
	a := newAttestRig(t, fleet.AttestationRequired, false)
	key, csrPEM := a.tpmKey(t, "op1.tpmkey")
	a.wantRejected(t, "NOT_ENROLLED", csrPEM, a.evidence(t, key, a.akURI, "tok-1"))
}

func TestAttestationOptional(t *testing.T) {
	t.Run("ok/not-enrolled-unattested", func(t *testing.T) {
		a := newAttestRig(t, fleet.AttestationOptional, false)
		_, csrPEM := a.tpmKey(t, "op1.tpmkey")
		if rep, _, rej := a.get(t, csrPEM, nil); !strings.HasSuffix(rep.Topic, "/accepted") {
			t.Fatalf("unenrolled device under optional refused: %+v", rej)
		}
	})
	t.Run("fail/enrolled-without-evidence", func(t *testing.T) {
		a := newAttestRig(t, fleet.AttestationOptional, true)
		_, csrPEM := a.tpmKey(t, "op1.tpmkey")
		a.wantRejected(t, "NOT_ATTESTED", csrPEM, nil)
	})
}

func TestAttestationOff(t *testing.T) {
	a := newAttestRig(t, fleet.AttestationOff, true)
	key, csrPEM := a.tpmKey(t, "op1.tpmkey")
	// Even bad evidence is ignored: the fleet does not check.
	if rep, _, rej := a.get(t, csrPEM, withAttestation(a.evidence(t, key, a.akURI, "wrong"))); !strings.HasSuffix(rep.Topic, "/accepted") {
		t.Fatalf("policy off refused: %+v", rej)
	}
	if _, err := a.b.Store.Get(context.Background(), fleet.LatestAttestationKey(a.dev.ID), ""); err == nil {
		t.Errorf("attested-key record written with the policy off")
	}
}

func TestAttestationPolicySetting(t *testing.T) {
	if _, err := fleet.FromEnv(func(k string) string {
		return map[string]string{fleet.EnvBucket: "b", fleet.EnvAttestationPolicy: "sometimes"}[k]
	}); err == nil || !strings.Contains(err.Error(), "ATTESTATION_POLICY") {
		t.Fatalf("bad policy accepted: %v", err)
	}
}
