package ctl

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/tpm"
	"github.com/bootcert/bootcert/manifest"
)

// TestProvisionEnrolsTPM: `bootcertctl provision` on a swtpm that has an
// EK certificate (swtpm_setup's local CA) enrols the device for key
// attestation: the manifest's attestation columns are filled, and what they
// record verifies with the cloud's verifier (attest.Verify, the EK chained
// to the local CA) for a fresh TPM2_Certify of the bootstrap key.
func TestProvisionEnrolsTPM(t *testing.T) {
	testenv.Require(t, "openssl", "swtpm", "swtpm_setup")
	dir := t.TempDir()
	m, err := testenv.Manufacture(filepath.Join(dir, "tpm"), filepath.Join(dir, "tpmca"))
	if err != nil {
		testenv.Missing(t, "swtpm_setup could not manufacture a TPM with an EK certificate: "+err.Error())
	}
	sw := testenv.StartManufactured(t, m)
	t.Cleanup(func() { tpm.CloseDevice(sw.Device()) })
	caDir := filepath.Join(dir, "ca")
	mustCtl(t, "ca", "create", "--out", caDir)
	caKey := "file:" + filepath.Join(caDir, "ca.key")
	boot := tpmURI(sw, filepath.Join(dir, "boot.tpmkey"))

	rep := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-att-1", boot)...))
	a := rep.Attestation
	if a == nil || a.Status != factory.StatusAttested || a.EK != attest.EKUnverified || a.AKName == "" {
		t.Fatalf("attestation report %+v", a)
	}
	sum := sha256.Sum256(m.EKCertRSA)
	if a.EKCert != hex.EncodeToString(sum[:]) {
		t.Errorf("recorded EK certificate %s, swtpm_setup's RSA EK certificate %x", a.EKCert, sum)
	}
	l, err := manifest.ReadFile(filepath.Join(dir, "manifest.csv"))
	if err != nil {
		t.Fatal(err)
	}
	e, ok := l.Lookup("gw-att-1")
	if !ok || e.Attestation == nil {
		t.Fatalf("manifest line without attestation columns: %+v", e)
	}
	rec := attest.FromManifest(e)
	if hex.EncodeToString(rec.AKName) != a.AKName || rec.EKCertSHA256 != a.EKCert || rec.EKPubSHA256 == "" {
		t.Fatalf("manifest record %+v, report %+v", rec, a)
	}

	// The cloud's check of a rotation, with the manifest's record only.
	ctx := context.Background()
	akURI, err := keystore.DefaultAKURI(boot)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "boot.ak.tpmkey")); err != nil {
		t.Fatalf("the AK is not next to the bootstrap key where bootcertd looks: %v", err)
	}
	nonce := make([]byte, 16)
	rand.Read(nonce)
	qd := attest.RotationBinding("gw-att-1", "bootcert-rotation", "cert", hex.EncodeToString(nonce)).QualifyingData()
	c, err := keystore.Certify(ctx, boot, akURI, qd)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := keystore.ReadEKCertificate(ctx, boot)
	if err != nil {
		t.Fatal(err)
	}
	s, err := keystore.Open(ctx, boot)
	if err != nil {
		t.Fatal(err)
	}
	pub := s.Public()
	keystore.CloseSigner(s)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(m.RootPEM)
	inter := x509.NewCertPool()
	inter.AppendCertsFromPEM(m.IssuerPEM)
	res, err := attest.Verify(rec, &attest.Evidence{Attest: c.Attest, Signature: c.Signature, Public: c.Public, EKCert: ek},
		attest.Expected{QualifyingData: qd, PublicKey: pub}, attest.Trust{Roots: roots, Intermediates: inter})
	if err != nil {
		t.Fatalf("the factory's record does not verify a rotation: %v", err)
	}
	if res.EK != attest.EKCertified {
		t.Errorf("EK %s, want certified by the local CA", res.EK)
	}

	// key info: the bootstrap key is certified by its AK now; lockout read,
	// untouched by bootcert's own use (noDA).
	ki := decodeJSON[keyInfo](t, mustCtl(t, "key", "info", "--json", boot))
	if ki.Attestation == nil || ki.Attestation.Status != keyAttestable || ki.Lockout == nil || ki.Lockout.MaxTries == 0 || ki.Lockout.Counter != 0 {
		t.Errorf("key info %+v attestation %+v lockout %+v", ki.Info, ki.Attestation, ki.Lockout)
	}
	// A TPM key next to which no AK was enrolled is not attested.
	other := tpmURI(sw, filepath.Join(dir, "other.tpmkey"))
	mustCtl(t, "key", "generate", other)
	ki = decodeJSON[keyInfo](t, mustCtl(t, "key", "info", "--json", other))
	if ki.Attestation == nil || ki.Attestation.Status != keyNotAttested {
		t.Errorf("key without AK: %+v", ki.Attestation)
	}
	// With --ak naming the enrolled AK it is attestable.
	ki = decodeJSON[keyInfo](t, mustCtl(t, "key", "info", "--json", "--ak", akURI, other))
	if ki.Attestation == nil || ki.Attestation.Status != keyAttestable {
		t.Errorf("key with --ak: %+v", ki.Attestation)
	}

	// Provisioning again over the same key and AK fails: nothing is overwritten.
	if _, _, err := runCtl(t, provisionArgs(dir, caKey, "gw-att-2", boot)...); err == nil {
		t.Errorf("second provision over the same key and AK succeeded")
	}
}

// TestOldManifestLoads: a manifest written before attestation (three
// columns) still loads; its devices are "not attested".
func TestOldManifestLoads(t *testing.T) {
	p := filepath.Join(t.TempDir(), "old.csv")
	old := "device_id,bootstrap_sha256,final_csr\ngw-old-1," + hex.EncodeToString(make([]byte, 32)) + ",\n"
	if err := os.WriteFile(p, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := manifest.ReadFile(p)
	if err != nil {
		t.Fatalf("old manifest: %v", err)
	}
	e, ok := l.Lookup("gw-old-1")
	if !ok || e.Attestation != nil || attest.FromManifest(e) != nil {
		t.Fatalf("old line %+v", e)
	}
}
