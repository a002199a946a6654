package registry

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/bootcert/bootcert/protocol"
)

// MaxPEM bounds certificate and CSR PEM inputs (AWS: certificatePem is at
// most 65536 characters).
const MaxPEM = 65536

// ParseCertificatePEM decodes one PEM CERTIFICATE block.
func ParseCertificatePEM(what, s string) (*x509.Certificate, error) {
	if len(s) > MaxPEM {
		return nil, newErr(CodeCertificateValidation, what, "PEM longer than %d characters", MaxPEM)
	}
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, newErr(CodeCertificateValidation, what, "not a PEM CERTIFICATE block")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, newErr(CodeCertificateValidation, what, "parsing certificate: %v", err)
	}
	return c, nil
}

func pemOf(der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func (r *Registry) checkValidity(what string, c *x509.Certificate, now time.Time) error {
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return newErr(CodeCertificateValidation, what, "certificate is not valid now (valid %s to %s)",
			c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// RegisterCAInput is RegisterCACertificate's input.
type RegisterCAInput struct {
	CACertificatePEM           string
	VerificationCertificatePEM string
	SetAsActive                bool
	AllowAutoRegistration      bool
	CertificateMode            string // DEFAULT (default) or SNI_ONLY
}

// RegisterCACertificate registers a CA. In DEFAULT mode the verification
// certificate must be signed by the CA's key and carry the account's
// registration code as its subject CN
// (https://docs.aws.amazon.com/iot/latest/developerguide/register-CA-cert.html);
// SNI_ONLY needs no verification certificate.
func (r *Registry) RegisterCACertificate(in RegisterCAInput) (CACertificate, error) {
	ca, err := ParseCertificatePEM("caCertificate", in.CACertificatePEM)
	if err != nil {
		return CACertificate{}, err
	}
	mode := in.CertificateMode
	if mode == "" {
		mode = CertificateModeDefault
	}
	if mode != CertificateModeDefault && mode != CertificateModeSNIOnly {
		return CACertificate{}, invalid("certificateMode", "must be DEFAULT or SNI_ONLY, got %q", mode)
	}
	if !ca.IsCA || !ca.BasicConstraintsValid {
		return CACertificate{}, newErr(CodeCertificateValidation, "caCertificate", "not a CA certificate (basicConstraints CA:TRUE missing)")
	}
	var out CACertificate
	err = r.do(func(now time.Time) error {
		if err := r.checkValidity("caCertificate", ca, now); err != nil {
			return err
		}
		if mode == CertificateModeDefault {
			if in.VerificationCertificatePEM == "" {
				return invalid("verificationCertificate", "required in DEFAULT mode: sign a certificate with CN = the registration code (GetRegistrationCode) with the CA's key")
			}
			v, err := ParseCertificatePEM("verificationCertificate", in.VerificationCertificatePEM)
			if err != nil {
				return err
			}
			if err := v.CheckSignatureFrom(ca); err != nil {
				return newErr(CodeCertificateValidation, "verificationCertificate", "not signed by the CA certificate's key: %v", err)
			}
			if v.Subject.CommonName != r.st.RegistrationCode {
				return newErr(CodeRegistrationCode, "verificationCertificate", "subject CN is not this account's registration code (GetRegistrationCode)")
			}
		}
		id := protocol.CertificateID(ca.Raw)
		if _, ok := r.st.CAs[id]; ok {
			return newErr(CodeAlreadyExists, "cacert "+id, "CA certificate %s is already registered", id)
		}
		c := &CACertificate{ID: id, ARN: r.arn("cacert", id), PEM: pemOf(ca.Raw), Status: StatusInactive,
			AutoRegistrationStatus: AutoRegistrationDisable, CertificateMode: mode, OwnedBy: r.account,
			CreationDate: now, LastModifiedDate: now, NotBefore: ca.NotBefore.UTC(), NotAfter: ca.NotAfter.UTC(),
			Subject: ca.Subject.String(), GenerationID: newUUID()}
		if in.SetAsActive {
			c.Status = StatusActive
		}
		if in.AllowAutoRegistration {
			c.AutoRegistrationStatus = AutoRegistrationEnable
		}
		r.st.CAs[id] = c
		r.touch()
		r.logDecision("RegisterCACertificate", id, "registered", "status", c.Status, "autoRegistration", c.AutoRegistrationStatus)
		out = *c
		return nil
	})
	return out, err
}

// DescribeCACertificate returns a registered CA.
func (r *Registry) DescribeCACertificate(id string) (CACertificate, error) {
	return describe(r, r.st.CAs, "CA certificate", id, nil)
}

// UpdateCACertificate sets a CA's status (ACTIVE/INACTIVE) and/or its
// auto-registration status (ENABLE/DISABLE); empty leaves it unchanged.
func (r *Registry) UpdateCACertificate(id, newStatus, newAutoRegistrationStatus string) error {
	if newStatus != "" && newStatus != StatusActive && newStatus != StatusInactive {
		return invalid("newStatus", "must be ACTIVE or INACTIVE, got %q", newStatus)
	}
	if a := newAutoRegistrationStatus; a != "" && a != AutoRegistrationEnable && a != AutoRegistrationDisable {
		return invalid("newAutoRegistrationStatus", "must be ENABLE or DISABLE, got %q", a)
	}
	return r.do(func(now time.Time) error {
		c, ok := r.st.CAs[id]
		if !ok {
			return notFound("CA certificate", id)
		}
		if newStatus != "" {
			c.Status = newStatus
		}
		if newAutoRegistrationStatus != "" {
			c.AutoRegistrationStatus = newAutoRegistrationStatus
		}
		c.LastModifiedDate = now
		r.touch()
		r.logDecision("UpdateCACertificate", id, "updated", "status", c.Status, "autoRegistration", c.AutoRegistrationStatus)
		return nil
	})
}

// DeleteCACertificate deletes an INACTIVE CA
// (https://docs.aws.amazon.com/iot/latest/apireference/API_DeleteCACertificate.html:
// CertificateStateException when it is active).
func (r *Registry) DeleteCACertificate(id string) error {
	return r.do(func(time.Time) error {
		c, ok := r.st.CAs[id]
		if !ok {
			return notFound("CA certificate", id)
		}
		if c.Status == StatusActive {
			return newErr(CodeCertificateState, "cacert "+id, "CA certificate is ACTIVE: set it INACTIVE first")
		}
		delete(r.st.CAs, id)
		r.touch()
		r.logDecision("DeleteCACertificate", id, "deleted")
		return nil
	})
}

// CACertificates lists the registered CAs, sorted by ID.
func (r *Registry) CACertificates() []CACertificate {
	var out []CACertificate
	_ = r.do(func(time.Time) error {
		for _, k := range slices.Sorted(maps.Keys(r.st.CAs)) {
			out = append(out, *r.st.CAs[k])
		}
		return nil
	})
	return out
}

// FindCAFor returns the registered CA (any status) whose key signed leaf,
// or an error matching ErrNotFound. intermediates are ignored by the lab
// (AWS JITR needs the CA registered that signed the device certificate).
func (r *Registry) FindCAFor(leaf *x509.Certificate) (CACertificate, error) {
	var out CACertificate
	err := r.do(func(time.Time) error {
		for _, k := range slices.Sorted(maps.Keys(r.st.CAs)) {
			c := r.st.CAs[k]
			ca, err := ParseCertificatePEM("caCertificate", c.PEM)
			if err != nil {
				continue
			}
			if !strings.EqualFold(string(leaf.RawIssuer), string(ca.RawSubject)) {
				continue
			}
			if leaf.CheckSignatureFrom(ca) == nil {
				out = *c
				return nil
			}
		}
		return newErr(CodeNotFound, "certificate issuer", "no registered CA signed certificate with issuer %q", leaf.Issuer.String())
	})
	return out, err
}

func (r *Registry) addCertLocked(op string, c *x509.Certificate, caID, status, mode string, now time.Time) (*Certificate, error) {
	id := protocol.CertificateID(c.Raw)
	if _, ok := r.st.Certs[id]; ok {
		return nil, newErr(CodeAlreadyExists, "cert "+id, "certificate %s is already registered", id)
	}
	cert := &Certificate{ID: id, ARN: r.CertificateARN(id), PEM: pemOf(c.Raw), Status: status,
		CACertificateID: caID, CertificateMode: mode, OwnedBy: r.account, CreationDate: now, LastModifiedDate: now,
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(), Subject: c.Subject.String(), GenerationID: newUUID()}
	r.st.Certs[id] = cert
	r.touchRec(recCert, id)
	r.emit(CertificateRegistered{CAID: caID, CertID: id, Status: status, Time: now, JITR: op == "JITR"})
	r.logDecision(op, id, "registered", "status", status, "ca", caID, "subject", cert.Subject)
	return cert, nil
}

// RegisterPendingCertificate is just-in-time registration: an unknown
// certificate signed by a registered CA with auto-registration enabled is
// registered PENDING_ACTIVATION
// (https://docs.aws.amazon.com/iot/latest/developerguide/auto-register-device-cert.html).
// It returns the certificate and whether it was new; a known certificate is
// returned unchanged. The CA must be ACTIVE with auto-registration ENABLE.
func (r *Registry) RegisterPendingCertificate(der []byte, caID string) (Certificate, bool, error) {
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return Certificate{}, false, newErr(CodeCertificateValidation, "certificate", "parsing certificate: %v", err)
	}
	var out Certificate
	var isNew bool
	err = r.do(func(now time.Time) error {
		if old, ok := r.st.Certs[protocol.CertificateID(der)]; ok {
			out = *old
			return nil
		}
		ca, ok := r.st.CAs[caID]
		if !ok {
			return notFound("CA certificate", caID)
		}
		if ca.Status != StatusActive || ca.AutoRegistrationStatus != AutoRegistrationEnable {
			r.logDecision("JITR", protocol.CertificateID(der), "refused", "ca", caID, "caStatus", ca.Status, "autoRegistration", ca.AutoRegistrationStatus)
			return newErr(CodeCertificateState, "cacert "+caID, "CA is %s with auto-registration %s: JITR needs ACTIVE and ENABLE", ca.Status, ca.AutoRegistrationStatus)
		}
		if err := r.checkValidity("certificate", c, now); err != nil {
			return err
		}
		cert, err := r.addCertLocked("JITR", c, caID, StatusPendingActivation, CertificateModeDefault, now)
		if err != nil {
			return err
		}
		out, isNew = *cert, true
		return nil
	})
	return out, isNew, err
}

// RegisterCertificate registers a device certificate signed by a registered
// CA (https://docs.aws.amazon.com/iot/latest/apireference/API_RegisterCertificate.html).
// status defaults to INACTIVE; caPEM, if given, must be that registered CA.
func (r *Registry) RegisterCertificate(certPEM, caPEM, status string) (Certificate, error) {
	c, err := ParseCertificatePEM("certificatePem", certPEM)
	if err != nil {
		return Certificate{}, err
	}
	if status, err = registerStatus(status); err != nil {
		return Certificate{}, err
	}
	var wantCA string
	if caPEM != "" {
		ca, err := ParseCertificatePEM("caCertificatePem", caPEM)
		if err != nil {
			return Certificate{}, err
		}
		wantCA = protocol.CertificateID(ca.Raw)
	}
	ca, err := r.FindCAFor(c)
	if err != nil {
		return Certificate{}, newErr(CodeCertificateValidation, "certificatePem", "not signed by a registered CA: register the CA first (RegisterCACertificate) or use RegisterCertificateWithoutCA")
	}
	if wantCA != "" && wantCA != ca.ID {
		return Certificate{}, newErr(CodeCertificateValidation, "caCertificatePem", "the certificate is not signed by this CA")
	}
	var out Certificate
	err = r.do(func(now time.Time) error {
		if err := r.checkValidity("certificatePem", c, now); err != nil {
			return err
		}
		cert, err := r.addCertLocked("RegisterCertificate", c, ca.ID, status, CertificateModeDefault, now)
		if err != nil {
			return err
		}
		out = *cert
		return nil
	})
	return out, err
}

// RegisterCertificateWithoutCA registers a certificate whose CA is not
// registered (certificateMode SNI_ONLY).
func (r *Registry) RegisterCertificateWithoutCA(certPEM, status string) (Certificate, error) {
	c, err := ParseCertificatePEM("certificatePem", certPEM)
	if err != nil {
		return Certificate{}, err
	}
	if status, err = registerStatus(status); err != nil {
		return Certificate{}, err
	}
	var out Certificate
	err = r.do(func(now time.Time) error {
		if err := r.checkValidity("certificatePem", c, now); err != nil {
			return err
		}
		cert, err := r.addCertLocked("RegisterCertificateWithoutCA", c, "", status, CertificateModeSNIOnly, now)
		if err != nil {
			return err
		}
		out = *cert
		return nil
	})
	return out, err
}

func registerStatus(s string) (string, error) {
	switch s {
	case "":
		return StatusInactive, nil
	// PENDING_ACTIVATION too: RegisterCertificate takes it
	// (https://docs.aws.amazon.com/iot/latest/apireference/API_RegisterCertificate.html, "status").
	case StatusActive, StatusInactive, StatusRevoked, StatusPendingActivation:
		return s, nil
	}
	return "", invalid("status", "must be ACTIVE, INACTIVE, REVOKED or PENDING_ACTIVATION, got %q", s)
}

// CreateCertificateFromCsr issues a certificate for csrPEM with the lab's
// issuing CA, like AWS's own issuer
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CreateCertificateFromCsr.html).
func (r *Registry) CreateCertificateFromCsr(csrPEM string, setAsActive bool) (Certificate, error) {
	c, err := r.issueFromCSR(csrPEM)
	if err != nil {
		return Certificate{}, err
	}
	status := StatusInactive
	if setAsActive {
		status = StatusActive
	}
	var out Certificate
	err = r.do(func(now time.Time) error {
		cert, err := r.addCertLocked("CreateCertificateFromCsr", c, "", status, CertificateModeDefault, now)
		if err != nil {
			return err
		}
		out = *cert
		return nil
	})
	return out, err
}

// DescribeCertificate returns a certificate.
func (r *Registry) DescribeCertificate(id string) (Certificate, error) {
	return describe(r, r.st.Certs, "certificate", id, nil)
}

// CertificateStatus returns a certificate's status.
func (r *Registry) CertificateStatus(id string) (string, error) {
	c, err := r.DescribeCertificate(id)
	return c.Status, err
}

// UpdateCertificate sets a certificate's status. ACTIVE, INACTIVE and
// REVOKED may be set; PENDING_TRANSFER and PENDING_ACTIVATION are for AWS's
// internal use and REGISTER_INACTIVE is deprecated
// (https://docs.aws.amazon.com/iot/latest/apireference/API_UpdateCertificate.html).
// A REVOKED certificate cannot be made ACTIVE again (lab choice: revocation
// is final).
func (r *Registry) UpdateCertificate(id, newStatus string) error {
	switch newStatus {
	case StatusActive, StatusInactive, StatusRevoked:
	default:
		return invalid("newStatus", "must be ACTIVE, INACTIVE or REVOKED, got %q", newStatus)
	}
	return r.do(func(now time.Time) error {
		c, ok := r.st.Certs[id]
		if !ok {
			return notFound("certificate", id)
		}
		if c.Status == StatusRevoked && newStatus == StatusActive {
			return newErr(CodeCertificateState, "cert "+id, "certificate is REVOKED and cannot be activated")
		}
		old := c.Status
		if old == newStatus {
			return nil
		}
		c.Status = newStatus
		c.LastModifiedDate = now
		r.touchRec(recCert, id)
		r.emit(CertificateStatusChanged{ID: id, Old: old, New: newStatus, Time: now})
		r.logDecision("UpdateCertificate", id, "status changed", "old", old, "new", newStatus)
		return nil
	})
}

// DeleteCertificate deletes a certificate that is not ACTIVE and has no
// thing attached; policies block deletion unless force
// (https://docs.aws.amazon.com/iot/latest/apireference/API_DeleteCertificate.html).
func (r *Registry) DeleteCertificate(id string, force bool) error {
	return r.do(func(now time.Time) error {
		c, ok := r.st.Certs[id]
		if !ok {
			return notFound("certificate", id)
		}
		if c.Status == StatusActive {
			return newErr(CodeCertificateState, "cert "+id, "certificate is ACTIVE: set it INACTIVE first")
		}
		if things := slices.Sorted(maps.Keys(r.byPrinc[c.ARN])); len(things) > 0 {
			return newErr(CodeDeleteConflict, "cert "+id, "certificate is attached to thing %s: detach it first (DetachThingPrincipal)", things[0])
		}
		var attached []string
		for _, p := range slices.Sorted(maps.Keys(r.st.PolicyTargets)) {
			if r.st.PolicyTargets[p][c.ARN] {
				attached = append(attached, p)
			}
		}
		if len(attached) > 0 && !force {
			return newErr(CodeDeleteConflict, "cert "+id, "policies %s are attached: detach them or use forceDelete", strings.Join(attached, ", "))
		}
		for _, p := range attached {
			removeFromSet(r.st.PolicyTargets, p, c.ARN)
		}
		delete(r.st.Certs, id)
		r.touch()
		r.emit(CertificateStatusChanged{ID: id, Old: c.Status, New: "", Time: now})
		r.logDecision("DeleteCertificate", id, "deleted", "force", force)
		return nil
	})
}

// issueFromCSR checks csrPEM (size, PEM type, signature) and issues a
// certificate for it with the lab's issuing CA; errors name the
// certificateSigningRequest field as AWS's InvalidRequestException does.
func (r *Registry) issueFromCSR(csrPEM string) (*x509.Certificate, error) {
	if len(csrPEM) > MaxPEM {
		return nil, invalid("certificateSigningRequest", "longer than %d characters", MaxPEM)
	}
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || (b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST") {
		return nil, invalid("certificateSigningRequest", "not a PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, invalid("certificateSigningRequest", "parsing CSR: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, invalid("certificateSigningRequest", "CSR signature does not verify: %v", err)
	}
	if r.issuer == nil {
		return nil, newErr(CodeInternal, "CreateCertificateFromCsr", "the lab has no issuing CA configured")
	}
	der, err := r.issuer.IssueFromCSR(b.Bytes)
	if err != nil {
		return nil, invalid("certificateSigningRequest", "issuing: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("lab issuer returned a bad certificate: %w", err)
	}
	return c, nil
}
