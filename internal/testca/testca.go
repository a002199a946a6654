// Package testca is the one test PKI of bootcert's tests: root and
// intermediate certificate authorities, leaf certificates for a given public
// key or a fresh one, CRLs, CSRs, allow lists and PEM helpers. Every function
// takes the test and fails it instead of returning an error.
//
// Defaults: ECDSA P-256 keys, random 120-bit serial numbers, validity from
// one hour before "now" (time.Now, or the time given with At) to ten years
// after it for a CA and 24 hours after it for a leaf; a CA has key usage
// CertSign|CRLSign|DigitalSignature, a leaf DigitalSignature with the
// ClientAuth extended key usage. Options change any of it:
//
//	root := testca.New(t, "factory CA", testca.At(t0))
//	sub := root.Intermediate(t, "line 3 CA")
//	cert := sub.Issue(t, "gw-0001", key.Public(), testca.Valid(nb, na))
//	leaf := root.NewLeaf(t, "localhost", testca.Server())
//	crl := root.CRL(t, t0, cert)
package testca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/csv"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// Default validity lengths, counted from "now".
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 24 * time.Hour
	// Backdate is how long before "now" certificates become valid, so that
	// small clock differences between processes do not matter.
	Backdate = time.Hour
)

// PEM block types.
const (
	CertificateType = "CERTIFICATE"
	PrivateKeyType  = "PRIVATE KEY" // PKCS#8
	CSRType         = "CERTIFICATE REQUEST"
	CRLType         = "X509 CRL"
)

// CA is a certificate authority: a root (Parent nil) or an intermediate.
type CA struct {
	Cert   *x509.Certificate
	Key    crypto.Signer
	PEM    []byte // Cert in PEM
	Parent *CA    // the issuing CA; nil for a root

	at time.Time // the "now" of At, inherited by what the CA issues
}

// Leaf is an end-entity certificate with its private key.
type Leaf struct {
	CN      string
	Cert    *x509.Certificate
	DER     []byte
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte // PKCS#8
	// CertID is the AWS IoT certificate ID: the lower-hex SHA-256 of DER.
	CertID string
	Issuer *CA
}

// Option changes a certificate before it is signed.
type Option func(*settings)

type settings struct {
	at                  time.Time
	notBefore, notAfter time.Time
	ku                  *x509.KeyUsage
	eku                 []x509.ExtKeyUsage
	ekuSet              bool
	dns                 []string
	ips                 []net.IP
	key                 crypto.Signer
	serial              *big.Int
	org                 []string
	maxPathLen          *int
	edits               []func(*x509.Certificate)
}

// At makes "now" t for the default validity (t-Backdate to t+CAValidity or
// t+LeafValidity). A CA made At(t) issues around t too unless told otherwise.
func At(t time.Time) Option { return func(s *settings) { s.at = t } }

// Valid sets the validity period exactly.
func Valid(notBefore, notAfter time.Time) Option {
	return func(s *settings) { s.notBefore, s.notAfter = notBefore, notAfter }
}

// KeyUsage sets the key usage and the extended key usages exactly (none when
// eku is empty).
func KeyUsage(ku x509.KeyUsage, eku ...x509.ExtKeyUsage) Option {
	return func(s *settings) { s.ku, s.eku, s.ekuSet = &ku, eku, true }
}

// Server makes a TLS server certificate (ServerAuth) for the given host
// names and IP addresses; with none, for localhost and 127.0.0.1.
func Server(hosts ...string) Option {
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1"}
	}
	return func(s *settings) {
		s.eku, s.ekuSet = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, true
		SANs(hosts...)(s)
	}
}

// SANs adds subject alternative names: IP addresses for what parses as one,
// DNS names for the rest.
func SANs(hosts ...string) Option {
	return func(s *settings) {
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				s.ips = append(s.ips, ip)
			} else {
				s.dns = append(s.dns, h)
			}
		}
	}
}

// WithKey uses key for the new CA or leaf instead of a fresh P-256 key
// (New, Intermediate, NewLeaf; Issue takes the public key as an argument).
func WithKey(key crypto.Signer) Option { return func(s *settings) { s.key = key } }

// Serial sets the serial number.
func Serial(n int64) Option { return func(s *settings) { s.serial = big.NewInt(n) } }

// Org sets the subject's organisation.
func Org(names ...string) Option { return func(s *settings) { s.org = names } }

// MaxPathLen limits the CAs below a CA (0: none, it may issue leaves only).
func MaxPathLen(n int) Option { return func(s *settings) { s.maxPathLen = &n } }

// Template edits the certificate template last, after every other option,
// for certificates the options do not make (a CA without CertSign, an empty
// subject, an odd extension).
func Template(edit func(*x509.Certificate)) Option {
	return func(s *settings) { s.edits = append(s.edits, edit) }
}

func apply(inherit time.Time, opts []Option) *settings {
	s := &settings{at: inherit}
	for _, o := range opts {
		o(s)
	}
	return s
}

