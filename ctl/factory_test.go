package ctl

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/manifest"
)

func opensslOK(t testing.TB, want string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard only
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", args...)
	cmd.WaitDelay = 10 * time.Second // do not wait for a stray holder of the pipes after a kill
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), want) {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func decodeJSON[T any](t testing.TB, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, s)
	}
	return v
}

// provisionArgs are the flags of a provision run on a station directory.
func provisionArgs(dir, caKey, id, key string, extra ...string) []string {
	return append([]string{"provision", "--device-id", id, "--key", key,
		"--cert-out", filepath.Join(dir, id+".pem"), "--ca-cert", filepath.Join(dir, "ca", "ca.pem"),
		"--ca-key", caKey, "--manifest", filepath.Join(dir, "manifest.csv")}, extra...)
}

func TestFactoryWithFileKeys(t *testing.T) {
	testenv.Require(t, "openssl")
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")

	// ca create without --key: DIR/ca.key
	ca := decodeJSON[factory.CAReport](t, mustCtl(t, "ca", "create", "--out", caDir, "--cn", "Test Factory CA", "--days", "30", "--json"))
	caKey := "file:" + filepath.Join(caDir, "ca.key")
	if ca.KeyURI != caKey || !ca.KeyGenerated || ca.Hardware || ca.Subject != "Test Factory CA" {
		t.Fatalf("ca create: %+v", ca)
	}
	opensslOK(t, "CA:TRUE, pathlen:0", "x509", "-in", ca.Certificate, "-noout", "-text")
	if _, _, err := runCtl(t, "ca", "create", "--out", caDir); err == nil || !strings.Contains(err.Error(), "never overwritten") {
		t.Fatalf("second ca create: %v", err)
	}

	// key generate / info / public / csr
	devKey := "file:" + filepath.Join(dir, "k.pem")
	gen := decodeJSON[keystore.Info](t, mustCtl(t, "key", "generate", "--alg", "ecdsa-p384", devKey, "--json"))
	info := decodeJSON[keystore.Info](t, mustCtl(t, "key", "info", devKey, "--json"))
	if gen.Fingerprint == "" || gen.Fingerprint != info.Fingerprint || info.Algorithm != keystore.ECDSAP384 || info.Backend != "file" || info.Hardware {
		t.Fatalf("key info %+v / generate %+v", info, gen)
	}
	human := mustCtl(t, "key", "info", devKey)
	for _, w := range []string{"backend:", "file", "ecdsa-p384", info.Fingerprint, "hardware:", "no"} {
		if !strings.Contains(human, w) {
			t.Errorf("key info output lacks %q:\n%s", w, human)
		}
	}
	pub := mustCtl(t, "key", "public", devKey)
	pubPath := filepath.Join(dir, "pub.pem")
	os.WriteFile(pubPath, []byte(pub), 0o644)
	der, _ := exec.Command("openssl", "pkey", "-pubin", "-in", pubPath, "-outform", "DER").Output()
	if fp := sha256hex(der); fp != info.Fingerprint {
		t.Errorf("fingerprint %s, openssl DER SPKI hashes to %s", info.Fingerprint, fp)
	}
	csrPath := filepath.Join(dir, "k.csr")
	mustCtl(t, "key", "csr", devKey, "--cn", "gw-csr", "--out", csrPath)
	opensslOK(t, "verify OK", "req", "-in", csrPath, "-noout", "-verify")
	opensslOK(t, "CN = gw-csr", "req", "-in", csrPath, "-noout", "-subject", "-nameopt", "oneline")

	// provision: a software key needs --allow-software-key
	args := provisionArgs(dir, caKey, "gw-0001", "file:"+filepath.Join(dir, "gw-0001.key"))
	if _, _, err := runCtl(t, args...); !errors.Is(err, factory.ErrSoftwareKey) {
		t.Fatalf("software key accepted without --allow-software-key: %v", err)
	}
	args = append(args, "--allow-software-key")
	rep := decodeJSON[factory.Report](t, mustCtl(t, args...))
	if rep.Status != "provisioned" || rep.DeviceID != "gw-0001" || rep.BootstrapSHA256 == "" {
		t.Fatalf("report %+v", rep)
	}
	opensslOK(t, ": OK", "verify", "-CAfile", ca.Certificate, rep.Certificate)
	again := decodeJSON[factory.Report](t, mustCtl(t, args...))
	if again.Status != "exists" || again.BootstrapSHA256 != rep.BootstrapSHA256 {
		t.Fatalf("re-run %+v", again)
	}

	// revoke, then the CRL verifies and lists the serial
	crl := filepath.Join(caDir, "crl.pem")
	res := decodeJSON[crlResult](t, mustCtl(t, "ca", "revoke", "--ca-cert", ca.Certificate, "--ca-key", caKey, "--crl", crl, "--cert", rep.Certificate, "--json"))
	if len(res.Revoked) != 1 || res.Revoked[0] != rep.Serial || res.Number != "1" {
		t.Fatalf("revoke %+v", res)
	}
	opensslOK(t, "verify OK", "crl", "-in", crl, "-CAfile", ca.Certificate, "-noout", "-verify")
	out, _ := exec.Command("openssl", "verify", "-crl_check", "-CAfile", ca.Certificate, "-CRLfile", crl, rep.Certificate).CombinedOutput()
	if !strings.Contains(string(out), "revoked") {
		t.Fatalf("openssl does not see the revocation: %s", out)
	}
	res = decodeJSON[crlResult](t, mustCtl(t, "ca", "crl", "--ca-cert", ca.Certificate, "--ca-key", caKey, "--crl", crl, "--json"))
	if res.Number != "2" || res.Total != 1 {
		t.Fatalf("crl refresh %+v", res)
	}

	// key delete
	mustCtl(t, "key", "delete", devKey)
	if _, _, err := runCtl(t, "key", "info", devKey); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("deleted key still there: %v", err)
	}
}

