package factory

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/manifest"
)

// The station's other workflows beside Provision: creating the factory CA
// (bootcertctl ca create), opening it (every command that signs), and signing
// a CSR a device made itself (bootcertctl ca sign). Like Provision they use
// the Provisioner's Keys and Now, and a failure leaves nothing behind.

// CASpec is a factory CA to create.
type CASpec struct {
	// Dir receives ca.pem (and ca.key without KeyURI); created when
	// missing.
	Dir string
	// KeyURI is the CA key: opened when it exists, generated with
	// Algorithm when it does not. "" = a new software key file:Dir/ca.key
	// (development).
	KeyURI     string
	Algorithm  keystore.Algorithm // "" = keystore.DefaultAlgorithm
	CommonName string
	Days       int
}

// CAReport is what InitCA made, printed as JSON by bootcertctl ca create.
type CAReport struct {
	Certificate    string    `json:"certificate"`
	KeyURI         string    `json:"key_uri"` // redacted
	KeyGenerated   bool      `json:"key_generated"`
	Hardware       bool      `json:"hardware"`
	Subject        string    `json:"subject"`
	Serial         string    `json:"serial"`
	NotAfter       time.Time `json:"not_after"`
	SHA256         string    `json:"sha256"`
	KeyAlgorithm   string    `json:"key_algorithm"`
	KeyFingerprint string    `json:"key_fingerprint"`
}

// InitCA creates the factory CA: it opens (or generates) the CA key, makes
// the self-signed CA certificate (CreateCA) and writes it to Dir/ca.pem,
// which is never overwritten. On failure a key it generated is deleted and
// no ca.pem is written.
func (p *Provisioner) InitCA(ctx context.Context, s CASpec) (rep *CAReport, err error) {
	keys := p.keys()
	alg := s.Algorithm
	if alg == "" {
		alg = keystore.DefaultAlgorithm
	}
	if err := alg.Validate(); err != nil {
		return nil, fmt.Errorf("--alg: %w", err)
	}
	if s.Days <= 0 {
		return nil, fmt.Errorf("--days %d: must be at least 1", s.Days)
	}
	if s.Dir == "" {
		return nil, errors.New("--out: required (the directory for ca.pem)")
	}
	dir, err := filepath.Abs(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("--out %s: %w", s.Dir, err)
	}
	certPath := filepath.Join(dir, "ca.pem")
	if _, err := os.Stat(certPath); err == nil {
		return nil, fmt.Errorf("--out: %s already exists; a CA is never overwritten: choose another directory", certPath)
	}
	keyURI := s.KeyURI
	if keyURI == "" {
		keyURI = "file:" + filepath.Join(dir, "ca.key")
	}
	u, err := keystore.ParseURI(keyURI)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}

	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			rep = nil
		}
	}()
	if _, statErr := os.Stat(dir); errors.Is(statErr, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("--out: creating %s: %w", dir, err)
		}
		undo = append(undo, func() { os.Remove(dir) }) // only when still empty
	}
	signer, err := keys.Open(ctx, keyURI)
	generated := false
	switch {
	case err == nil:
	case errors.Is(err, keystore.ErrNotFound):
		if signer, err = keys.Generate(ctx, keyURI, alg); err != nil {
			return nil, fmt.Errorf("--key: %w", err)
		}
		generated = true
		undo = append(undo, func() { keys.Delete(context.WithoutCancel(ctx), keyURI) })
	default:
		return nil, fmt.Errorf("--key: %w", err)
	}
	ca, err := CreateCA(signer, s.CommonName, s.Days, p.now())
	// Close before Describe: a TPM (swtpm) serves one connection at a time.
	keystore.CloseSigner(signer)
	if err != nil {
		return nil, err
	}
	info, err := keys.Describe(ctx, keyURI)
	if err != nil {
		return nil, fmt.Errorf("--key %s: %w", u.Redacted(), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("interrupted before writing %s; nothing kept: %w", certPath, err)
	}
	if err := atomicfile.CreateExclusive(certPath, EncodeCertificate(ca), 0o644); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("--out: %s already exists; a CA is never overwritten", certPath)
		}
		return nil, fmt.Errorf("--out: %w", err)
	}
	return &CAReport{
		Certificate: certPath, KeyURI: u.Redacted(), KeyGenerated: generated, Hardware: info.Hardware,
		Subject: ca.Subject.CommonName, Serial: hexSerial(ca.SerialNumber), NotAfter: ca.NotAfter,
		SHA256: CertificateID(ca), KeyAlgorithm: string(info.Algorithm), KeyFingerprint: info.Fingerprint,
	}, nil
}

// OpenCA reads the factory CA certificate and opens its key, checking that
// they belong together. The caller closes the signer (keystore.CloseSigner).
func (p *Provisioner) OpenCA(ctx context.Context, certPath, keyURI string) (*x509.Certificate, crypto.Signer, error) {
	if certPath == "" {
		return nil, nil, errors.New("--ca-cert: required (the factory CA certificate, ca.pem)")
	}
	if keyURI == "" {
		return nil, nil, errors.New("--ca-key: required (the factory CA key URI, e.g. file:/path/ca.key or pkcs11:...)")
	}
	ca, err := ReadCertificate(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("--ca-cert: %w", err)
	}
	signer, err := p.keys().Open(ctx, keyURI)
	if err != nil {
		return nil, nil, fmt.Errorf("--ca-key: %w", err)
	}
	if err := CheckCA(ca, signer); err != nil {
		keystore.CloseSigner(signer)
		return nil, nil, fmt.Errorf("--ca-cert %s / --ca-key %s: %w", certPath, redact(keyURI), err)
	}
	return ca, signer, nil
}