func (s *settings) now() time.Time {
	if s.at.IsZero() {
		return time.Now()
	}
	return s.at
}

func (s *settings) template(cn string, ca bool) *x509.Certificate {
	now := s.now()
	validity := LeafValidity
	if ca {
		validity = CAValidity
	}
	tmpl := &x509.Certificate{
		SerialNumber: s.serial,
		Subject:      pkix.Name{CommonName: cn, Organization: s.org},
		NotBefore:    now.Add(-Backdate),
		NotAfter:     now.Add(validity),
		DNSNames:     s.dns,
		IPAddresses:  s.ips,
	}
	if !s.notBefore.IsZero() {
		tmpl.NotBefore = s.notBefore
	}
	if !s.notAfter.IsZero() {
		tmpl.NotAfter = s.notAfter
	}
	if ca {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
		if s.maxPathLen != nil {
			tmpl.MaxPathLen = *s.maxPathLen
			tmpl.MaxPathLenZero = *s.maxPathLen == 0
		}
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if s.ku != nil {
		tmpl.KeyUsage = *s.ku
	}
	if s.ekuSet {
		tmpl.ExtKeyUsage = s.eku
	}
	return tmpl
}

// sign fills the serial when unset, applies the edits and signs tmpl with
// parent (self-signed when parent is nil).
func sign(t testing.TB, s *settings, tmpl *x509.Certificate, pub crypto.PublicKey, self crypto.Signer, parent *CA) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = NewSerial(t)
	}
	for _, e := range s.edits {
		e(tmpl)
	}
	issuer, key := tmpl, self
	if parent != nil {
		issuer, key = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, key)
	if err != nil {
		t.Fatalf("testca: signing %q: %v", tmpl.Subject.CommonName, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testca: parsing %q: %v", tmpl.Subject.CommonName, err)
	}
	return c
}

// NewSerial is a random positive 120-bit serial number.
func NewSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// New makes a self-signed root CA with subject CN cn.
func New(t testing.TB, cn string, opts ...Option) *CA {
	t.Helper()
	s := apply(time.Time{}, opts)
	key := s.key
	if key == nil {
		key = ECKey(t, nil)
	}
	c := sign(t, s, s.template(cn, true), key.Public(), key, nil)
	return &CA{Cert: c, Key: key, PEM: PEM(c), at: s.at}
}

// Intermediate makes a CA signed by ca.
func (ca *CA) Intermediate(t testing.TB, cn string, opts ...Option) *CA {
	t.Helper()
	s := apply(ca.at, opts)
	key := s.key
	if key == nil {
		key = ECKey(t, nil)
	}
	c := sign(t, s, s.template(cn, true), key.Public(), nil, ca)
	return &CA{Cert: c, Key: key, PEM: PEM(c), Parent: ca, at: s.at}
}

// Issue signs a leaf certificate with subject CN cn for pub (a key held
// elsewhere: a TPM, a token, a test's own key).
func (ca *CA) Issue(t testing.TB, cn string, pub crypto.PublicKey, opts ...Option) *x509.Certificate {
	t.Helper()
	s := apply(ca.at, opts)
	return sign(t, s, s.template(cn, false), pub, nil, ca)
}

// NewLeaf makes a key (P-256 unless WithKey) and a leaf certificate for it.
func (ca *CA) NewLeaf(t testing.TB, cn string, opts ...Option) *Leaf {
	t.Helper()
	s := apply(ca.at, opts)
	key := s.key
	if key == nil {
		key = ECKey(t, nil)
	}
	c := sign(t, s, s.template(cn, false), key.Public(), nil, ca)
	return &Leaf{
		CN: cn, Cert: c, DER: c.Raw, Key: key,
		CertPEM: PEM(c), KeyPEM: KeyPEM(t, key),
		CertID: protocol.CertificateID(c.Raw), Issuer: ca,
	}
}

// Server issues a TLS server certificate for localhost and 127.0.0.1 and
// writes it and its key as server.pem and server.key into dir.
func (ca *CA) Server(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	return ca.NewLeaf(t, "localhost", Server()).Files(t, dir, "server")
}

// Root is the root CA above ca (ca itself for a root).
func (ca *CA) Root() *CA {
	for ca.Parent != nil {
		ca = ca.Parent
	}
	return ca
}

// Chain is ca and the CAs above it, root last.
func (ca *CA) Chain() []*x509.Certificate {
	var chain []*x509.Certificate
	for c := ca; c != nil; c = c.Parent {
		chain = append(chain, c.Cert)
	}
	return chain
}

// Pool is a certificate pool with ca's root, for x509.VerifyOptions.Roots or
// tls.Config.RootCAs / ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root().Cert)
	return p
}

