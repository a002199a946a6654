package engine

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// ErrBadCertificate is wrapped by every reason a delivered certificate is
// refused before use.
var ErrBadCertificate = errors.New("certificate refused")

// ErrLocation is wrapped when a location URL may not be fetched.
var ErrLocation = errors.New("certificate location refused")

// ClockSkew is how far a certificate's NotBefore may be ahead of the device
// clock: a certificate issued just now by a CA whose clock is a little ahead
// is not refused.
const ClockSkew = 5 * time.Minute

// AWSIssuedCN is the subject AWS IoT gives the certificates it issues.
const AWSIssuedCN = "AWS IoT Certificate"

// VerifyOptions are the checks a new certificate must pass.
type VerifyOptions struct {
	Thing        string
	IssuerSHA256 []string // optional pins
	Now          time.Time
}

// VerifyCertificate checks a delivered chain against the staged key: the
// leaf's public key is the staged key, it is valid now, its CN is the thing
// name, and (when pinned) its issuer is one of the pins. The first
// certificate is the leaf.
func VerifyCertificate(chain []*x509.Certificate, staged crypto.PublicKey, o VerifyOptions) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: no certificate", ErrBadCertificate)
	}
	leaf := chain[0]
	want, err := keystore.Fingerprint(staged)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadCertificate, err)
	}
	got, err := keystore.Fingerprint(leaf.PublicKey)
	if err != nil || got != want {
		return fmt.Errorf("%w: its public key is not the staged key (certificate for another key)", ErrBadCertificate)
	}
	if o.Now.Add(ClockSkew).Before(leaf.NotBefore) {
		return fmt.Errorf("%w: not valid before %s (check the device clock)", ErrBadCertificate, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if !o.Now.Before(leaf.NotAfter) {
		return fmt.Errorf("%w: expired at %s", ErrBadCertificate, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	// AWS IoT's CreateCertificateFromCsr does not copy the CSR's subject: its
	// certificates say CN=AWS IoT Certificate. Such a certificate is bound to
	// the device by the key match above; any other CN must be the thing name.
	if cn := leaf.Subject.CommonName; cn != o.Thing && cn != AWSIssuedCN {
		return fmt.Errorf("%w: subject CN %q is not the thing name %q", ErrBadCertificate, cn, o.Thing)
	}
	if len(o.IssuerSHA256) > 0 {
		ok := false
		for _, c := range chain[1:] {
			if leaf.CheckSignatureFrom(c) != nil {
				continue
			}
			der := sha256.Sum256(c.Raw)
			spki := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			for _, pin := range o.IssuerSHA256 {
				if pin == hex.EncodeToString(der[:]) || pin == hex.EncodeToString(spki[:]) {
					ok = true
				}
			}
		}
		if !ok {
			return fmt.Errorf("%w: issuer does not match verify.issuer_sha256 (the reply must include the issuing CA certificate)", ErrBadCertificate)
		}
	}
	return nil
}

// ParseCertificatePEM decodes a delivered certificate chain.
func ParseCertificatePEM(p []byte) ([]*x509.Certificate, error) {
	chain, err := protocol.ParseChain(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCertificate, err)
	}
	return chain, nil
}

// HTTPFetcher fetches locations over HTTPS from allowed hosts only.
type HTTPFetcher struct {
	AllowedHosts []string
	RootCAs      *x509.CertPool // nil: system roots
	Timeout      time.Duration
	MaxSize      int64
}

// CheckLocation says whether a URL may be fetched, without printing its
// query (presigned URLs carry credentials there).
func CheckLocation(raw string, allowed []string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: not a URL", ErrLocation)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("%w: scheme %q is not https", ErrLocation, u.Scheme)
	}
	host := u.Hostname()
	for _, h := range allowed {
		if strings.EqualFold(h, host) {
			return u, nil
		}
	}
	return nil, fmt.Errorf("%w: host %q is not in verify.location_hosts", ErrLocation, host)
}

// Redact strips the query of a URL for logs.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery = ""
	u.User = nil
	u.Fragment = ""
	return u.String()
}

// Fetch downloads a location.
func (f *HTTPFetcher) Fetch(ctx context.Context, raw string) ([]byte, error) {
	u, err := CheckLocation(raw, f.AllowedHosts)
	if err != nil {
		return nil, err
	}
	max := f.MaxSize
	if max <= 0 {
		max = 64 << 10
	}
	to := f.Timeout
	if to <= 0 {
		to = 30 * time.Second
	}
	client := &http.Client{
		Timeout:   to,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.RootCAs, MinVersion: tls.VersionTLS12}, Proxy: nil},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if _, err := CheckLocation(req.URL.String(), f.AllowedHosts); err != nil {
				return err
			}
			if len(via) > 3 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", Redact(raw), err)
	}
	resp, err := client.Do(req)
	if err != nil {
		// url.Error prints the URL with its query: strip it
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("fetching %s: %w", Redact(raw), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching %s: HTTP %s", Redact(raw), resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", Redact(raw), err)
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("fetching %s: larger than %d bytes", Redact(raw), max)
	}
	return data, nil
}
