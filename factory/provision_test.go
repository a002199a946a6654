package factory

import (
	"bytes"
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	_ "github.com/bootcert/bootcert/keystore/file"
	"github.com/bootcert/bootcert/manifest"
)

type station struct {
	dir      string
	ca       *x509.Certificate
	caKey    crypto.Signer
	prov     *Provisioner
	manifest string
	now      time.Time
}

func newStation(t *testing.T) *station {
	t.Helper()
	now := time.Now()
	k := testca.ECKey(t, elliptic.P256())
	ca, err := CreateCA(k, "Station CA", 365, now)
	if err != nil {
		t.Fatal(err)
	}
	s := &station{dir: t.TempDir(), ca: ca, now: now}
	s.manifest = filepath.Join(s.dir, "manifest.csv")
	s.prov = &Provisioner{Now: func() time.Time { return now }}
	s.caKey = k
	return s
}

func (s *station) req(id string) Provisioning {
	return Provisioning{
		DeviceID:         id,
		KeyURI:           "file:" + filepath.Join(s.dir, id+".key"),
		CertOut:          filepath.Join(s.dir, id+".pem"),
		CACert:           s.ca,
		CASigner:         s.caKey,
		Manifest:         s.manifest,
		Days:             365,
		AllowSoftwareKey: true,
	}
}

// snapshot reads every file in the station directory.
func (s *station) snapshot(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	ents, _ := os.ReadDir(s.dir)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(s.dir, e.Name()))
		m[e.Name()] = string(b)
	}
	return m
}

func sameFiles(t *testing.T, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed", k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok && !strings.HasSuffix(k, ".lock") {
			t.Errorf("%s created", k)
		}
	}
}

