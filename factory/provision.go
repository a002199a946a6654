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
	"syscall"
	"time"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/manifest"
)

// Provisioning errors; test with errors.Is.
var (
	// ErrSoftwareKey: a file: key was given for a device without
	// AllowSoftwareKey.
	ErrSoftwareKey = errors.New("software key refused")
	// ErrNotHardware: the backend reports that the key can leave the
	// hardware (or is not in hardware at all).
	ErrNotHardware = errors.New("key is not protected by hardware")
	// ErrAlreadyProvisioned: the device or its key already exists and the
	// existing state cannot simply be reported.
	ErrAlreadyProvisioned = errors.New("device already provisioned")
)

// Keys is the part of the keystore that provisioning uses. Keystore is the
// real one; tests may wrap it to inject faults.
type Keys interface {
	Open(ctx context.Context, uri string) (crypto.Signer, error)
	Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error)
	Describe(ctx context.Context, uri string) (keystore.Info, error)
	Delete(ctx context.Context, uri string) error
}

// Keystore is Keys over the registered keystore backends.
type Keystore struct{}

func (Keystore) Open(ctx context.Context, uri string) (crypto.Signer, error) {
	return keystore.Open(ctx, uri)
}
func (Keystore) Generate(ctx context.Context, uri string, alg keystore.Algorithm) (crypto.Signer, error) {
	return keystore.Generate(ctx, uri, alg)
}
func (Keystore) Describe(ctx context.Context, uri string) (keystore.Info, error) {
	return keystore.Describe(ctx, uri)
}
func (Keystore) Delete(ctx context.Context, uri string) error { return keystore.Delete(ctx, uri) }

// Provisioning is one device to provision.
type Provisioning struct {
	DeviceID string
	// KeyURI names the bootstrap key in the device's hardware.
	KeyURI    string
	Algorithm keystore.Algorithm // "" = keystore.DefaultAlgorithm
	// CertOut is where the bootstrap certificate (PEM) is written.
	CertOut string
	// CACert and CASigner are the factory CA.
	CACert   *x509.Certificate
	CASigner crypto.Signer
	// Manifest is the path of the manifest (allow list) to append to.
	Manifest string
	// FinalKeyURI, when set, selects pre-provisioned mode: the operational
	// key is generated too and its CSR recorded in the manifest.
	FinalKeyURI string
	// Days is the bootstrap certificate's validity.
	Days int
	// Force re-provisions: an existing key is reused (never overwritten),
	// the certificate file and the manifest line are replaced.
	Force bool
	// AllowSoftwareKey accepts file: keys (development only).
	AllowSoftwareKey bool

	// TPM attestation enrolment (tpm: bootstrap keys; docs/attestation.md).
	// AKURI is where the attestation key goes; "" puts it next to the
	// bootstrap key (akURIFor). EKTrust pins the TPM manufacturers' roots;
	// nil records the EK without checking its root (the cloud decides).
	// RequireEKRoot refuses an EK certificate that does not chain to
	// EKTrust. NoAttestation skips the enrolment.
	AKURI         string
	EKTrust       *attest.Trust
	RequireEKRoot bool
	NoAttestation bool

	// Owner, when set, owns the files written on the device: the key files
	// (TPM key blobs, the attestation key's, file: keys) and the certificate
	// file, each chowned before it appears under its name. Provisioning on
	// the device as root gives the daemon's user (bootcertctl --owner,
	// default bootcert) so that bootcertd can read its key.
	Owner *keystore.Owner
}

// Status values of a Report.
const (
	StatusProvisioned = "provisioned"
	StatusExists      = "exists"
)

// Report is what provisioning did, printed as JSON by bootcertctl.
type Report struct {
	Status          string             `json:"status"`
	DeviceID        string             `json:"device_id"`
	KeyURI          string             `json:"key_uri"` // redacted
	Backend         string             `json:"backend"`
	Algorithm       keystore.Algorithm `json:"algorithm"`
	KeyFingerprint  string             `json:"key_fingerprint"`
	Hardware        bool               `json:"hardware"`
	Attributes      map[string]bool    `json:"attributes,omitempty"`
	Certificate     string             `json:"certificate"`
	Serial          string             `json:"serial"`
	Issuer          string             `json:"issuer"`
	BootstrapSHA256 string             `json:"bootstrap_sha256"`
	NotAfter        time.Time          `json:"not_after"`
	Manifest        string             `json:"manifest"`
	FinalKeyURI     string             `json:"final_key_uri,omitempty"`
	FinalKeyFP      string             `json:"final_key_fingerprint,omitempty"`
	FinalCSRSHA256  string             `json:"final_csr_sha256,omitempty"`
	KeyReused       bool               `json:"key_reused,omitempty"`
	Attestation     *AttestationReport `json:"attestation,omitempty"`
	Owner           string             `json:"owner,omitempty"` // of the files written (Provisioning.Owner)
	Warnings        []string           `json:"warnings,omitempty"`
}

