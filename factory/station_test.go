package factory

import (
	"context"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"github.com/bootcert/bootcert/internal/testca"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/manifest"
)

// tree maps every file and directory under dir to its content ("dir" for
// directories); lock files aside.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil || strings.HasSuffix(p, ".lock"):
		case d.IsDir():
			m[p] = "dir"
		default:
			b, _ := os.ReadFile(p)
			m[p] = string(b)
		}
		return nil
	})
	return m
}

func TestInitCA(t *testing.T) {
	ctx := context.Background()
	s := newStation(t)
	dir := filepath.Join(s.dir, "ca")
	rep, err := s.prov.InitCA(ctx, CASpec{Dir: dir, CommonName: "Test Factory CA", Days: 30})
	if err != nil {
		t.Fatal(err)
	}
	keyURI := "file:" + filepath.Join(dir, "ca.key")
	if rep.Certificate != filepath.Join(dir, "ca.pem") || rep.KeyURI != keyURI || !rep.KeyGenerated || rep.Hardware ||
		rep.Subject != "Test Factory CA" || rep.KeyAlgorithm != string(keystore.DefaultAlgorithm) {
		t.Fatalf("report %+v", rep)
	}
	if want := s.now.AddDate(0, 0, 30).UTC().Truncate(1e9); !rep.NotAfter.Equal(want) {
		t.Errorf("not after %v, want %v (the Provisioner's clock + 30 days)", rep.NotAfter, want)
	}
	ca, signer, err := s.prov.OpenCA(ctx, rep.Certificate, keyURI)
	if err != nil {
		t.Fatalf("OpenCA on what InitCA made: %v", err)
	}
	keystore.CloseSigner(signer)
	if CertificateID(ca) != rep.SHA256 || !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
		t.Fatalf("CA certificate %+v", ca)
	}
	if fp, _ := keystore.Fingerprint(ca.PublicKey); fp != rep.KeyFingerprint {
		t.Errorf("key fingerprint %s, certificate's %s", rep.KeyFingerprint, fp)
	}

	// an existing CA is never overwritten
	before := tree(t, s.dir)
	if _, err := s.prov.InitCA(ctx, CASpec{Dir: dir, CommonName: "Other", Days: 30}); err == nil || !strings.Contains(err.Error(), "never overwritten") {
		t.Fatalf("second InitCA: %v", err)
	}
	sameFiles(t, before, tree(t, s.dir))

	// an existing key is used, not replaced
	dir2 := filepath.Join(s.dir, "ca2")
	rep2, err := s.prov.InitCA(ctx, CASpec{Dir: dir2, KeyURI: keyURI, CommonName: "Same Key CA", Days: 30})
	if err != nil {
		t.Fatal(err)
	}
	if rep2.KeyGenerated || rep2.KeyFingerprint != rep.KeyFingerprint {
		t.Fatalf("existing key: %+v", rep2)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "ca.key")); before[filepath.Join(dir, "ca.key")] != string(b) {
		t.Fatal("the existing key file changed")
	}
}