// Signing is a CSR made by a device's own hardware key to certify (split
// mode: the station never reaches the key).
type Signing struct {
	// CSR is the device's CSR; its subject CN is the device ID.
	CSR *x509.CertificateRequest
	// FinalCSR, optional (pre-provisioned mode), is the operational key's
	// CSR, same CN, recorded in the manifest; it needs Manifest.
	FinalCSR *x509.CertificateRequest
	// CACert and CASigner are the factory CA (OpenCA).
	CACert   *x509.Certificate
	CASigner crypto.Signer
	// CertOut is where the certificate (PEM) is written; never overwritten.
	CertOut string
	// Manifest, optional, is the manifest to append the device to.
	Manifest string
	// Days is the certificate's validity (never beyond the CA's).
	Days int
}

// SignReport is what Sign did, printed as JSON by bootcertctl ca sign.
type SignReport struct {
	DeviceID        string    `json:"device_id"`
	Certificate     string    `json:"certificate"`
	Serial          string    `json:"serial"`
	BootstrapSHA256 string    `json:"bootstrap_sha256"`
	KeyFingerprint  string    `json:"key_fingerprint"`
	NotAfter        time.Time `json:"not_after"`
	Manifest        string    `json:"manifest,omitempty"`
	FinalCSRSHA256  string    `json:"final_csr_sha256,omitempty"`
}

// Sign certifies a device CSR with the factory CA, writes the certificate
// atomically (never over an existing file) and, with Manifest, appends the
// line device_id,bootstrap_sha256[,final_csr] last. It refuses a device the
// manifest already lists before it signs anything. On failure neither the
// certificate file nor the manifest line stays.
//
// Unlike Provision it cannot check that the key is non-extractable: the
// station only sees the CSR.
func (p *Provisioner) Sign(ctx context.Context, s Signing) (*SignReport, error) {
	if s.CSR == nil {
		return nil, fmt.Errorf("--csr: %w: no CSR", ErrBadRequest)
	}
	id := s.CSR.Subject.CommonName
	if err := manifest.ValidDeviceID(id); err != nil {
		return nil, fmt.Errorf("--csr: subject CN: %w", err)
	}
	entry := manifest.Entry{DeviceID: id}
	if s.FinalCSR != nil {
		if s.Manifest == "" {
			return nil, errors.New("--final-csr needs --manifest (it is recorded there)")
		}
		if err := s.FinalCSR.CheckSignature(); err != nil {
			return nil, fmt.Errorf("--final-csr: %w: signature does not verify: %v", ErrBadRequest, err)
		}
		if cn := s.FinalCSR.Subject.CommonName; cn != id {
			return nil, fmt.Errorf("--final-csr: CN %q differs from the device CSR's %q", cn, id)
		}
		entry.FinalCSR = s.FinalCSR.Raw
	}
	if s.Manifest != "" {
		if l, err := manifest.ReadFile(s.Manifest); err == nil {
			if _, dup := l.Lookup(id); dup {
				return nil, fmt.Errorf("--manifest %s: %w: %s; revoke and remove it first to sign a new certificate", s.Manifest, manifest.ErrDuplicate, id)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("--manifest: %w", err)
		}
	}
	if s.CertOut == "" {
		return nil, errors.New("--cert-out: required")
	}
	if _, err := os.Stat(s.CertOut); err == nil {
		return nil, fmt.Errorf("--cert-out: %s already exists and is never overwritten", s.CertOut)
	}
	for _, f := range []struct{ flag, path string }{{"--cert-out", s.CertOut}, {"--manifest", s.Manifest}} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(filepath.Dir(f.path)); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("%s %s: directory %s does not exist; create it first", f.flag, f.path, filepath.Dir(f.path))
		}
	}
	if s.CACert == nil {
		return nil, errors.New("no CA certificate (--ca-cert)")
	}
	cert, err := Issue(s.CACert, s.CASigner, s.CSR, s.Days, p.now())
	if err != nil {
		return nil, err
	}
	entry.BootstrapSHA256 = CertificateID(cert)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("device %s: interrupted before writing the certificate; nothing kept: %w", id, err)
	}
	if err := commit(identity{cert: cert, certOut: s.CertOut, manifest: s.Manifest, entry: entry}); err != nil {
		return nil, fmt.Errorf("device %s: %w", id, err)
	}
	rep := &SignReport{DeviceID: id, Certificate: s.CertOut, Serial: hexSerial(cert.SerialNumber), BootstrapSHA256: entry.BootstrapSHA256, NotAfter: cert.NotAfter, Manifest: s.Manifest}
	rep.KeyFingerprint, _ = keystore.Fingerprint(cert.PublicKey)
	if entry.FinalCSR != nil {
		sum := sha256.Sum256(entry.FinalCSR)
		rep.FinalCSRSHA256 = hex.EncodeToString(sum[:])
	}
	return rep, nil
}

// ReadCSR reads a PEM or DER CSR from a file and verifies its signature.
func ReadCSR(path string) (*x509.CertificateRequest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	req, err := csr.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return req, nil
}
