// Package pki holds the lab's certificate authorities, persisted in the lab's
// data directory:
//
//   - the server CA and the TLS server certificate of the lab's listeners
//     (valid for localhost, 127.0.0.1 and ::1); its CA certificate is written
//     to DIR/server-ca.pem for clients to trust;
//   - the issuing CA that signs certificates for CreateCertificateFromCsr,
//     shaped like AWS IoT's own issuer.
//
// Keys are ECDSA P-256 in PKCS#8 PEM files, mode 0600, under DIR/pki/.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/internal/clock"
)

// File names under the data directory.
const (
	ServerCAFile = "server-ca.pem" // in DIR itself, for clients
	subdir       = "pki"
)

// AWSNotAfter is the expiry AWS IoT gives the certificates it issues
// (CreateKeysAndCertificate / CreateCertificateFromCsr certificates are valid
// until 2049-12-31 23:59:59 UTC; their subject is "CN=AWS IoT Certificate",
// https://docs.aws.amazon.com/iot/latest/apireference/API_CreateKeysAndCertificate.html
// "AWS IoT issues a default subject name for the certificate (for example,
// AWS IoT Certificate)").
var AWSNotAfter = time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC)

// PKI is the lab's CAs.
type PKI struct {
	dir   string
	clock clock.Clock

	serverCA   *x509.Certificate
	serverCert tls.Certificate
	issuer     *x509.Certificate
	issuerKey  crypto.Signer
}

// Load loads the CAs from DIR/pki, creating what is missing, and writes
// DIR/server-ca.pem. clock may be nil.
func Load(dir string, clk clock.Clock) (*PKI, error) {
	if clk == nil {
		clk = clock.Real{}
	}
	p := &PKI{dir: dir, clock: clk}
	pd := filepath.Join(dir, subdir)
	if err := os.MkdirAll(pd, 0o700); err != nil {
		return nil, fmt.Errorf("lab pki: %w", err)
	}
	now := clk.Now()
	caCert, caKey, err := p.loadOrCreate("server-ca", func(key crypto.Signer) (*x509.Certificate, error) {
		return selfSigned(key, pkix.Name{Organization: []string{"bootcert lab"}, CommonName: "bootcert lab server CA"}, now, now.AddDate(10, 0, 0))
	}, nil, nil)
	if err != nil {
		return nil, err
	}
	p.serverCA = caCert
	srv, srvKey, err := p.loadOrCreate("server", func(key crypto.Signer) (*x509.Certificate, error) {
		tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{Organization: []string{"bootcert lab"}, CommonName: "localhost"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(2, 0, 0),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}}
		return sign(tmpl, key.Public(), caCert, caKey)
	}, caCert, &now)
	if err != nil {
		return nil, err
	}
	p.serverCert = tls.Certificate{Certificate: [][]byte{srv.Raw, caCert.Raw}, PrivateKey: srvKey, Leaf: srv}
	p.issuer, p.issuerKey, err = p.loadOrCreate("issuing-ca", func(key crypto.Signer) (*x509.Certificate, error) {
		// Shaped like AWS IoT's issuer name of the certificates it signs.
		return selfSigned(key, pkix.Name{CommonName: "bootcert lab issuing CA", OrganizationalUnit: []string{"Amazon Web Services"},
			Organization: []string{"Amazon.com Inc."}, Locality: []string{"Seattle"}, Province: []string{"Washington"}, Country: []string{"US"}},
			now, AWSNotAfter.AddDate(1, 0, 0))
	}, nil, nil)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, ServerCAFile), p.ServerCAPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("lab pki: %w", err)
	}
	return p, nil
}

// loadOrCreate loads NAME.pem and NAME.key, or creates them with mk. A
// server certificate no longer valid at *now or not signed by parent is made
// again.
func (p *PKI) loadOrCreate(name string, mk func(crypto.Signer) (*x509.Certificate, error), parent *x509.Certificate, now *time.Time) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(p.dir, subdir, name+".pem")
	keyPath := filepath.Join(p.dir, subdir, name+".key")
	cert, key, err := loadPair(certPath, keyPath)
	switch {
	case err == nil:
		stale := parent != nil && (cert.CheckSignatureFrom(parent) != nil || now.After(cert.NotAfter.Add(-24*time.Hour)))
		if !stale {
			return cert, key, nil
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("lab pki: %w (remove %s to start over)", err, filepath.Join(p.dir, subdir))
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	cert, err = mk(k)
	if err != nil {
		return nil, nil, fmt.Errorf("lab pki: creating %s: %w", name, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	if err := atomicfile.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, nil, fmt.Errorf("lab pki: %w", err)
	}
	if err := atomicfile.WriteFile(certPath, pemCert(cert.Raw), 0o644); err != nil {
		return nil, nil, fmt.Errorf("lab pki: %w", err)
	}
	return cert, k, nil
}

func loadPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	b, _ := pem.Decode(cb)
	if b == nil {
		return nil, nil, fmt.Errorf("%s: no PEM certificate", certPath)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	b, _ = pem.Decode(kb)
	if b == nil {
		return nil, nil, fmt.Errorf("%s: no PEM key", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not a signing key", keyPath)
	}
	return cert, s, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 159))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

func selfSigned(key crypto.Signer, name pkix.Name, from, to time.Time) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: name, NotBefore: from.Add(-time.Hour), NotAfter: to,
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
	return sign(tmpl, key.Public(), tmpl, key)
}

func sign(tmpl *x509.Certificate, pub crypto.PublicKey, parent *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ServerCAPEM is the PEM of the CA of the lab's TLS server certificate.
func (p *PKI) ServerCAPEM() []byte { return pemCert(p.serverCA.Raw) }

// ServerCAPool is a pool with the server CA, for clients.
func (p *PKI) ServerCAPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.serverCA)
	return pool
}

// ServerCertificate is the lab's TLS server certificate (with its chain).
func (p *PKI) ServerCertificate() tls.Certificate { return p.serverCert }

// ServerTLSConfig returns a new TLS config serving the lab's certificate.
func (p *PKI) ServerTLSConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.serverCert}, MinVersion: tls.VersionTLS12}
}

// IssuingCA is the CA that signs CreateCertificateFromCsr certificates; the
// broker trusts it for device connections.
func (p *PKI) IssuingCA() *x509.Certificate { return p.issuer }

// IssuingCAPEM is its PEM.
func (p *PKI) IssuingCAPEM() []byte { return pemCert(p.issuer.Raw) }

// ErrBadCSR is returned for CSRs AWS would refuse.
var ErrBadCSR = errors.New("bad CSR")

// IssueFromCSR signs a certificate for the CSR like AWS IoT does: subject
// "CN=AWS IoT Certificate" (the CSR's subject is not copied), TLS client and
// server auth, valid from now until 2049-12-31 23:59:59 UTC, random serial.
// The key must be RSA of at least 2048 bits or ECDSA P-256, P-384 or P-521
// (https://docs.aws.amazon.com/iot/latest/apireference/API_CreateCertificateFromCsr.html).
func (p *PKI) IssueFromCSR(csrDER []byte) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA key of %d bits, at least 2048 needed", ErrBadCSR, k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
		default:
			return nil, fmt.Errorf("%w: curve %s not allowed", ErrBadCSR, k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("%w: key type %T not allowed (RSA >= 2048, ECDSA P-256/P-384/P-521)", ErrBadCSR, csr.PublicKey)
	}
	now := p.clock.Now()
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "AWS IoT Certificate"},
		NotBefore: now.Add(-time.Minute).UTC(), NotAfter: AWSNotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.issuer, csr.PublicKey, p.issuerKey)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	return der, nil
}