// Intermediates is a pool of the CAs between ca's root and a leaf ca
// issues (ca included unless it is the root).
func (ca *CA) Intermediates() *x509.CertPool {
	p := x509.NewCertPool()
	for c := ca; c.Parent != nil; c = c.Parent {
		p.AddCert(c.Cert)
	}
	return p
}

// Verify checks that cert chains to ca's root through ca for the given
// extended key usages (any when none), at cert's mid-validity.
func (ca *CA) Verify(cert *x509.Certificate, eku ...x509.ExtKeyUsage) error {
	if len(eku) == 0 {
		eku = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	}
	mid := cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
	_, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: ca.Intermediates(), CurrentTime: mid, KeyUsages: eku})
	return err
}

// CRL is a DER CRL signed by ca with thisUpdate now, nextUpdate 30 days
// later and number now.Unix(), revoking the given certificates at now.
func (ca *CA) CRL(t testing.TB, now time.Time, revoked ...*x509.Certificate) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, c := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: now})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(now.Unix()), ThisUpdate: now, NextUpdate: now.Add(30 * 24 * time.Hour),
		RevokedCertificateEntries: entries,
	}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatalf("testca: CRL of %q: %v", ca.Cert.Subject.CommonName, err)
	}
	return der
}

// Files writes the certificate (with the intermediates between it and the
// root, for a TLS peer) and the PKCS#8 key into dir as name.crt and
// name.key, mode 0600, and returns their paths.
func (l *Leaf) Files(t testing.TB, dir, name string) (certPath, keyPath string) {
	t.Helper()
	certPath = filepath.Join(dir, name+".crt")
	keyPath = filepath.Join(dir, name+".key")
	WriteFile(t, certPath, l.ChainPEM())
	WriteFile(t, keyPath, l.KeyPEM)
	return certPath, keyPath
}

// ChainPEM is the certificate followed by the intermediates above it (not
// the root).
func (l *Leaf) ChainPEM() []byte {
	var b bytes.Buffer
	b.Write(l.CertPEM)
	for c := l.Issuer; c != nil && c.Parent != nil; c = c.Parent {
		b.Write(c.PEM)
	}
	return b.Bytes()
}

// TLS is the leaf as a tls.Certificate, intermediates included.
func (l *Leaf) TLS() tls.Certificate {
	tc := tls.Certificate{Certificate: [][]byte{l.DER}, PrivateKey: l.Key, Leaf: l.Cert}
	for c := l.Issuer; c != nil && c.Parent != nil; c = c.Parent {
		tc.Certificate = append(tc.Certificate, c.Cert.Raw)
	}
	return tc
}

// ECKey makes an ECDSA key on curve (P-256 when nil).
func ECKey(t testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	if curve == nil {
		curve = elliptic.P256()
	}
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// RSAKey makes an RSA key of the given size (1024 for negative tests).
func RSAKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Request is a parsed CSR with subject CN cn signed by key (a fresh P-256
// key when nil).
func Request(t testing.TB, cn string, key crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	r, err := x509.ParseCertificateRequest(DER(CSR(t, cn, key)))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// CSR is a PEM CSR with subject CN cn signed by key (a fresh P-256 key when
// nil).
func CSR(t testing.TB, cn string, key crypto.Signer) []byte {
	t.Helper()
	if key == nil {
		key = ECKey(t, nil)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatalf("testca: CSR for %q: %v", cn, err)
	}
	return EncodePEM(CSRType, der)
}

// CorruptSignature flips a bit in the signature (the last bytes of the DER)
// of the first PEM block of data, keeping its type.
func CorruptSignature(t testing.TB, data []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(data)
	if blk == nil || len(blk.Bytes) < 3 {
		t.Fatal("testca: CorruptSignature: no PEM block")
	}
	der := bytes.Clone(blk.Bytes)
	der[len(der)-3] ^= 0x01
	return EncodePEM(blk.Type, der)
}

// AllowList renders a factory allow list (manifest CSV) with its header.
func AllowList(t testing.TB, entries ...manifest.Entry) []byte {
	t.Helper()
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.Write(manifest.Header)
	for _, e := range entries {
		w.Write(e.Record())
	}
	w.Flush()
	if err := w.Error(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// PEM encodes a certificate.
func PEM(c *x509.Certificate) []byte { return EncodePEM(CertificateType, c.Raw) }

// EncodePEM encodes one PEM block.
func EncodePEM(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// KeyPEM encodes a private key as PKCS#8 PEM.
func KeyPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testca: marshalling %T: %v", key, err)
	}
	return EncodePEM(PrivateKeyType, der)
}

// DER is the content of the first PEM block of data, nil when there is none.
func DER(data []byte) []byte {
	blk, _ := pem.Decode(data)
	if blk == nil {
		return nil
	}
	return blk.Bytes
}

// WritePEM writes one PEM block to path, mode 0600.
func WritePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	WriteFile(t, path, EncodePEM(typ, der))
}

// WriteFile writes data to path, mode 0600.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