func TestInitCAFailuresLeaveNothing(t *testing.T) {
	for _, tt := range []struct {
		name   string
		setup  func(s *station, spec *CASpec, cancel func())
		is     error
		substr string
	}{
		{"fail/no-days", func(s *station, spec *CASpec, _ func()) { spec.Days = 0 }, nil, "--days 0"},
		{"fail/bad-alg", func(s *station, spec *CASpec, _ func()) { spec.Algorithm = "rsa-1024" }, keystore.ErrUnsupportedAlgorithm, "--alg"},
		{"fail/bad-key-uri", func(s *station, spec *CASpec, _ func()) { spec.KeyURI = "nope:x" }, nil, "--key"},
		{"fail/empty-cn-deletes-generated-key", func(s *station, spec *CASpec, _ func()) { spec.CommonName = " " }, nil, "empty common name"},
		{"fail/describe-deletes-generated-key", func(s *station, spec *CASpec, _ func()) {
			s.prov.Keys = faultKeys{describeErr: errors.New("token went away")}
		}, nil, "token went away"},
		{"fail/interrupted-deletes-generated-key", func(s *station, spec *CASpec, cancel func()) {
			s.prov.Keys = faultKeys{after: func(string) { cancel() }}
		}, context.Canceled, "nothing kept"},
		{"fail/key-in-existing-dir", func(s *station, spec *CASpec, _ func()) {
			os.MkdirAll(spec.Dir, 0o755)
			os.WriteFile(filepath.Join(spec.Dir, "notes.txt"), []byte("keep"), 0o644)
			s.prov.Keys = faultKeys{describeErr: errors.New("token went away")}
		}, nil, "token went away"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStation(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			spec := CASpec{Dir: filepath.Join(s.dir, "ca"), CommonName: "CA", Days: 30}
			tt.setup(s, &spec, cancel)
			before := tree(t, s.dir)
			rep, err := s.prov.InitCA(ctx, spec)
			if err == nil {
				t.Fatalf("InitCA succeeded: %+v", rep)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("%v is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.substr) {
				t.Errorf("%q does not say %q", err, tt.substr)
			}
			sameFiles(t, before, tree(t, s.dir))
		})
	}
}

// signingStation is a station with a device key pair (in memory: in split
// mode the station only ever sees the CSRs).
func signingStation(t *testing.T) (*station, Signing) {
	t.Helper()
	s := newStation(t)
	return s, Signing{
		CSR:      testca.Request(t, "gw-split", testca.ECKey(t, elliptic.P256())),
		FinalCSR: testca.Request(t, "gw-split", testca.ECKey(t, elliptic.P256())),
		CACert:   s.ca, CASigner: s.caKey,
		CertOut:  filepath.Join(s.dir, "gw-split.pem"),
		Manifest: s.manifest,
		Days:     365,
	}
}

func TestSign(t *testing.T) {
	s, sg := signingStation(t)
	rep, err := s.prov.Sign(context.Background(), sg)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ReadCertificate(sg.CertOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.CheckSignatureFrom(s.ca); err != nil || cert.Subject.CommonName != "gw-split" {
		t.Fatalf("certificate: CN %q, %v", cert.Subject.CommonName, err)
	}
	fp, _ := keystore.Fingerprint(sg.CSR.PublicKey)
	if rep.DeviceID != "gw-split" || rep.BootstrapSHA256 != CertificateID(cert) || rep.KeyFingerprint != fp || rep.FinalCSRSHA256 == "" || rep.Manifest != s.manifest {
		t.Fatalf("report %+v", rep)
	}
	l, err := manifest.ReadFile(s.manifest)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := l.Lookup("gw-split"); !ok || e.BootstrapSHA256 != rep.BootstrapSHA256 || string(e.FinalCSR) != string(sg.FinalCSR.Raw) {
		t.Fatalf("manifest entry %+v", e)
	}

	// without a manifest: only the certificate
	sg2 := Signing{CSR: testca.Request(t, "gw-2", testca.ECKey(t, elliptic.P256())), CACert: s.ca, CASigner: s.caKey, CertOut: filepath.Join(s.dir, "gw-2.pem"), Days: 1}
	rep2, err := s.prov.Sign(context.Background(), sg2)
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Manifest != "" || rep2.FinalCSRSHA256 != "" {
		t.Fatalf("report %+v", rep2)
	}
	if l, _ := manifest.ReadFile(s.manifest); l.Len() != 1 {
		t.Fatalf("manifest has %d lines, want gw-split's only", l.Len())
	}
}

// hookSigner runs hook when the CA signs: between Sign's checks and its
// commit.
type hookSigner struct {
	crypto.Signer
	hook func()
}

func (h hookSigner) Sign(r io.Reader, digest []byte, o crypto.SignerOpts) ([]byte, error) {
	h.hook()
	return h.Signer.Sign(r, digest, o)
}

func TestSignFailuresLeaveNothing(t *testing.T) {
	for _, tt := range []struct {
		name   string
		setup  func(t *testing.T, s *station, sg *Signing, cancel func())
		is     error
		substr string
	}{
		{"fail/no-csr", func(t *testing.T, s *station, sg *Signing, _ func()) { sg.CSR = nil }, ErrBadRequest, "--csr"},
		{"fail/bad-cn", func(t *testing.T, s *station, sg *Signing, _ func()) {
			sg.CSR = testca.Request(t, "bad id", testca.ECKey(t, elliptic.P256()))
		}, nil, "not a valid AWS IoT thing name"},
		{"fail/final-csr-other-cn", func(t *testing.T, s *station, sg *Signing, _ func()) {
			sg.FinalCSR = testca.Request(t, "gw-other", testca.ECKey(t, elliptic.P256()))
		}, nil, `CN "gw-other" differs`},
		{"fail/final-csr-without-manifest", func(t *testing.T, s *station, sg *Signing, _ func()) { sg.Manifest = "" }, nil, "--final-csr needs --manifest"},
		{"fail/final-csr-bad-signature", func(t *testing.T, s *station, sg *Signing, _ func()) {
			bad := *sg.FinalCSR
			bad.Signature = append([]byte{}, bad.Signature...)
			bad.Signature[len(bad.Signature)-1] ^= 1
			sg.FinalCSR = &bad
		}, ErrBadRequest, "--final-csr"},
		{"fail/already-in-manifest", func(t *testing.T, s *station, sg *Signing, _ func()) {
			manifest.Append(s.manifest, manifest.Entry{DeviceID: "gw-split"})
		}, manifest.ErrDuplicate, "revoke and remove it first"},
		{"fail/corrupt-manifest", func(t *testing.T, s *station, sg *Signing, _ func()) {
			os.WriteFile(s.manifest, []byte("device_id\nbad id\n"), 0o644)
		}, nil, "line 2"},
		{"fail/cert-exists", func(t *testing.T, s *station, sg *Signing, _ func()) {
			os.WriteFile(sg.CertOut, []byte("keep me"), 0o644)
		}, nil, "never overwritten"},
		{"fail/cert-dir-missing", func(t *testing.T, s *station, sg *Signing, _ func()) {
			sg.CertOut = filepath.Join(s.dir, "certs", "x.pem")
		}, nil, "certs does not exist"},
		{"fail/manifest-dir-missing", func(t *testing.T, s *station, sg *Signing, _ func()) {
			sg.Manifest = filepath.Join(s.dir, "station", "m.csv")
		}, nil, "station does not exist"},
		{"fail/wrong-ca-key", func(t *testing.T, s *station, sg *Signing, _ func()) { sg.CASigner = testca.ECKey(t, elliptic.P256()) }, ErrKeyMismatch, "CA key"},
		{"fail/no-days", func(t *testing.T, s *station, sg *Signing, _ func()) { sg.Days = 0 }, ErrBadRequest, "at least 1"},
		// another station lists the device between the check and the
		// commit: the manifest refuses it, the certificate file goes
		{"fail/other-station-added-device-meanwhile", func(t *testing.T, s *station, sg *Signing, _ func()) {
			sg.CASigner = hookSigner{s.caKey, func() { manifest.Append(s.manifest, manifest.Entry{DeviceID: "gw-split"}) }}
		}, manifest.ErrDuplicate, "listed twice"},
		{"fail/cert-file-appeared-meanwhile", func(t *testing.T, s *station, sg *Signing, _ func()) {
			sg.CASigner = hookSigner{s.caKey, func() { os.WriteFile(sg.CertOut, []byte("other station"), 0o644) }}
		}, fs.ErrExist, "appeared meanwhile"},
		{"fail/interrupted", func(t *testing.T, s *station, sg *Signing, cancel func()) {
			sg.CASigner = hookSigner{s.caKey, cancel}
		}, context.Canceled, "nothing kept"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, sg := signingStation(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			tt.setup(t, s, &sg, cancel)
			before := tree(t, s.dir)
			rep, err := s.prov.Sign(ctx, sg)
			if err == nil {
				t.Fatalf("Sign succeeded: %+v", rep)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("%v is not %v", err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.substr) {
				t.Errorf("%q does not say %q", err, tt.substr)
			}
			after := tree(t, s.dir)
			switch tt.name {
			case "fail/other-station-added-device-meanwhile":
				// the other station's line stays; ours is not there
				l, err := manifest.ReadFile(s.manifest)
				if err != nil || l.Len() != 1 {
					t.Fatalf("manifest: %v", err)
				}
				if e, _ := l.Lookup("gw-split"); e.BootstrapSHA256 != "" {
					t.Errorf("our line is in the manifest: %+v", e)
				}
				delete(after, s.manifest)
			case "fail/cert-file-appeared-meanwhile":
				if after[sg.CertOut] != "other station" {
					t.Errorf("the other station's certificate file was touched: %q", after[sg.CertOut])
				}
				delete(after, sg.CertOut)
			}
			sameFiles(t, before, after)
		})
	}
}

func TestOpenCA(t *testing.T) {
	ctx := context.Background()
	s := newStation(t)
	rep, err := s.prov.InitCA(ctx, CASpec{Dir: filepath.Join(s.dir, "ca"), CommonName: "CA", Days: 30})
	if err != nil {
		t.Fatal(err)
	}
	other := "file:" + filepath.Join(s.dir, "other.key")
	if _, err := keystore.Generate(ctx, other, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, cert, key string
		is              error
		substr          string
	}{
		{"fail/no-cert", "", other, nil, "--ca-cert: required"},
		{"fail/no-key", rep.Certificate, "", nil, "--ca-key: required"},
		{"fail/cert-missing", filepath.Join(s.dir, "nope.pem"), other, fs.ErrNotExist, "--ca-cert"},
		{"fail/key-missing", rep.Certificate, "file:" + filepath.Join(s.dir, "nope.key"), keystore.ErrNotFound, "--ca-key"},
		{"fail/other-key", rep.Certificate, other, ErrKeyMismatch, "--ca-key " + other},
		{"fail/not-a-ca", writePEM(t, s.dir, "leaf.pem", EncodeCertificate(leafOf(t, s))), other, ErrNotCA, "CA basic constraint"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := s.prov.OpenCA(ctx, tt.cert, tt.key)
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("err = %v, want %v saying %q", err, tt.is, tt.substr)
			}
		})
	}
}

func leafOf(t *testing.T, s *station) *x509.Certificate {
	t.Helper()
	c, err := Issue(s.ca, s.caKey, testca.Request(t, "gw-leaf", testca.ECKey(t, elliptic.P256())), 1, s.now)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