func TestProvisionFileKey(t *testing.T) {
	testenv.Require(t, "openssl")
	s := newStation(t)
	ctx := context.Background()
	rep, err := s.prov.Provision(ctx, s.req("gw-0001"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != StatusProvisioned || rep.Algorithm != keystore.ECDSAP256 || rep.Hardware || len(rep.Warnings) == 0 || rep.KeyReused {
		t.Fatalf("report %+v", rep)
	}
	cert, err := ReadCertificate(rep.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "gw-0001" || CertificateID(cert) != rep.BootstrapSHA256 {
		t.Fatal("certificate does not match the report")
	}
	caPath := writePEM(t, t.TempDir(), "ca.pem", EncodeCertificate(s.ca))
	if out := openssl(t, "verify", "-CAfile", caPath, rep.Certificate); !strings.Contains(out, ": OK") {
		t.Fatal(out)
	}
	fp, _ := keystore.Fingerprint(cert.PublicKey)
	if fp != rep.KeyFingerprint {
		t.Fatal("certificate is not for the key")
	}
	l, err := manifest.ReadFile(s.manifest)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := l.Lookup("gw-0001"); !ok || e.BootstrapSHA256 != rep.BootstrapSHA256 || e.FinalCSR != nil {
		t.Fatalf("manifest entry %+v", e)
	}

	// Re-run: the existing identity, nothing changed.
	before := s.snapshot(t)
	rep2, err := s.prov.Provision(ctx, s.req("gw-0001"))
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Status != StatusExists || rep2.BootstrapSHA256 != rep.BootstrapSHA256 || rep2.KeyFingerprint != rep.KeyFingerprint {
		t.Fatalf("re-run report %+v", rep2)
	}
	sameFiles(t, before, s.snapshot(t))

	// --force: same key, new certificate, manifest line replaced.
	r := s.req("gw-0001")
	r.Force = true
	rep3, err := s.prov.Provision(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if !rep3.KeyReused || rep3.KeyFingerprint != rep.KeyFingerprint || rep3.BootstrapSHA256 == rep.BootstrapSHA256 {
		t.Fatalf("force report %+v", rep3)
	}
	l, _ = manifest.ReadFile(s.manifest)
	if e, _ := l.Lookup("gw-0001"); l.Len() != 1 || e.BootstrapSHA256 != rep3.BootstrapSHA256 {
		t.Fatalf("manifest after --force: %+v", e)
	}
}

func TestProvisionPreProvisioned(t *testing.T) {
	testenv.Require(t, "openssl")
	s := newStation(t)
	r := s.req("gw-pre")
	r.FinalKeyURI = "file:" + filepath.Join(s.dir, "gw-pre-op.key")
	r.Algorithm = keystore.ECDSAP384
	rep, err := s.prov.Provision(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if rep.FinalCSRSHA256 == "" || rep.FinalKeyFP == "" || rep.FinalKeyFP == rep.KeyFingerprint || rep.Algorithm != keystore.ECDSAP384 {
		t.Fatalf("report %+v", rep)
	}
	l, _ := manifest.ReadFile(s.manifest)
	e, _ := l.Lookup("gw-pre")
	req, err := x509.ParseCertificateRequest(e.FinalCSR)
	if err != nil || req.CheckSignature() != nil || req.Subject.CommonName != "gw-pre" {
		t.Fatalf("final CSR: %v", err)
	}
	fp, _ := keystore.Fingerprint(req.PublicKey)
	if fp != rep.FinalKeyFP {
		t.Fatal("final CSR is not for the operational key")
	}
	p := writePEM(t, t.TempDir(), "final.csr", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: e.FinalCSR}))
	if out := openssl(t, "req", "-in", p, "-noout", "-verify"); !strings.Contains(out, "verify OK") && !strings.Contains(out, "verification OK") {
		t.Fatalf("openssl req -verify: %s", out)
	}
}

// faultKeys wraps the real keystore to inject failures.
type faultKeys struct {
	Keystore
	describe    func(uri string, info keystore.Info) keystore.Info
	describeErr error
	after       func(uri string)
}

func (f faultKeys) Describe(ctx context.Context, uri string) (keystore.Info, error) {
	info, err := f.Keystore.Describe(ctx, uri)
	if f.describeErr != nil {
		err = f.describeErr
	}
	if f.describe != nil {
		info = f.describe(uri, info)
	}
	if f.after != nil {
		f.after(uri)
	}
	return info, err
}

func TestProvisionFailuresLeaveNothing(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		setup  func(t *testing.T, s *station, r *Provisioning)
		is     error
		substr string
	}{
		{name: "fail/software-key-refused", setup: func(t *testing.T, s *station, r *Provisioning) { r.AllowSoftwareKey = false }, is: ErrSoftwareKey, substr: "--allow-software-key"},
		{name: "fail/bad-device-id", setup: func(t *testing.T, s *station, r *Provisioning) { r.DeviceID = "bad/id" }, substr: "not a valid AWS IoT thing name"},
		{name: "fail/device-id-too-long-for-cn", setup: func(t *testing.T, s *station, r *Provisioning) { r.DeviceID = strings.Repeat("a", 65) }, substr: "at most 64"},
		{name: "fail/bad-uri", setup: func(t *testing.T, s *station, r *Provisioning) { r.KeyURI = "tpm:device" }, substr: "path attributes"},
		{name: "fail/unsupported-alg", setup: func(t *testing.T, s *station, r *Provisioning) { r.Algorithm = "ed25519" }, is: keystore.ErrUnsupportedAlgorithm, substr: "--alg"},
		{name: "fail/wrong-ca-key", setup: func(t *testing.T, s *station, r *Provisioning) { r.CASigner = testca.ECKey(t, elliptic.P256()) }, is: ErrKeyMismatch, substr: "--ca-key"},
		{name: "fail/no-cert-dir", setup: func(t *testing.T, s *station, r *Provisioning) { r.CertOut = filepath.Join(s.dir, "nope", "c.pem") }, substr: "does not exist"},
		{name: "fail/existing-key-not-in-manifest", setup: func(t *testing.T, s *station, r *Provisioning) {
			if _, err := keystore.Generate(ctx, r.KeyURI, keystore.ECDSAP256); err != nil {
				t.Fatal(err)
			}
		}, is: keystore.ErrExists, substr: "never overwritten"},
		{name: "fail/existing-cert-file", setup: func(t *testing.T, s *station, r *Provisioning) {
			os.WriteFile(r.CertOut, []byte("keep me"), 0o644)
		}, substr: "never overwritten without --force"},
		{name: "fail/in-manifest-key-missing", setup: func(t *testing.T, s *station, r *Provisioning) {
			manifest.Append(s.manifest, manifest.Entry{DeviceID: r.DeviceID})
		}, is: ErrAlreadyProvisioned, substr: "--force"},
		{name: "fail/corrupt-manifest", setup: func(t *testing.T, s *station, r *Provisioning) {
			os.WriteFile(s.manifest, []byte("device_id\nbad id\n"), 0o644)
		}, substr: "line 2"},
		{name: "fail/not-hardware", setup: func(t *testing.T, s *station, r *Provisioning) {
			s.prov.Keys = faultKeys{describe: func(_ string, i keystore.Info) keystore.Info { i.Backend = "fake"; return i }}
		}, is: ErrNotHardware, substr: "not protected by hardware"},
		{name: "fail/operational-key-not-hardware", setup: func(t *testing.T, s *station, r *Provisioning) {
			r.FinalKeyURI = "file:" + filepath.Join(s.dir, "op.key")
			s.prov.Keys = faultKeys{describe: func(uri string, i keystore.Info) keystore.Info {
				if strings.HasSuffix(uri, "op.key") {
					i.Backend = "fake"
				}
				return i
			}}
		}, is: ErrNotHardware, substr: "operational key"},
		{name: "fail/other-station-added-device-meanwhile", setup: func(t *testing.T, s *station, r *Provisioning) {
			r.FinalKeyURI = "file:" + filepath.Join(s.dir, "op.key")
			s.prov.Keys = faultKeys{after: func(uri string) {
				if strings.HasSuffix(uri, "op.key") {
					manifest.Append(s.manifest, manifest.Entry{DeviceID: r.DeviceID})
				}
			}}
		}, is: manifest.ErrDuplicate, substr: "listed twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStation(t)
			r := s.req("gw-x")
			tt.setup(t, s, &r)
			before := s.snapshot(t)
			_, err := s.prov.Provision(ctx, r)
			if err == nil {
				t.Fatal("Provision succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("%v is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.substr) {
				t.Errorf("%q does not say %q", err, tt.substr)
			}
			after := s.snapshot(t)
			if tt.name == "fail/other-station-added-device-meanwhile" {
				// the other station's line stays; ours is not there and
				// our keys and certificate are gone
				delete(after, "manifest.csv")
				delete(after, "manifest.csv.lock")
				delete(before, "manifest.csv")
			}
			sameFiles(t, before, after)
		})
	}
}

func TestProvisionExistsButInconsistent(t *testing.T) {
	s := newStation(t)
	ctx := context.Background()
	if _, err := s.prov.Provision(ctx, s.req("gw-1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.prov.Provision(ctx, s.req("gw-2")); err != nil {
		t.Fatal(err)
	}
	// gw-1's certificate replaced by gw-2's: re-run must not report it as fine
	c2, _ := os.ReadFile(filepath.Join(s.dir, "gw-2.pem"))
	os.WriteFile(filepath.Join(s.dir, "gw-1.pem"), c2, 0o644)
	before := s.snapshot(t)
	_, err := s.prov.Provision(ctx, s.req("gw-1"))
	if !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("err = %v", err)
	}
	sameFiles(t, before, s.snapshot(t))
	os.Remove(filepath.Join(s.dir, "gw-1.pem"))
	if _, err := s.prov.Provision(ctx, s.req("gw-1")); !errors.Is(err, ErrAlreadyProvisioned) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("err = %v", err)
	}
	if !bytes.Contains([]byte(before["manifest.csv"]), []byte("gw-1")) {
		t.Fatal("manifest lost gw-1")
	}
}

func TestProvisionExistsOtherCA(t *testing.T) {
	s := newStation(t)
	ctx := context.Background()
	if _, err := s.prov.Provision(ctx, s.req("gw-1")); err != nil {
		t.Fatal(err)
	}
	k := testca.ECKey(t, elliptic.P256())
	other, err := CreateCA(k, "Other CA", 365, s.now)
	if err != nil {
		t.Fatal(err)
	}
	r := s.req("gw-1")
	r.CACert, r.CASigner = other, k
	before := s.snapshot(t)
	if _, err := s.prov.Provision(ctx, r); !errors.Is(err, ErrNotIssuedByCA) {
		t.Fatalf("err = %v", err)
	}
	sameFiles(t, before, s.snapshot(t))
	// --final-key on a device provisioned without one: exists, with a warning
	r = s.req("gw-1")
	r.FinalKeyURI = "file:" + filepath.Join(s.dir, "op.key")
	rep, err := s.prov.Provision(ctx, r)
	if err != nil || rep.Status != StatusExists || len(rep.Warnings) == 0 {
		t.Fatalf("rep %+v, err %v", rep, err)
	}
	sameFiles(t, before, s.snapshot(t))
}

func TestProvisionInterruptedKeepsNothing(t *testing.T) {
	s := newStation(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// the signal arrives while the key is being checked
	s.prov.Keys = faultKeys{after: func(string) { cancel() }}
	before := s.snapshot(t)
	_, err := s.prov.Provision(ctx, s.req("gw-int"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	sameFiles(t, before, s.snapshot(t))
}