// Stations provisioning at once into one manifest: nothing lost.
func TestProvisionConcurrent(t *testing.T) {
	dir := t.TempDir()
	mustCtl(t, "ca", "create", "--out", filepath.Join(dir, "ca"))
	caKey := "file:" + filepath.Join(dir, "ca", "ca.key")
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("gw-%02d", i)
			_, _, err := runCtl(t, provisionArgs(dir, caKey, id, "file:"+filepath.Join(dir, id+".key"), "--allow-software-key")...)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	l, err := manifest.ReadFile(filepath.Join(dir, "manifest.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if l.Len() != n {
		t.Fatalf("%d devices in the manifest, want %d", l.Len(), n)
	}
	for _, e := range l.Entries() {
		c, err := factory.ReadCertificate(filepath.Join(dir, e.DeviceID+".pem"))
		if err != nil || factory.CertificateID(c) != e.BootstrapSHA256 {
			t.Fatalf("%s: manifest and certificate disagree: %v", e.DeviceID, err)
		}
	}
}

func TestFactoryBadInput(t *testing.T) {
	dir := t.TempDir()
	mustCtl(t, "ca", "create", "--out", filepath.Join(dir, "ca"))
	caKey := "file:" + filepath.Join(dir, "ca", "ca.key")
	existing := "file:" + filepath.Join(dir, "existing.pem")
	mustCtl(t, "key", "generate", existing)
	// a provisioned device, for the re-run case
	mustCtl(t, provisionArgs(dir, caKey, "gw-done", "file:"+filepath.Join(dir, "gw-done.key"), "--allow-software-key")...)

	tests := []struct {
		name   string
		args   []string
		is     error
		substr []string
	}{
		{"fail/generate-existing-key", []string{"key", "generate", existing}, keystore.ErrExists, []string{"existing.pem"}},
		{"fail/bad-uri-attribute", []string{"key", "generate", "tpm:device=tcp:127.0.0.1:1;bob=/x"}, nil, []string{"attribute bob", "known: "}},
		{"fail/bad-uri-scheme", []string{"key", "info", "nope"}, nil, []string{"scheme"}},
		{"fail/relative-file-path", []string{"key", "generate", "file:rel.pem"}, nil, []string{"path", "absolute"}},
		{"fail/unsupported-alg", []string{"key", "generate", "--alg", "ed25519", "file:" + filepath.Join(dir, "x.pem")}, keystore.ErrUnsupportedAlgorithm, []string{"--alg", "ecdsa-p256"}},
		{"fail/missing-pkcs11-module", []string{"key", "info", "pkcs11:token=t;object=o?module-path=/nonexistent/libnope.so&pin-value=Secret-1234"}, nil, []string{"/nonexistent/libnope.so"}},
		{"fail/invalid-device-id", provisionArgs(dir, caKey, "bad/id", "file:"+filepath.Join(dir, "bad.key"), "--allow-software-key"), nil, []string{"--device-id", "not a valid AWS IoT thing name"}},
		{"fail/provision-existing-key", provisionArgs(dir, caKey, "gw-new", existing, "--allow-software-key"), keystore.ErrExists, []string{"never overwritten", "--force"}},
		{"fail/provision-wrong-ca-key", provisionArgs(dir, existing, "gw-new", "file:"+filepath.Join(dir, "new.key"), "--allow-software-key"), factory.ErrKeyMismatch, []string{"--ca-key"}},
		{"fail/provision-unsupported-alg", provisionArgs(dir, caKey, "gw-new", "file:"+filepath.Join(dir, "new.key"), "--allow-software-key", "--alg", "rsa-1024"), keystore.ErrUnsupportedAlgorithm, []string{"--alg"}},
		{"fail/revoke-needs-cert", []string{"ca", "revoke", "--ca-cert", filepath.Join(dir, "ca", "ca.pem"), "--ca-key", caKey, "--crl", filepath.Join(dir, "crl.pem")}, nil, []string{"cert"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := snapshotDir(t, dir)
			out, _, err := runCtl(t, tt.args...)
			if err == nil {
				t.Fatalf("succeeded: %s", out)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("%v is not %v", err, tt.is)
			}
			for _, s := range tt.substr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "Secret-1234") {
				t.Errorf("error shows the PIN: %v", err)
			}
			sameDir(t, before, snapshotDir(t, dir))
		})
	}
	t.Run("ok/re-run-reports-exists", func(t *testing.T) {
		before := snapshotDir(t, dir)
		rep := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-done", "file:"+filepath.Join(dir, "gw-done.key"), "--allow-software-key")...))
		if rep.Status != "exists" {
			t.Fatalf("status %q", rep.Status)
		}
		sameDir(t, before, snapshotDir(t, dir))
	})
}

