package registry

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"
)

// CreateProvisioningCertificate issues a certificate for csrPEM as the fleet
// provisioning MQTT API's CreateCertificateFromCsr does: "The new
// certificate has a PENDING_ACTIVATION status. When you call RegisterThing
// to provision a thing with this certificate, the certificate status changes
// to ACTIVE or INACTIVE as described in the template."
// (https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html).
func (r *Registry) CreateProvisioningCertificate(csrPEM string) (Certificate, error) {
	if len(csrPEM) > MaxPEM {
		return Certificate{}, invalid("certificateSigningRequest", "longer than %d characters", MaxPEM)
	}
	b, _ := pem.Decode([]byte(csrPEM))
	if b == nil || (b.Type != "CERTIFICATE REQUEST" && b.Type != "NEW CERTIFICATE REQUEST") {
		return Certificate{}, invalid("certificateSigningRequest", "not a PEM CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return Certificate{}, invalid("certificateSigningRequest", "parsing CSR: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return Certificate{}, invalid("certificateSigningRequest", "CSR signature does not verify: %v", err)
	}
	if r.issuer == nil {
		return Certificate{}, newErr(CodeInternal, "CreateCertificateFromCsr", "the lab has no issuing CA configured")
	}
	der, err := r.issuer.IssueFromCSR(b.Bytes)
	if err != nil {
		return Certificate{}, invalid("certificateSigningRequest", "issuing: %v", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return Certificate{}, fmt.Errorf("lab issuer returned a bad certificate: %w", err)
	}
	var out Certificate
	err = r.do(func(now time.Time) error {
		cert, err := r.addCertLocked("CreateCertificateFromCsr (fleet provisioning)", c, "", StatusPendingActivation, CertificateModeDefault, now)
		if err != nil {
			return err
		}
		out = *cert
		return nil
	})
	return out, err
}
