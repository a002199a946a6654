package ctl

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/tpm"
	"github.com/bootcert/bootcert/manifest"
)

const tpm2Provider = "/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so"

func tpmURI(sw *testenv.SWTPM, blob string) string {
	return "tpm:device=" + sw.Device() + ";blob=" + blob
}

// Device keys in swtpm, exactly as an operator would type the commands.
func TestFactoryWithSWTPM(t *testing.T) {
	testenv.Require(t, "openssl", "swtpm")
	sw := testenv.StartSWTPM(t)
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	mustCtl(t, "ca", "create", "--out", caDir)
	caKey := "file:" + filepath.Join(caDir, "ca.key")
	caPEM := filepath.Join(caDir, "ca.pem")

	boot := filepath.Join(dir, "boot.tpmkey")
	op := filepath.Join(dir, "op.tpmkey")
	rep := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-tpm-1", tpmURI(sw, boot), "--final-key", tpmURI(sw, op))...))
	if rep.Status != "provisioned" || !rep.Hardware || rep.Backend != "tpm" || rep.FinalCSRSHA256 == "" {
		t.Fatalf("report %+v", rep)
	}
	for _, a := range []string{"fixedTPM", "fixedParent", "sensitiveDataOrigin"} {
		if !rep.Attributes[a] {
			t.Errorf("bootstrap key lacks %s: %v", a, rep.Attributes)
		}
	}
	opensslOK(t, ": OK", "verify", "-CAfile", caPEM, "-purpose", "sslclient", rep.Certificate)
	cert := certOf(t, rep.Certificate)
	if cert.Subject.CommonName != "gw-tpm-1" {
		t.Fatalf("CN %q", cert.Subject.CommonName)
	}

	// The manifest's final CSR is signed by the operational TPM key.
	l, err := manifest.ReadFile(filepath.Join(dir, "manifest.csv"))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := l.Lookup("gw-tpm-1")
	finalCSR := filepath.Join(dir, "final.csr")
	os.WriteFile(finalCSR, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: e.FinalCSR}), 0o644)
	opensslOK(t, "verify OK", "req", "-in", finalCSR, "-noout", "-verify")
	opInfo := decodeJSON[keystore.Info](t, mustCtl(t, "key", "info", "--json", tpmURI(sw, op)))
	req, _ := x509.ParseCertificateRequest(e.FinalCSR)
	if fp, _ := keystore.Fingerprint(req.PublicKey); fp != opInfo.Fingerprint || !opInfo.Hardware {
		t.Fatalf("final CSR key %s, operational key %+v", fp, opInfo)
	}

	// tpm2-openssl reads the TSS2 key file and finds the certified key.
	if _, err := os.Stat(tpm2Provider); err == nil {
		// swtpm serves one client: let go of it first.
		if err := tpm.CloseDevice(sw.Device()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard only
		defer cancel()
		cmd := exec.CommandContext(ctx, "openssl", "pkey", "-provider", "tpm2", "-provider", "default", "-in", boot, "-pubout", "-outform", "DER")
		cmd.Env = append(os.Environ(), "TPM2OPENSSL_TCTI="+sw.TCTI())
		cmd.WaitDelay = 10 * time.Second
		der, err := cmd.Output()
		if err != nil {
			t.Fatalf("tpm2-openssl reading %s: %v", boot, err)
		}
		if sha256hex(der) != rep.KeyFingerprint {
			t.Fatalf("tpm2-openssl sees another public key")
		}
	} else {
		testenv.Missing(t, tpm2Provider+" (tpm2-openssl)")
	}

	// key csr through the TPM
	csrOut := filepath.Join(dir, "boot.csr")
	mustCtl(t, "key", "csr", "--cn", "gw-tpm-1", "--out", csrOut, tpmURI(sw, boot))
	opensslOK(t, "verify OK", "req", "-in", csrOut, "-noout", "-verify")

	// re-run: exists, nothing changes
	before := snapshotDir(t, dir)
	again := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-tpm-1", tpmURI(sw, boot), "--final-key", tpmURI(sw, op))...))
	if again.Status != "exists" || again.BootstrapSHA256 != rep.BootstrapSHA256 || again.FinalCSRSHA256 != rep.FinalCSRSHA256 {
		t.Fatalf("re-run %+v", again)
	}
	sameDir(t, before, snapshotDir(t, dir))

	// an existing TPM key is never overwritten
	_, _, err = runCtl(t, "key", "generate", tpmURI(sw, boot))
	if !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("generate over an existing key: %v", err)
	}
	sameDir(t, before, snapshotDir(t, dir))

	// RSA-2048 in the TPM
	rsa := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-tpm-rsa", tpmURI(sw, filepath.Join(dir, "rsa.tpmkey")), "--alg", "rsa-2048")...))
	if rsa.Algorithm != keystore.RSA2048 {
		t.Fatalf("algorithm %s", rsa.Algorithm)
	}
	opensslOK(t, ": OK", "verify", "-CAfile", caPEM, rsa.Certificate)

	// key delete through the TPM backend
	mustCtl(t, "key", "delete", tpmURI(sw, filepath.Join(dir, "rsa.tpmkey")))
	if _, err := os.Stat(filepath.Join(dir, "rsa.tpmkey")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("key file still there: %v", err)
	}
}

func TestFactoryUnreachableTPM(t *testing.T) {
	dir := t.TempDir()
	mustCtl(t, "ca", "create", "--out", filepath.Join(dir, "ca"))
	caKey := "file:" + filepath.Join(dir, "ca", "ca.key")
	port := testenv.FreePort(t) // nothing listens there
	uri := fmt.Sprintf("tpm:device=tcp:127.0.0.1:%d;blob=%s", port, filepath.Join(dir, "k.tpmkey"))
	for _, args := range [][]string{
		{"key", "generate", uri},
		provisionArgs(dir, caKey, "gw-1", uri),
	} {
		before := snapshotDir(t, dir)
		_, _, err := runCtl(t, args...)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprint(port)) {
			t.Fatalf("%v: error %v should name the TPM address", args[:2], err)
		}
		sameDir(t, before, snapshotDir(t, dir))
	}
}

// go test -run '^$' -bench Provision -benchtime 20x ./ctl
//
// One provision run against swtpm: key generation in the TPM, CSR, CA
// signature (software CA key), certificate and manifest writes.
func BenchmarkProvisionSWTPM(b *testing.B) {
	testenv.Require(b, "swtpm")
	sw := testenv.StartSWTPM(b)
	dir := b.TempDir()
	mustCtl(b, "ca", "create", "--out", filepath.Join(dir, "ca"))
	caKey := "file:" + filepath.Join(dir, "ca", "ca.key")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("gw-%06d", i)
		mustCtl(b, provisionArgs(dir, caKey, id, tpmURI(sw, filepath.Join(dir, id+".tpmkey")))...)
	}
}
