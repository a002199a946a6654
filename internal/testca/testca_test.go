package testca_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

var t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func TestRoot(t *testing.T) {
	ca := testca.New(t, "root", testca.At(t0))
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.Subject.CommonName != "root" || len(c.SubjectKeyId) == 0 {
		t.Fatalf("root: IsCA=%v BC=%v CN=%q SKI=%x", c.IsCA, c.BasicConstraintsValid, c.Subject.CommonName, c.SubjectKeyId)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature {
		t.Fatalf("root key usage %v", c.KeyUsage)
	}
	if !c.NotBefore.Equal(t0.Add(-testca.Backdate)) || !c.NotAfter.Equal(t0.Add(testca.CAValidity)) {
		t.Fatalf("root validity %v..%v, want around %v", c.NotBefore, c.NotAfter, t0)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Fatalf("root is not self-signed: %v", err)
	}
	if ca.Parent != nil || ca.Root() != ca || len(ca.Chain()) != 1 {
		t.Fatal("a root has no parent")
	}
	if !bytes.Equal(testca.DER(ca.PEM), c.Raw) {
		t.Fatal("PEM does not hold the certificate")
	}
	if _, ok := ca.Key.(*ecdsa.PrivateKey); !ok || c.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("default key %T, want ECDSA P-256", ca.Key)
	}
}

func TestIssueChains(t *testing.T) {
	root := testca.New(t, "root")
	sub := root.Intermediate(t, "sub", testca.MaxPathLen(0))
	if sub.Parent != root || sub.Root() != root || len(sub.Chain()) != 2 || sub.Chain()[1] != root.Cert {
		t.Fatal("intermediate links")
	}
	if !sub.Cert.MaxPathLenZero || sub.Cert.CheckSignatureFrom(root.Cert) != nil {
		t.Fatal("intermediate: MaxPathLen 0 / signed by root")
	}
	key := testca.ECKey(t, elliptic.P384())
	nb, na := t0, t0.Add(90*24*time.Hour)
	c := sub.Issue(t, "gw-0001", key.Public(), testca.Valid(nb, na))
	if c.Subject.CommonName != "gw-0001" || !c.NotBefore.Equal(nb) || !c.NotAfter.Equal(na) || c.IsCA {
		t.Fatalf("leaf: CN=%q %v..%v IsCA=%v", c.Subject.CommonName, c.NotBefore, c.NotAfter, c.IsCA)
	}
	if !key.PublicKey.Equal(c.PublicKey) {
		t.Fatal("leaf is not for the given key")
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature || len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("leaf usage %v %v", c.KeyUsage, c.ExtKeyUsage)
	}
	if err := sub.Verify(c, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("leaf does not chain to the root: %v", err)
	}
	if err := sub.Verify(c, x509.ExtKeyUsageServerAuth); err == nil {
		t.Fatal("a client certificate verified for server auth")
	}
	if err := testca.New(t, "other").Verify(c); err == nil {
		t.Fatal("leaf verified against a foreign root")
	}
	// MaxPathLen(0) is enforced by verifiers: a CA below sub is rejected.
	subsub := sub.Intermediate(t, "too deep")
	if err := subsub.Verify(subsub.Issue(t, "x", key.Public())); err == nil {
		t.Fatal("a chain through a MaxPathLen 0 CA verified")
	}
}

func TestInheritsAt(t *testing.T) {
	ca := testca.New(t, "root", testca.At(t0))
	l := ca.NewLeaf(t, "dev")
	if !l.Cert.NotBefore.Equal(t0.Add(-testca.Backdate)) || !l.Cert.NotAfter.Equal(t0.Add(testca.LeafValidity)) {
		t.Fatalf("leaf of a CA At(t0): %v..%v", l.Cert.NotBefore, l.Cert.NotAfter)
	}
	t1 := t0.Add(48 * time.Hour)
	l = ca.NewLeaf(t, "dev", testca.At(t1))
	if !l.Cert.NotBefore.Equal(t1.Add(-testca.Backdate)) {
		t.Fatalf("At on the leaf: NotBefore %v", l.Cert.NotBefore)
	}
	now := time.Now()
	l = testca.New(t, "real").NewLeaf(t, "dev")
	if l.Cert.NotBefore.After(now) || l.Cert.NotAfter.Before(now.Add(testca.LeafValidity-time.Minute)) {
		t.Fatalf("default validity %v..%v around %v", l.Cert.NotBefore, l.Cert.NotAfter, now)
	}
}