// Provisioner provisions devices.
type Provisioner struct {
	Keys Keys             // nil = Keystore{}
	Now  func() time.Time // nil = time.Now
}

func (p *Provisioner) keys() Keys {
	if p.Keys == nil {
		return Keystore{}
	}
	return p.Keys
}

func (p *Provisioner) now() time.Time {
	if p.Now == nil {
		return time.Now()
	}
	return p.Now()
}

// Provision generates the bootstrap key in the device's hardware (unless it
// exists and Force reuses it), makes a CSR with CN = device ID, signs it with
// the factory CA, checks the key is non-extractable, writes the certificate
// atomically and appends the manifest line, last.
//
// Re-running for a device that is in the manifest and whose key and
// certificate are in place reports the existing identity (StatusExists) and
// changes nothing. Any failure leaves no half state: keys this call created
// are deleted, the certificate file is removed or restored, and the manifest
// is only written at the end.
func (p *Provisioner) Provision(ctx context.Context, r Provisioning) (rep *Report, err error) {
	now := p.now()
	keys := p.keys()
	if err := r.validate(now); err != nil {
		return nil, err
	}
	alg := r.Algorithm
	if alg == "" {
		alg = keystore.DefaultAlgorithm
	}
	keyURI, _ := keystore.ParseURI(r.KeyURI)
	if r.Owner != nil {
		ctx = keystore.WithOwner(ctx, *r.Owner)
	}

	list, err := manifest.ReadFile(r.Manifest)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var (
		entry      manifest.Entry
		inManifest bool
	)
	if list != nil {
		entry, inManifest = list.Lookup(r.DeviceID)
	}
	keyExists, err := exists(ctx, keys, r.KeyURI)
	if err != nil {
		return nil, fmt.Errorf("bootstrap key (--key): %w", err)
	}
	finalExists := false
	if r.FinalKeyURI != "" {
		if finalExists, err = exists(ctx, keys, r.FinalKeyURI); err != nil {
			return nil, fmt.Errorf("operational key (--final-key): %w", err)
		}
	}
	oldCert, certErr := os.ReadFile(r.CertOut)
	certExists := certErr == nil
	if certErr != nil && !errors.Is(certErr, fs.ErrNotExist) {
		return nil, fmt.Errorf("certificate file %s: %w", r.CertOut, certErr)
	}

	if !r.Force {
		switch {
		case keyExists && inManifest:
			return p.existing(ctx, r, entry, oldCert, certExists)
		case inManifest:
			return nil, fmt.Errorf("device %s: %w: it is in manifest %s (bootstrap_sha256 %s) but key %s does not exist; is this other hardware? To give it a new identity re-run with --force (its manifest line is replaced; revoke the old certificate with `bootcertctl ca revoke`)",
				r.DeviceID, ErrAlreadyProvisioned, r.Manifest, orNone(entry.BootstrapSHA256), keyURI.Redacted())
		case keyExists:
			return nil, fmt.Errorf("device %s: bootstrap key %s: %w and the device is not in manifest %s; a key is never overwritten. If an earlier run for this device was interrupted, re-run with --force to certify the existing key; otherwise give another --key or delete it with `bootcertctl key delete`",
				r.DeviceID, keyURI.Redacted(), keystore.ErrExists, r.Manifest)
		case finalExists:
			return nil, fmt.Errorf("device %s: operational key %s: %w; a key is never overwritten: re-run with --force to reuse it, or give another --final-key",
				r.DeviceID, redact(r.FinalKeyURI), keystore.ErrExists)
		case certExists:
			return nil, fmt.Errorf("device %s: certificate file %s already exists and is never overwritten without --force; move it away or give another --cert-out", r.DeviceID, r.CertOut)
		}
	}

	rep = &Report{Status: StatusProvisioned, DeviceID: r.DeviceID, KeyURI: keyURI.Redacted(), Certificate: r.CertOut, Manifest: r.Manifest, KeyReused: keyExists}
	if r.Owner != nil {
		rep.Owner = r.Owner.Name
	}
	// Undo on failure, in reverse order of what was done.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			rep = nil
		}
	}()

	// 1. bootstrap key
	if !keyExists {
		if err := generate(ctx, keys, r.KeyURI, alg); err != nil {
			return nil, fmt.Errorf("device %s: bootstrap key: %w", r.DeviceID, err)
		}
		undo = append(undo, func() { keys.Delete(context.WithoutCancel(ctx), r.KeyURI) })
	}
	info, err := p.checkHardware(ctx, keys, r.KeyURI, r.AllowSoftwareKey, "bootstrap key", rep)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", r.DeviceID, err)
	}
	rep.Backend, rep.Algorithm, rep.KeyFingerprint, rep.Hardware, rep.Attributes = info.Backend, info.Algorithm, info.Fingerprint, info.Hardware, info.Attributes
	if keyExists && info.Algorithm != alg {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("existing key is %s, not the requested %s; it was reused as it is", info.Algorithm, alg))
	}

	// 1b. TPM attestation enrolment: EK, AK, activation, certify, verify.
	var attRec *attest.Record
	switch {
	case r.NoAttestation:
		rep.Attestation = &AttestationReport{Status: StatusNotAttested, Why: "attestation skipped (NoAttestation)"}
	case keyURI.Scheme != "tpm":
		rep.Attestation = &AttestationReport{Status: StatusNotAttested, Why: keyURI.Scheme + ": keys have no standard attestation"}
	default:
		var arep *AttestationReport
		var created string
		attRec, arep, created, err = p.enrol(ctx, r)
		if created != "" {
			undo = append(undo, func() { removeAK(created) })
		}
		if err != nil {
			return nil, fmt.Errorf("device %s: attestation enrolment: %w", r.DeviceID, err)
		}
		rep.Attestation = arep
	}

	// 2. CSR made by the key itself, signed by the CA
	req, err := makeCSR(ctx, keys, r.KeyURI, r.DeviceID)
	if err != nil {
		return nil, fmt.Errorf("device %s: bootstrap key: %w", r.DeviceID, err)
	}
	cert, err := Issue(r.CACert, r.CASigner, req, r.Days, now)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", r.DeviceID, err)
	}
	rep.Serial = hexSerial(cert.SerialNumber)
	rep.Issuer = cert.Issuer.CommonName
	rep.BootstrapSHA256 = CertificateID(cert)
	rep.NotAfter = cert.NotAfter

	// 3. operational key and its CSR (pre-provisioned mode)
	entry = manifest.Entry{DeviceID: r.DeviceID, BootstrapSHA256: rep.BootstrapSHA256}
	if attRec != nil {
		entry.Attestation = attRec.Manifest()
	}
	if r.FinalKeyURI != "" {
		if !finalExists {
			if err := generate(ctx, keys, r.FinalKeyURI, alg); err != nil {
				return nil, fmt.Errorf("device %s: operational key: %w", r.DeviceID, err)
			}
			undo = append(undo, func() { keys.Delete(context.WithoutCancel(ctx), r.FinalKeyURI) })
		}
		finfo, err := p.checkHardware(ctx, keys, r.FinalKeyURI, r.AllowSoftwareKey, "operational key", rep)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", r.DeviceID, err)
		}
		freq, err := makeCSR(ctx, keys, r.FinalKeyURI, r.DeviceID)
		if err != nil {
			return nil, fmt.Errorf("device %s: operational key: %w", r.DeviceID, err)
		}
		entry.FinalCSR = freq.Raw
		sum := sha256.Sum256(freq.Raw)
		rep.FinalKeyURI = redact(r.FinalKeyURI)
		rep.FinalKeyFP = finfo.Fingerprint
		rep.FinalCSRSHA256 = hex.EncodeToString(sum[:])
	}

	// Interrupted (Ctrl-C, SIGTERM): commit nothing, undo what was made.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("device %s: interrupted before writing the certificate; nothing kept: %w", r.DeviceID, err)
	}

	// 4. certificate file, atomically, then 5. the manifest line, last
	id := identity{cert: cert, certOut: r.CertOut, overwrite: certExists, previous: oldCert, manifest: r.Manifest, entry: entry, replace: r.Force, fileOpts: keystore.FileOptions(ctx)}
	if err := commit(id); err != nil {
		return nil, fmt.Errorf("device %s: %w", r.DeviceID, err)
	}
	return rep, nil
}