func sha256hex(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// snapshotDir maps every file under dir to its content.
func snapshotDir(t testing.TB, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, ".lock") {
			b, _ := os.ReadFile(p)
			m[p] = string(b)
		}
		return nil
	})
	return m
}

func sameDir(t testing.TB, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if w, ok := after[k]; !ok {
			t.Errorf("%s removed", k)
		} else if w != v {
			t.Errorf("%s changed", k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s created", k)
		}
	}
}

func certOf(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Split mode: the device makes key and CSR, the station signs.
func TestCASign(t *testing.T) {
	testenv.Require(t, "openssl")
	dir := t.TempDir()
	mustCtl(t, "ca", "create", "--out", filepath.Join(dir, "ca"))
	caKey := "file:" + filepath.Join(dir, "ca", "ca.key")
	caPEM := filepath.Join(dir, "ca", "ca.pem")
	key := "file:" + filepath.Join(dir, "dev.key")
	op := "file:" + filepath.Join(dir, "op.key")
	mustCtl(t, "key", "generate", key)
	mustCtl(t, "key", "generate", op)
	mustCtl(t, "key", "csr", "--cn", "gw-split", "--out", filepath.Join(dir, "dev.csr"), key)
	mustCtl(t, "key", "csr", "--cn", "gw-split", "--out", filepath.Join(dir, "op.csr"), op)
	mustCtl(t, "key", "csr", "--cn", "bad id", "--out", filepath.Join(dir, "bad.csr"), key)
	args := []string{"ca", "sign", "--csr", filepath.Join(dir, "dev.csr"), "--ca-cert", caPEM, "--ca-key", caKey,
		"--cert-out", filepath.Join(dir, "gw-split.pem"), "--manifest", filepath.Join(dir, "manifest.csv"), "--final-csr", filepath.Join(dir, "op.csr"), "--json"}
	res := decodeJSON[factory.SignReport](t, mustCtl(t, args...))
	opensslOK(t, ": OK", "verify", "-CAfile", caPEM, res.Certificate)
	info := decodeJSON[keystore.Info](t, mustCtl(t, "key", "info", "--json", key))
	if res.KeyFingerprint != info.Fingerprint || res.FinalCSRSHA256 == "" {
		t.Fatalf("sign result %+v", res)
	}
	l, err := manifest.ReadFile(filepath.Join(dir, "manifest.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := l.Lookup("gw-split"); !ok || e.BootstrapSHA256 != res.BootstrapSHA256 || len(e.FinalCSR) == 0 {
		t.Fatalf("manifest entry %+v", e)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		substr string
	}{
		// the flags reach factory.Sign (its own tests cover every refusal)
		{"fail/cert-exists", args[:10], "never overwritten"},
		{"fail/already-in-manifest", append(append([]string{}, args[:9]...), filepath.Join(dir, "other.pem"), "--manifest", filepath.Join(dir, "manifest.csv")), "listed twice"},
		{"fail/bad-cn", []string{"ca", "sign", "--csr", filepath.Join(dir, "bad.csr"), "--ca-cert", caPEM, "--ca-key", caKey, "--cert-out", filepath.Join(dir, "bad.pem")}, "not a valid AWS IoT thing name"},
		// what the command itself reads
		{"fail/not-a-csr", []string{"ca", "sign", "--csr", caPEM, "--ca-cert", caPEM, "--ca-key", caKey, "--cert-out", filepath.Join(dir, "x.pem")}, "--csr"},
		{"fail/final-csr-not-a-csr", append(append([]string{}, args[:9]...), filepath.Join(dir, "z.pem"), "--manifest", filepath.Join(dir, "manifest.csv"), "--final-csr", caPEM), "--final-csr: " + caPEM},
		{"fail/ca-key-missing", []string{"ca", "sign", "--csr", filepath.Join(dir, "dev.csr"), "--ca-cert", caPEM, "--ca-key", "file:" + filepath.Join(dir, "nope.key"), "--cert-out", filepath.Join(dir, "y.pem")}, "--ca-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshotDir(t, dir)
			_, _, err := runCtl(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("err = %v, want %q", err, tc.substr)
			}
			sameDir(t, before, snapshotDir(t, dir))
		})
	}
}