func TestOptions(t *testing.T) {
	ca := testca.New(t, "rsa root", testca.WithKey(testca.RSAKey(t, 2048)), testca.Org("bootcert test"), testca.Serial(7))
	if ca.Cert.PublicKeyAlgorithm != x509.RSA || ca.Cert.SerialNumber.Int64() != 7 || ca.Cert.Subject.Organization[0] != "bootcert test" {
		t.Fatalf("RSA CA: %v serial %v O=%v", ca.Cert.PublicKeyAlgorithm, ca.Cert.SerialNumber, ca.Cert.Subject.Organization)
	}
	c := ca.Issue(t, "signer", testca.ECKey(t, nil).Public(), testca.KeyUsage(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment))
	if c.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment || len(c.ExtKeyUsage) != 0 {
		t.Fatalf("KeyUsage: %v %v", c.KeyUsage, c.ExtKeyUsage)
	}
	if c.SignatureAlgorithm != x509.SHA256WithRSA {
		t.Fatalf("signed with %v by an RSA CA", c.SignatureAlgorithm)
	}
	c = ca.Issue(t, "edited", testca.ECKey(t, nil).Public(), testca.Template(func(c *x509.Certificate) { c.Subject.CommonName = "" }))
	if c.Subject.CommonName != "" {
		t.Fatal("Template edit not applied last")
	}
	a, b := ca.NewLeaf(t, "a"), ca.NewLeaf(t, "b")
	if a.Cert.SerialNumber.Cmp(b.Cert.SerialNumber) == 0 || a.Cert.SerialNumber.Sign() <= 0 {
		t.Fatalf("serials %v %v: want distinct and positive", a.Cert.SerialNumber, b.Cert.SerialNumber)
	}
	k := testca.ECKey(t, nil)
	if l := ca.NewLeaf(t, "own key", testca.WithKey(k)); l.Key != k || !k.PublicKey.Equal(l.Cert.PublicKey) {
		t.Fatal("NewLeaf WithKey")
	}
}

func TestLeafFilesAndTLS(t *testing.T) {
	root := testca.New(t, "root")
	sub := root.Intermediate(t, "sub")
	srv := sub.NewLeaf(t, "localhost", testca.Server())
	if len(srv.Cert.DNSNames) != 1 || srv.Cert.DNSNames[0] != "localhost" || len(srv.Cert.IPAddresses) != 1 || !srv.Cert.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("server SANs %v %v", srv.Cert.DNSNames, srv.Cert.IPAddresses)
	}
	sum := sha256.Sum256(srv.DER)
	if srv.CertID != hex.EncodeToString(sum[:]) || srv.CertID != protocol.CertificateID(srv.DER) || srv.CN != "localhost" {
		t.Fatalf("CertID %s", srv.CertID)
	}
	dir := t.TempDir()
	certFile, keyFile := srv.Files(t, dir, "server")
	for _, p := range []string{certFile, keyFile} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v", p, err, st.Mode())
		}
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("the written files are not a key pair: %v", err)
	}
	if len(pair.Certificate) != 2 {
		t.Fatalf("certificate file holds %d certificates, want leaf + intermediate", len(pair.Certificate))
	}

	// A real handshake, both sides authenticated, over loopback.
	cli := sub.NewLeaf(t, "gw-1")
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srv.TLS()}, ClientCAs: root.Pool(), ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			got <- err.Error()
			return
		}
		got <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: root.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{cli.TLS()}})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.Close()
	if cn := <-got; cn != "gw-1" {
		t.Fatalf("server saw %q, want gw-1", cn)
	}

	// Server writes server.crt/server.key for localhost.
	cf, kf := root.Server(t, t.TempDir())
	if _, err := tls.LoadX509KeyPair(cf, kf); err != nil {
		t.Fatalf("Server files: %v", err)
	}
}

