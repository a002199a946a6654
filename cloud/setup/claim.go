package setup

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/protocol"
)

// DefaultClaimPolicy is the claim policy of cloud/template.yaml.
const DefaultClaimPolicy = "bootcert-claim"

// ClaimOptions say where the claim certificate of fleet provisioning comes
// from: exactly one of CSRPEM (AWS IoT issues it with CreateCertificateFromCsr;
// the claim key stays where the caller made it, e.g. the line's HSM) and
// CertPEM (a certificate you bring, registered with
// RegisterCertificateWithoutCA, "Register a client certificate signed by an
// unregistered CA", https://docs.aws.amazon.com/iot/latest/developerguide/manual-cert-registration.html).
type ClaimOptions struct {
	CSRPEM  []byte
	CertPEM []byte
	Policy  string // default bootcert-claim
}

// ClaimResult is the claim certificate the devices ship with.
type ClaimResult struct {
	CertificateID  string `json:"certificateId"`
	CertificateARN string `json:"certificateArn"`
	// CertificatePEM is written next to the claim key on the devices.
	CertificatePEM string `json:"certificatePem"`
	Created        bool   `json:"created"`
	Policy         string `json:"policy"`
}

// Claim creates or registers the claim certificate (ACTIVE) and attaches
// the claim policy to it. Registering the same certificate again is not an
// error (the policy is attached again, which AWS accepts).
func Claim(ctx context.Context, iotc *iot.Client, o ClaimOptions) (ClaimResult, error) {
	var res ClaimResult
	if err := o.validate(); err != nil {
		return res, err
	}
	if o.Policy == "" {
		o.Policy = DefaultClaimPolicy
	}
	res.Policy = o.Policy
	if o.CSRPEM != nil {
		out, err := iotc.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: aws.String(string(o.CSRPEM)), SetAsActive: true})
		if err != nil {
			return res, fmt.Errorf("setup: CreateCertificateFromCsr for the claim certificate: %w", err)
		}
		res.CertificateID, res.CertificateARN, res.CertificatePEM, res.Created = aws.ToString(out.CertificateId), aws.ToString(out.CertificateArn), aws.ToString(out.CertificatePem), true
	} else {
		chain, _ := protocol.ParseChain(o.CertPEM) // validated
		leafPEM := string(protocol.EncodeChain(chain[:1]))
		out, err := iotc.RegisterCertificateWithoutCA(ctx, &iot.RegisterCertificateWithoutCAInput{CertificatePem: aws.String(leafPEM), Status: types.CertificateStatusActive})
		switch {
		case err == nil:
			res.CertificateID, res.CertificateARN, res.Created = aws.ToString(out.CertificateId), aws.ToString(out.CertificateArn), true
		case code(err) == "ResourceAlreadyExistsException":
			res.CertificateID = protocol.CertificateID(chain[0].Raw)
			d, derr := iotc.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(res.CertificateID)})
			if derr != nil {
				return res, fmt.Errorf("setup: describing the claim certificate %s: %w", res.CertificateID, derr)
			}
			res.CertificateARN = aws.ToString(d.CertificateDescription.CertificateArn)
		default:
			return res, fmt.Errorf("setup: registering the claim certificate: %w", err)
		}
		res.CertificatePEM = leafPEM
	}
	if _, err := iotc.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(o.Policy), Target: aws.String(res.CertificateARN)}); err != nil {
		return res, fmt.Errorf("setup: attaching policy %s to the claim certificate: %w (deploy cloud/template.yaml first)", o.Policy, err)
	}
	return res, nil
}

// validate checks the claim options without touching anything.
func (o ClaimOptions) validate() error {
	if (o.CSRPEM == nil) == (o.CertPEM == nil) {
		return errors.New("setup: claim certificate: give either a CSR (--claim-csr) or a certificate (--claim-cert)")
	}
	if o.CSRPEM != nil {
		b, _ := pem.Decode(o.CSRPEM)
		if b == nil || b.Type != "CERTIFICATE REQUEST" {
			return errors.New("setup: --claim-csr: not a PEM CERTIFICATE REQUEST")
		}
		if _, err := x509.ParseCertificateRequest(b.Bytes); err != nil {
			return fmt.Errorf("setup: --claim-csr: %w", err)
		}
		return nil
	}
	if _, err := protocol.ParseChain(o.CertPEM); err != nil {
		return fmt.Errorf("setup: --claim-cert: %w", err)
	}
	return nil
}