// existing reports an identity already provisioned, after checking that the
// key, the certificate file and the manifest agree.
func (p *Provisioner) existing(ctx context.Context, r Provisioning, entry manifest.Entry, certPEM []byte, certExists bool) (*Report, error) {
	keyURI := redact(r.KeyURI)
	info, err := p.keys().Describe(ctx, r.KeyURI)
	if err != nil {
		return nil, fmt.Errorf("device %s: bootstrap key: %w", r.DeviceID, err)
	}
	if !certExists {
		return nil, fmt.Errorf("device %s: %w: key %s exists and the device is in manifest %s, but certificate file %s is missing; restore it, or re-run with --force to issue a new certificate for the same key",
			r.DeviceID, ErrAlreadyProvisioned, keyURI, r.Manifest, r.CertOut)
	}
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return nil, fmt.Errorf("device %s: certificate file %s: %w", r.DeviceID, r.CertOut, err)
	}
	fp, err := keystore.Fingerprint(cert.PublicKey)
	if err != nil || fp != info.Fingerprint {
		return nil, fmt.Errorf("device %s: %w: certificate %s is not for key %s; re-run with --force to issue a new certificate for the key", r.DeviceID, ErrKeyMismatch, r.CertOut, keyURI)
	}
	if err := cert.CheckSignatureFrom(r.CACert); err != nil {
		return nil, fmt.Errorf("device %s: %w: certificate %s was not issued by CA %q (--ca-cert); re-run with --force to issue one from this CA", r.DeviceID, ErrNotIssuedByCA, r.CertOut, r.CACert.Subject.CommonName)
	}
	id := CertificateID(cert)
	if entry.BootstrapSHA256 != "" && entry.BootstrapSHA256 != id {
		return nil, fmt.Errorf("device %s: %w: manifest %s lists bootstrap_sha256 %s but certificate %s has %s; re-run with --force to replace the manifest line",
			r.DeviceID, ErrAlreadyProvisioned, r.Manifest, entry.BootstrapSHA256, r.CertOut, id)
	}
	rep := &Report{
		Status: StatusExists, DeviceID: r.DeviceID, KeyURI: keyURI, Backend: info.Backend,
		Algorithm: info.Algorithm, KeyFingerprint: info.Fingerprint, Hardware: info.Hardware, Attributes: info.Attributes,
		Certificate: r.CertOut, Serial: hexSerial(cert.SerialNumber), Issuer: cert.Issuer.CommonName,
		BootstrapSHA256: id, NotAfter: cert.NotAfter, Manifest: r.Manifest,
	}
	if r.Owner != nil {
		rep.Owner = r.Owner.Name
		rep.Warnings = append(rep.Warnings, ownerWarnings(*r.Owner, r.CertOut, keyFile(r.KeyURI), keyFile(r.FinalKeyURI))...)
	}
	if a := entry.Attestation; a != nil {
		rep.Attestation = &AttestationReport{Status: StatusAttested, EKCert: a.EKCertSHA256, EKPub: a.EKPubSHA256, AKName: hex.EncodeToString(a.AKName)}
	} else {
		rep.Attestation = &AttestationReport{Status: StatusNotAttested, Why: "the manifest line has no attestation columns"}
	}
	if len(entry.FinalCSR) > 0 {
		sum := sha256.Sum256(entry.FinalCSR)
		rep.FinalCSRSHA256 = hex.EncodeToString(sum[:])
		if r.FinalKeyURI != "" {
			rep.FinalKeyURI = redact(r.FinalKeyURI)
		}
	} else if r.FinalKeyURI != "" {
		rep.Warnings = append(rep.Warnings, "the device was provisioned without an operational key: --final-key was ignored; re-run with --force to add it (the manifest line is replaced)")
	}
	return rep, nil
}

