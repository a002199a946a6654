package registry

import (
	"time"
)

// CreateProvisioningCertificate issues a certificate for csrPEM as the fleet
// provisioning MQTT API's CreateCertificateFromCsr does: "The new
// certificate has a PENDING_ACTIVATION status. When you call RegisterThing
// to provision a thing with this certificate, the certificate status changes
// to ACTIVE or INACTIVE as described in the template."
// (https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html).
func (r *Registry) CreateProvisioningCertificate(csrPEM string) (Certificate, error) {
	c, err := r.issueFromCSR(csrPEM)
	if err != nil {
		return Certificate{}, err
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