func TestCRL(t *testing.T) {
	ca := testca.New(t, "root", testca.At(t0))
	bad, good := ca.NewLeaf(t, "bad"), ca.NewLeaf(t, "good")
	crl, err := x509.ParseRevocationList(ca.CRL(t, t0, bad.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.Cert); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(bad.Cert.SerialNumber) != 0 {
		t.Fatalf("revoked %v", crl.RevokedCertificateEntries)
	}
	if !crl.ThisUpdate.Equal(t0) || !crl.NextUpdate.After(t0) || crl.Number.Int64() != t0.Unix() {
		t.Fatalf("CRL times %v %v number %v", crl.ThisUpdate, crl.NextUpdate, crl.Number)
	}

	// openssl agrees: the revoked certificate fails, the other passes.
	testenv.Require(t, "openssl")
	dir := t.TempDir()
	testca.WriteFile(t, filepath.Join(dir, "ca.pem"), ca.PEM)
	testca.WritePEM(t, filepath.Join(dir, "crl.pem"), testca.CRLType, ca.CRL(t, t0, bad.Cert))
	verify := func(l *testca.Leaf) (string, error) {
		p := filepath.Join(dir, l.CN+".pem")
		testca.WriteFile(t, p, l.CertPEM)
		out, err := exec.Command("openssl", "verify", "-crl_check", "-CAfile", filepath.Join(dir, "ca.pem"), "-CRLfile", filepath.Join(dir, "crl.pem"), "-attime", strconv.FormatInt(t0.Add(time.Minute).Unix(), 10), p).CombinedOutput()
		return string(out), err
	}
	if out, err := verify(good); err != nil {
		t.Fatalf("openssl verify good: %v\n%s", err, out)
	}
	if out, err := verify(bad); err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("openssl verify revoked: %v\n%s", err, out)
	}
}

func TestCSR(t *testing.T) {
	key := testca.ECKey(t, nil)
	p := testca.CSR(t, "gw-9", key)
	r, err := x509.ParseCertificateRequest(testca.DER(p))
	if err != nil || r.CheckSignature() != nil || r.Subject.CommonName != "gw-9" || !key.PublicKey.Equal(r.PublicKey) {
		t.Fatalf("CSR: %v", err)
	}
	if r := testca.Request(t, "gw-10", nil); r.Subject.CommonName != "gw-10" || r.CheckSignature() != nil {
		t.Fatal("Request")
	}
	bad := testca.CorruptSignature(t, p)
	r, err = x509.ParseCertificateRequest(testca.DER(bad))
	if err != nil {
		t.Fatalf("corrupted CSR does not parse: %v", err)
	}
	if r.CheckSignature() == nil {
		t.Fatal("CorruptSignature left the signature valid")
	}
	rk := testca.RSAKey(t, 1024)
	if r := testca.Request(t, "weak", rk); r.PublicKey.(*rsa.PublicKey).N.BitLen() != 1024 {
		t.Fatal("RSAKey size")
	}
	if testca.DER([]byte("not pem")) != nil {
		t.Fatal("DER of non-PEM")
	}
}

func TestAllowList(t *testing.T) {
	ca := testca.New(t, "factory")
	dev := ca.NewLeaf(t, "gw-1")
	data := testca.AllowList(t, manifest.Entry{DeviceID: "gw-1", BootstrapSHA256: dev.CertID, FinalCSR: testca.DER(testca.CSR(t, "gw-1", nil))}, manifest.Entry{DeviceID: "gw-2"})
	l, err := manifest.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("AllowList does not parse: %v\n%s", err, data)
	}
	e, ok := l.Lookup("gw-1")
	if l.Len() != 2 || !ok || e.BootstrapSHA256 != dev.CertID || len(e.FinalCSR) == 0 {
		t.Fatalf("parsed %+v", l.Entries())
	}
}

func TestKeyPEM(t *testing.T) {
	k := testca.ECKey(t, nil)
	got, err := x509.ParsePKCS8PrivateKey(testca.DER(testca.KeyPEM(t, k)))
	if err != nil || !k.Equal(got) {
		t.Fatalf("KeyPEM round trip: %v", err)
	}
	var ve x509.UnknownAuthorityError
	if err := testca.New(t, "a").Verify(testca.New(t, "b").NewLeaf(t, "x").Cert); !errors.As(err, &ve) {
		t.Fatalf("foreign leaf: %v", err)
	}
}