func (r *Provisioning) validate(now time.Time) error {
	if err := manifest.ValidDeviceID(r.DeviceID); err != nil {
		return fmt.Errorf("--device-id: %w", err)
	}
	if len(r.DeviceID) > MaxCommonName {
		return fmt.Errorf("--device-id: %q is %d characters; the certificate CN holds at most %d", r.DeviceID, len(r.DeviceID), MaxCommonName)
	}
	u, err := keystore.ParseURI(r.KeyURI)
	if err != nil {
		return fmt.Errorf("--key: %w", err)
	}
	if u.Scheme == "file" && !r.AllowSoftwareKey {
		return fmt.Errorf("--key %s: %w: a file: key can be copied off the device; use a tpm: or pkcs11: URI, or --allow-software-key for development", u.Redacted(), ErrSoftwareKey)
	}
	if r.FinalKeyURI != "" {
		fu, err := keystore.ParseURI(r.FinalKeyURI)
		if err != nil {
			return fmt.Errorf("--final-key: %w", err)
		}
		if fu.Scheme == "file" && !r.AllowSoftwareKey {
			return fmt.Errorf("--final-key %s: %w: use a tpm: or pkcs11: URI, or --allow-software-key for development", fu.Redacted(), ErrSoftwareKey)
		}
		if r.FinalKeyURI == r.KeyURI {
			return fmt.Errorf("--final-key: must name another key than --key")
		}
	}
	if r.Algorithm != "" {
		if err := r.Algorithm.Validate(); err != nil {
			return fmt.Errorf("--alg: %w", err)
		}
	}
	if r.Days <= 0 {
		return fmt.Errorf("--days %d: must be at least 1", r.Days)
	}
	if r.CACert == nil {
		return errors.New("no CA certificate (--ca-cert)")
	}
	if err := CheckCA(r.CACert, r.CASigner); err != nil {
		return fmt.Errorf("--ca-cert/--ca-key: %w", err)
	}
	if now.After(r.CACert.NotAfter) {
		return fmt.Errorf("--ca-cert: CA %q expired on %s: create a new CA", r.CACert.Subject.CommonName, r.CACert.NotAfter.Format(time.RFC3339))
	}
	if r.CertOut == "" {
		return errors.New("--cert-out: required")
	}
	if st, err := os.Stat(filepath.Dir(r.CertOut)); err != nil || !st.IsDir() {
		return fmt.Errorf("--cert-out %s: directory %s does not exist; create it first", r.CertOut, filepath.Dir(r.CertOut))
	}
	if r.Manifest == "" {
		return errors.New("--manifest: required")
	}
	if st, err := os.Stat(filepath.Dir(r.Manifest)); err != nil || !st.IsDir() {
		return fmt.Errorf("--manifest %s: directory %s does not exist; create it first", r.Manifest, filepath.Dir(r.Manifest))
	}
	return nil
}

