package setup

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/protocol"
)

// readObject reads an object of the bucket; a missing one is nil, nil.
func readObject(ctx context.Context, s3c *s3.Client, bucket, key string) ([]byte, error) {
	out, err := s3c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		if c := code(err); c == "NoSuchKey" || c == "NotFound" {
			return nil, nil
		}
		return nil, fmt.Errorf("setup: reading s3://%s/%s: %w", bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, fleet.MaxCRL+1))
	if err != nil {
		return nil, fmt.Errorf("setup: reading s3://%s/%s: %w", bucket, key, err)
	}
	return b, nil
}

// ensureDenyList creates the empty deny list when there is none (the
// functions read it on every check; see fleet.DenyListKey).
func ensureDenyList(ctx context.Context, s3c *s3.Client, bucket string) error {
	old, err := readObject(ctx, s3c, bucket, fleet.DenyListKey)
	if err != nil || old != nil {
		return err
	}
	body := []byte(`{"devices":{}}`)
	_, err = s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(fleet.DenyListKey), Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))), IfNoneMatch: aws.String("*")})
	if err != nil && code(err) != "PreconditionFailed" {
		return fmt.Errorf("setup: creating the deny list s3://%s/%s: %w", bucket, fleet.DenyListKey, err)
	}
	return nil
}

// mergeTrust returns the CA bundle with o.CACert added (kept in place when it
// is there already) and, when o.CRL is set, the CRL object with o.CACert's
// CRL replaced by o.CRL and the other CAs' CRLs kept. crl is nil when there
// is no CRL to upload.
func mergeTrust(ctx context.Context, s3c *s3.Client, o Options) (bundle, crl []byte, err error) {
	if err := ensureDenyList(ctx, s3c, o.Bucket); err != nil {
		return nil, nil, err
	}
	old, err := readObject(ctx, s3c, o.Bucket, o.CAKey)
	if err != nil {
		return nil, nil, err
	}
	var cas []*x509.Certificate
	if old != nil {
		if cas, err = fleet.ParseCABundle(old); err != nil {
			return nil, nil, fmt.Errorf("setup: the CA bundle s3://%s/%s in the bucket: %w (fix or delete it)", o.Bucket, o.CAKey, err)
		}
	}
	found := false
	for _, c := range cas {
		found = found || c.Equal(o.CACert)
	}
	if !found {
		cas = append(cas, o.CACert)
	}
	bundle = protocol.EncodeChain(cas)
	if o.CRL == nil {
		return bundle, nil, nil
	}
	oldCRL, err := readObject(ctx, s3c, o.Bucket, o.CRLKey)
	if err != nil {
		return nil, nil, err
	}
	return bundle, mergeCRLs(oldCRL, cas, o.CACert, o.CRL), nil
}

// mergeCRLs keeps the CRLs of oldCRL signed by another trusted CA than ca
// (a CRL of no trusted CA, or unreadable, is dropped) and adds newCRL, as
// PEM blocks.
func mergeCRLs(oldCRL []byte, cas []*x509.Certificate, ca *x509.Certificate, newCRL []byte) []byte {
	var out bytes.Buffer
	if oldCRL != nil {
		if crls, err := fleet.ParseCRLs(oldCRL); err == nil {
			for _, rl := range crls {
				for _, c := range cas {
					if c != ca && !c.Equal(ca) && rl.CheckSignatureFrom(c) == nil {
						pem.Encode(&out, &pem.Block{Type: "X509 CRL", Bytes: rl.Raw})
						break
					}
				}
			}
		}
	}
	rl, _ := fleet.ParseCRLs(newCRL) // validated by Run
	pem.Encode(&out, &pem.Block{Type: "X509 CRL", Bytes: rl[0].Raw})
	return out.Bytes()
}

// RetireResult says what RetireCA changed.
type RetireResult struct {
	CACertificateID string `json:"caCertificateId"`
	Deactivated     bool   `json:"deactivated"`
	RemainingCAs    int    `json:"remainingCAs"`
}

// RetireCA ends a factory CA's trust (the end of a CA rollover, or a
// contract manufacturer dropped): AWS IoT's CA becomes INACTIVE with
// auto-registration off, so no new device certificate of it is registered
// (https://docs.aws.amazon.com/iot/latest/apireference/API_UpdateCACertificate.html),
// and it leaves the bundle the functions trust (with its CRL). Devices
// already rotated keep working: their operational certificates are AWS's.
// The last CA cannot be retired.
func RetireCA(ctx context.Context, iotc *iot.Client, s3c *s3.Client, bucket string, ca *x509.Certificate) (RetireResult, error) {
	res := RetireResult{CACertificateID: protocol.CertificateID(ca.Raw)}
	old, err := readObject(ctx, s3c, bucket, fleet.DefaultCAKey)
	if err != nil {
		return res, err
	}
	if old == nil {
		return res, fmt.Errorf("setup: no CA bundle at s3://%s/%s", bucket, fleet.DefaultCAKey)
	}
	cas, err := fleet.ParseCABundle(old)
	if err != nil {
		return res, fmt.Errorf("setup: the CA bundle s3://%s/%s: %w", bucket, fleet.DefaultCAKey, err)
	}
	var keep []*x509.Certificate
	for _, c := range cas {
		if !c.Equal(ca) {
			keep = append(keep, c)
		}
	}
	if len(keep) == len(cas) {
		return res, fmt.Errorf("setup: CA %q (%s) is not in the trusted bundle s3://%s/%s", ca.Subject.String(), res.CACertificateID, bucket, fleet.DefaultCAKey)
	}
	if len(keep) == 0 {
		return res, errors.New("setup: refusing to retire the last trusted factory CA (register its successor first: bootcert-admin cloud setup --ca-cert NEW)")
	}
	res.RemainingCAs = len(keep)
	_, err = iotc.UpdateCACertificate(ctx, &iot.UpdateCACertificateInput{CertificateId: aws.String(res.CACertificateID), NewStatus: types.CACertificateStatusInactive, NewAutoRegistrationStatus: types.AutoRegistrationStatusDisable})
	switch {
	case err == nil:
		res.Deactivated = true
	case code(err) == "ResourceNotFoundException":
	default:
		return res, fmt.Errorf("setup: deactivating CA %s: %w", res.CACertificateID, err)
	}
	bundle := protocol.EncodeChain(keep)
	if _, err := s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(fleet.DefaultCAKey), Body: bytes.NewReader(bundle), ContentLength: aws.Int64(int64(len(bundle)))}); err != nil {
		return res, fmt.Errorf("setup: writing s3://%s/%s: %w", bucket, fleet.DefaultCAKey, err)
	}
	if oldCRL, err := readObject(ctx, s3c, bucket, fleet.DefaultCRLKey); err == nil && oldCRL != nil {
		var out bytes.Buffer
		if crls, err := fleet.ParseCRLs(oldCRL); err == nil {
			for _, rl := range crls {
				for _, c := range keep {
					if rl.CheckSignatureFrom(c) == nil {
						pem.Encode(&out, &pem.Block{Type: "X509 CRL", Bytes: rl.Raw})
						break
					}
				}
			}
		}
		var err error
		if out.Len() == 0 {
			_, err = s3c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(fleet.DefaultCRLKey)})
		} else {
			_, err = s3c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(fleet.DefaultCRLKey), Body: bytes.NewReader(out.Bytes()), ContentLength: aws.Int64(int64(out.Len()))})
		}
		if err != nil {
			return res, fmt.Errorf("setup: writing s3://%s/%s: %w", bucket, fleet.DefaultCRLKey, err)
		}
	}
	return res, nil
}
