//go:build cgo

package ctl

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

const (
	hsmToken = "factory"
	hsmPIN   = "Station-PIN-2741"
	hsmSOPIN = "Station-SO-9812"
)

var (
	hsmOnce sync.Once
	hsmEnv  *testenv.SoftHSM
	hsmErr  error
)

// softHSM sets up one SoftHSM2 token for the whole test binary, before any
// C_Initialize (the module reads SOFTHSM2_CONF once).
func softHSM(t testing.TB) *testenv.SoftHSM {
	t.Helper()
	hsmOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bootcert-ctl-softhsm-")
		if err != nil {
			hsmErr = err
			return
		}
		testCleanups = append(testCleanups, func() {
			pkcs11.CloseAll()
			os.RemoveAll(dir)
		})
		hsmEnv, hsmErr = testenv.SetupSoftHSM(dir, hsmToken, hsmPIN, hsmSOPIN)
	})
	if hsmErr != nil {
		testenv.Missing(t, "SoftHSM2: "+hsmErr.Error())
	}
	return hsmEnv
}

func hsmURI(h *testenv.SoftHSM, object, pin string) string {
	return "pkcs11:token=" + h.Token + ";object=" + object + "?module-path=" + h.Module + "&pin-value=" + pin
}

func unique(s string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return s + "-" + hex.EncodeToString(b)
}

// The factory CA key in a PKCS#11 token, device keys in swtpm and in the
// token.
func TestFactoryHSMCA(t *testing.T) {
	testenv.Require(t, "openssl", "swtpm")
	h := softHSM(t)
	sw := testenv.StartSWTPM(t)
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	caKey := hsmURI(h, unique("factory-ca"), hsmPIN)

	ca := decodeJSON[factory.CAReport](t, mustCtl(t, "ca", "create", "--out", caDir, "--key", caKey, "--cn", "HSM Factory CA", "--json"))
	if !ca.KeyGenerated || !ca.Hardware || strings.Contains(ca.KeyURI, hsmPIN) {
		t.Fatalf("ca create %+v", ca)
	}
	if _, err := os.Stat(filepath.Join(caDir, "ca.key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("ca.key written although the key is in the HSM")
	}
	info := decodeJSON[keystore.Info](t, mustCtl(t, "key", "info", "--json", caKey))
	if !info.Hardware || !info.Attributes["sensitive"] || !info.Attributes["neverExtractable"] || info.Backend != "pkcs11" {
		t.Fatalf("CA key info %+v", info)
	}
	if human := mustCtl(t, "key", "info", caKey); strings.Contains(human, hsmPIN) {
		t.Fatal("key info prints the PIN")
	}

	// an existing token key is never overwritten: the CA still signs after
	caPub := mustCtl(t, "key", "public", caKey)
	if _, _, err := runCtl(t, "key", "generate", caKey); !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("generate over the CA key: %v", err)
	}
	if got := mustCtl(t, "key", "public", caKey); got != caPub {
		t.Fatal("the CA key changed")
	}

	// device key in the TPM, signed by the HSM CA
	rep := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-hsm-1", tpmURI(sw, filepath.Join(dir, "boot.tpmkey")))...))
	opensslOK(t, ": OK", "verify", "-CAfile", ca.Certificate, rep.Certificate)

	// device key in a PKCS#11 token
	devKey := hsmURI(h, unique("boot"), hsmPIN)
	rep2 := decodeJSON[factory.Report](t, mustCtl(t, provisionArgs(dir, caKey, "gw-hsm-2", devKey, "--alg", "ecdsa-p384")...))
	if !rep2.Hardware || rep2.Backend != "pkcs11" || rep2.Algorithm != keystore.ECDSAP384 || strings.Contains(rep2.KeyURI, hsmPIN) {
		t.Fatalf("report %+v", rep2)
	}
	opensslOK(t, ": OK", "verify", "-CAfile", ca.Certificate, rep2.Certificate)
	if out, _ := pkcs11ToolList(h); out != "" && !strings.Contains(out, "never extractable") {
		t.Errorf("pkcs11-tool does not show the key as never extractable:\n%s", out)
	}

	// a CSR signed inside the token
	csrPath := filepath.Join(dir, "token.csr")
	mustCtl(t, "key", "csr", "--cn", "gw-hsm-2", "--out", csrPath, devKey)
	opensslOK(t, "verify OK", "req", "-in", csrPath, "-noout", "-verify")

	// key delete in the token
	tmp := hsmURI(h, unique("tmp"), hsmPIN)
	mustCtl(t, "key", "generate", tmp)
	mustCtl(t, "key", "delete", tmp)
	if _, _, err := runCtl(t, "key", "info", tmp); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("deleted token key: %v", err)
	}

	// revoke with the HSM CA key
	crl := filepath.Join(caDir, "crl.pem")
	mustCtl(t, "ca", "revoke", "--ca-cert", ca.Certificate, "--ca-key", caKey, "--crl", crl, "--cert", rep.Certificate)
	opensslOK(t, "verify OK", "crl", "-in", crl, "-CAfile", ca.Certificate, "-noout", "-verify")

	// wrong PIN: clear error, no PIN in it, nothing changed
	wrong := hsmURI(h, strings.TrimPrefix(strings.Split(strings.Split(caKey, "object=")[1], "?")[0], ""), "Wrong-PIN-5555")
	for _, args := range [][]string{
		{"key", "info", wrong},
		provisionArgs(dir, wrong, "gw-hsm-3", tpmURI(sw, filepath.Join(dir, "b3.tpmkey"))),
		provisionArgs(dir, caKey, "gw-hsm-4", hsmURI(h, unique("b4"), "Wrong-PIN-5555")),
	} {
		before := snapshotDir(t, dir)
		_, _, err := runCtl(t, args...)
		if err == nil {
			t.Fatalf("%v succeeded with a wrong PIN", args[:2])
		}
		if strings.Contains(err.Error(), "Wrong-PIN-5555") || strings.Contains(err.Error(), hsmPIN) {
			t.Errorf("error shows a PIN: %v", err)
		}
		if !strings.Contains(strings.ToLower(err.Error()), "pin") {
			t.Errorf("error does not say the PIN is wrong: %v", err)
		}
		sameDir(t, before, snapshotDir(t, dir))
	}
}

func pkcs11ToolList(h *testenv.SoftHSM) (string, error) {
	if _, err := exec.LookPath("pkcs11-tool"); err != nil {
		return "", err
	}
	cmd := exec.Command("pkcs11-tool", "--module", h.Module, "--token-label", h.Token, "--login", "--pin", h.PIN, "--list-objects", "--type", "privkey")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+h.Conf)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// go test -run '^$' -bench Provision -benchtime 20x ./ctl
//
// The CA key in SoftHSM2, the device key in swtpm.
func BenchmarkProvisionHSMCA(b *testing.B) {
	testenv.Require(b, "swtpm")
	h := softHSM(b)
	sw := testenv.StartSWTPM(b)
	dir := b.TempDir()
	caKey := hsmURI(h, unique("bench-ca"), hsmPIN)
	mustCtl(b, "ca", "create", "--out", filepath.Join(dir, "ca"), "--key", caKey)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("gw-%06d", i)
		mustCtl(b, provisionArgs(dir, caKey, id, tpmURI(sw, filepath.Join(dir, id+".tpmkey")))...)
	}
}