// exists probes a key: true when it opens, false when the backend says it is
// not there, an error otherwise (wrong PIN, no module, TPM unreachable).
func exists(ctx context.Context, keys Keys, uri string) (bool, error) {
	s, err := keys.Open(ctx, uri)
	if err == nil {
		keystore.CloseSigner(s)
		return true, nil
	}
	if errors.Is(err, keystore.ErrNotFound) {
		return false, nil
	}
	return false, err
}

func generate(ctx context.Context, keys Keys, uri string, alg keystore.Algorithm) error {
	s, err := keys.Generate(ctx, uri, alg)
	if err != nil {
		return err
	}
	// Close at once: a TPM (swtpm) serves one connection at a time.
	keystore.CloseSigner(s)
	return nil
}

func (p *Provisioner) checkHardware(ctx context.Context, keys Keys, uri string, allowSoftware bool, what string, rep *Report) (keystore.Info, error) {
	info, err := keys.Describe(ctx, uri)
	if err != nil {
		return info, fmt.Errorf("%s: checking it is non-extractable: %w", what, err)
	}
	if !info.Hardware {
		if allowSoftware && info.Backend == "file" {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s %s is a software key (--allow-software-key): development only", what, info.URI))
			return info, nil
		}
		return info, fmt.Errorf("%s %s: %w: the %s backend reports attributes %v", what, redact(uri), ErrNotHardware, info.Backend, info.Attributes)
	}
	return info, nil
}

func makeCSR(ctx context.Context, keys Keys, uri, cn string) (*x509.CertificateRequest, error) {
	s, err := keys.Open(ctx, uri)
	if err != nil {
		return nil, err
	}
	defer keystore.CloseSigner(s)
	der, err := csr.Create(s, cn)
	if err != nil {
		return nil, err
	}
	return csr.Parse(der)
}

// keyFile is the file a key URI keeps its key in (a file: key, a TPM key
// blob), or "".
func keyFile(raw string) string {
	u, err := keystore.ParseURI(raw)
	if err != nil {
		return ""
	}
	switch u.Scheme {
	case "file":
		return u.Opaque
	case "tpm":
		b, _ := u.Get("blob")
		return b
	}
	return ""
}

// ownerWarnings says which of the files an existing identity is made of are
// not owned by o (an earlier run as root without --owner): re-running
// changes nothing, so it says how to fix them.
func ownerWarnings(o keystore.Owner, files ...string) []string {
	var w []string
	for _, f := range files {
		if f == "" {
			continue
		}
		st, err := os.Stat(f)
		if err != nil {
			continue
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok || (int(sys.Uid) == o.UID && int(sys.Gid) == o.GID) {
			continue
		}
		w = append(w, fmt.Sprintf("%s is owned by %d:%d, not %s (%d:%d), and bootcertd may not read it; fix it with: chown %d:%d %s", f, sys.Uid, sys.Gid, o.Name, o.UID, o.GID, o.UID, o.GID, f))
	}
	return w
}

func redact(raw string) string {
	if u, err := keystore.ParseURI(raw); err == nil {
		return u.Redacted()
	}
	return "(invalid URI)"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
