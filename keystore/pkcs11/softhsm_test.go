//go:build cgo

package pkcs11_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/csr"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

const (
	tokenLabel  = "bootcert-test"
	token2Label = "second-token" // only ever opened with a wrong PIN (not a prefix of tokenLabel: pkcs11-tool matches label prefixes)
	userPIN     = "UserPin-4711"
	soPIN       = "SoPin-0815"
	wrongPIN    = "WrongPin-9999"
)

var (
	hsm      *testenv.SoftHSM
	setupErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bootcert-softhsm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// SOFTHSM2_CONF must be set before the first C_Initialize: this is the
	// only place the module gets its configuration in this test binary.
	sh, err := testenv.SetupSoftHSM(dir, tokenLabel, userPIN, soPIN)
	if err == nil {
		cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", token2Label, "--pin", userPIN, "--so-pin", soPIN)
		if out, cerr := cmd.CombinedOutput(); cerr != nil {
			err = fmt.Errorf("softhsm2-util --init-token %s: %v: %s", token2Label, cerr, out)
		}
	}
	if err != nil {
		setupErr = err
	} else {
		hsm = sh
	}
	code := m.Run()
	pkcs11.CloseAll()
	os.RemoveAll(dir)
	os.Exit(code)
}

func need(t testing.TB) {
	t.Helper()
	if setupErr != nil {
		testenv.Missing(t, "SoftHSM2: "+setupErr.Error())
	}
}

// names makes labels and ids unique per test run, so that -count=N works on
// the one token of this test binary.
type names struct{ tag, idHex, idPct string }

func fresh(t testing.TB) names {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	n := names{tag: hex.EncodeToString(b), idHex: hex.EncodeToString(b)}
	for _, c := range b {
		n.idPct += fmt.Sprintf("%%%02x", c)
	}
	return n
}

// label is a unique object label.
func (n names) label(object string) string { return object + "-" + n.tag }

// id is a unique CKA_ID in hex for pkcs11-tool.
func (n names) id(hexID string) string { return n.idHex + hexID }

// uri names a key on the test token; extra is appended to the path part,
// with its id made unique.
func (n names) uri(object, extra string) string {
	if object != "" {
		object = n.label(object)
	}
	return uri(object, strings.ReplaceAll(extra, ";id=", ";id="+n.idPct))
}

// uri names a key on the test token; extra is appended to the path part.
func uri(object, extra string) string {
	u := "pkcs11:token=" + tokenLabel
	if object != "" {
		u += ";object=" + url.PathEscape(object)
	}
	return u + extra + "?module-path=" + hsm.Module + "&pin-value=" + userPIN
}

func checkSign(t testing.TB, s crypto.Signer) {
	t.Helper()
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384} {
		hh := h.New()
		hh.Write([]byte("bootcert"))
		digest := hh.Sum(nil)
		sig, err := s.Sign(rand.Reader, digest, h)
		if err != nil {
			t.Fatalf("Sign(%v): %v", h, err)
		}
		switch pub := s.Public().(type) {
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(pub, digest, sig) {
				t.Fatalf("ECDSA %v signature does not verify", h)
			}
		case *rsa.PublicKey:
			if err := rsa.VerifyPKCS1v15(pub, h, digest, sig); err != nil {
				t.Fatalf("RSA PKCS#1 v1.5 %v signature does not verify: %v", h, err)
			}
			pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
			sig, err := s.Sign(rand.Reader, digest, pss)
			if err != nil {
				t.Fatalf("Sign(PSS %v): %v", h, err)
			}
			if err := rsa.VerifyPSS(pub, h, digest, sig, pss); err != nil {
				t.Fatalf("RSA-PSS %v signature does not verify: %v", h, err)
			}
		default:
			t.Fatalf("public key type %T", pub)
		}
	}
}

func checkCSR(t testing.TB, s crypto.Signer, cn string) {
	t.Helper()
	testenv.Require(t, "openssl")
	der, err := csr.Create(s, cn, cn+".example.com")
	if err != nil {
		t.Fatalf("csr.Create: %v", err)
	}
	p := filepath.Join(t.TempDir(), "req.pem")
	os.WriteFile(p, csr.EncodePEM(der), 0o600)
	out, err := exec.Command("openssl", "req", "-verify", "-noout", "-in", p).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
}

func samePublic(t testing.TB, a, b crypto.Signer) {
	t.Helper()
	if !a.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(b.Public()) {
		t.Fatal("public keys differ")
	}
}

// listObjects runs pkcs11-tool --list-objects on the test token.
func listObjects(t testing.TB) string {
	t.Helper()
	testenv.Require(t, "pkcs11-tool")
	cmd := exec.Command("pkcs11-tool", "--module", hsm.Module, "--token-label", tokenLabel, "--login", "--pin", userPIN, "--list-objects")
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+hsm.Conf)
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), userPIN) {
		t.Fatal("pkcs11-tool output contains the PIN")
	}
	if err != nil {
		t.Fatalf("pkcs11-tool --list-objects: %v\n%s", err, out)
	}
	return string(out)
}

// privateKeyBlock returns pkcs11-tool's description of the private key with
// the given label: the "Private Key Object" line and its indented lines.
func privateKeyBlock(listing, label string) string {
	var blocks []string
	for _, line := range strings.Split(listing, "\n") {
		if line == "" {
			continue
		}
		if !strings.HasPrefix(line, " ") || len(blocks) == 0 {
			blocks = append(blocks, line)
			continue
		}
		blocks[len(blocks)-1] += "\n" + line
	}
	for _, b := range blocks {
		if strings.HasPrefix(b, "Private Key Object") && strings.Contains(b+"\n", "label:      "+label+"\n") {
			return b
		}
	}
	return ""
}

func TestGenerate(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	tests := []struct {
		name string
		alg  keystore.Algorithm
	}{
		{"ok/p256", keystore.ECDSAP256},
		{"ok/p384", keystore.ECDSAP384},
		{"ok/rsa2048", keystore.RSA2048},
		{"ok/rsa3072", keystore.RSA3072},
	}
	listing := ""
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			label := "gen-" + string(tc.alg)
			s, err := keystore.Generate(ctx, n.uri(label, ""), tc.alg)
			if err != nil {
				t.Fatalf("Generate: %v", err)
			}
			if got, _ := keystore.AlgorithmOf(s.Public()); got != tc.alg {
				t.Fatalf("algorithm %v, want %v", got, tc.alg)
			}
			checkSign(t, s)
			o, err := keystore.Open(ctx, n.uri(label, ""))
			if err != nil {
				t.Fatalf("Open by label: %v", err)
			}
			samePublic(t, s, o)
			checkSign(t, o)
			checkCSR(t, o, "gw-"+string(tc.alg))

			info, err := keystore.Describe(ctx, n.uri(label, ""))
			if err != nil {
				t.Fatalf("Describe: %v", err)
			}
			fp, _ := keystore.Fingerprint(s.Public())
			if info.Backend != "pkcs11" || info.Algorithm != tc.alg || info.Fingerprint != fp || !info.Hardware {
				t.Errorf("Describe = %+v", info)
			}
			for _, a := range []string{"token", "private", "sensitive", "neverExtractable", "alwaysSensitive", "local"} {
				if !info.Attributes[a] {
					t.Errorf("attribute %s = false, want true (%v)", a, info.Attributes)
				}
			}
			if v, ok := info.Attributes["extractable"]; !ok || v {
				t.Errorf("attribute extractable = %v (present %v), want false", v, ok)
			}
			if strings.Contains(info.URI, userPIN) {
				t.Errorf("Describe URI contains the PIN: %s", info.URI)
			}

			if listing == "" {
				listing = listObjects(t)
			}
			block := privateKeyBlock(listing, n.label(label))
			if block == "" {
				listing = listObjects(t)
				block = privateKeyBlock(listing, n.label(label))
			}
			if block == "" {
				t.Fatalf("pkcs11-tool does not list private key %q:\n%s", label, listing)
			}
			for _, want := range []string{"sensitive", "never extractable", "local"} {
				if !strings.Contains(block, want) {
					t.Errorf("pkcs11-tool: key %q lacks %q:\n%s", label, want, block)
				}
			}
			if strings.Contains(strings.ReplaceAll(block, "never extractable", ""), "extractable") {
				t.Errorf("pkcs11-tool reports key %q extractable:\n%s", label, block)
			}
		})
	}
}

func TestFindByID(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	s, err := keystore.Generate(ctx, n.uri("by-id", ";id=%b0%07%00%ff"), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	for name, u := range map[string]string{
		"ok/id-only":      n.uri("", ";id=%b0%07%00%ff"),
		"ok/label-and-id": n.uri("by-id", ";id=%b0%07%00%ff"),
		"ok/label-only":   n.uri("by-id", ""),
		"ok/type-private": n.uri("by-id", ";type=private"),
	} {
		t.Run(name, func(t *testing.T) {
			o, err := keystore.Open(ctx, u)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			samePublic(t, s, o)
		})
	}
	for name, u := range map[string]string{
		"fail/wrong-id":           n.uri("", ";id=%b0%07"),
		"fail/label-and-other-id": n.uri("by-id", ";id=%01"),
		"fail/other-label":        n.uri("nope", ""),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := keystore.Open(ctx, u)
			if !errors.Is(err, keystore.ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestGenerateRefusesExisting(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	orig, err := keystore.Generate(ctx, n.uri("exists", ";id=%e1"), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	for name, u := range map[string]string{
		"fail/same-label":              n.uri("exists", ""),
		"fail/same-label-other-id":     n.uri("exists", ";id=%e2"),
		"fail/same-id-other-label":     n.uri("exists-2", ";id=%e1"),
		"fail/same-label-other-alg-id": n.uri("exists", ";id=%e3"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := keystore.Generate(ctx, u, keystore.RSA2048)
			if !errors.Is(err, keystore.ErrExists) {
				t.Fatalf("err = %v, want ErrExists", err)
			}
		})
	}
	o, err := keystore.Open(ctx, n.uri("exists", ""))
	if err != nil {
		t.Fatalf("Open after refused Generate: %v", err)
	}
	samePublic(t, orig, o)
	for _, u := range []string{n.uri("exists-2", ""), n.uri("", ";id=%e2"), n.uri("", ";id=%e3")} {
		if _, err := keystore.Open(ctx, u); !errors.Is(err, keystore.ErrNotFound) {
			t.Errorf("a refused Generate left a key behind (%v)", err)
		}
	}
}

func TestDelete(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	u := n.uri("to-delete", "")
	if _, err := keystore.Generate(ctx, u, keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	if err := keystore.Delete(ctx, u); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := keystore.Open(ctx, u); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Open after Delete: %v", err)
	}
	if err := keystore.Delete(ctx, u); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	if strings.Contains(listObjects(t), n.label("to-delete")) {
		t.Fatal("pkcs11-tool still lists an object labelled to-delete")
	}
	// the name can be used again
	if _, err := keystore.Generate(ctx, u, keystore.ECDSAP256); err != nil {
		t.Fatalf("Generate after Delete: %v", err)
	}
}

// Labels are not unique: two key pairs made outside bootcert with one label.
func TestAmbiguousLabel(t *testing.T) {
	need(t)
	n := fresh(t)
	testenv.Require(t, "pkcs11-tool")
	ctx := context.Background()
	for _, id := range []string{"0a01", "0a02"} {
		cmd := exec.Command("pkcs11-tool", "--module", hsm.Module, "--token-label", tokenLabel, "--login", "--pin", userPIN,
			"--keypairgen", "--key-type", "EC:prime256v1", "--label", n.label("dup"), "--id", n.id(id))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pkcs11-tool --keypairgen: %v\n%s", err, out)
		}
	}
	_, err := keystore.Open(ctx, n.uri("dup", ""))
	if !errors.Is(err, pkcs11.ErrAmbiguous) || !strings.Contains(err.Error(), "id=") {
		t.Fatalf("Open of an ambiguous label: %v", err)
	}
	if err := keystore.Delete(ctx, n.uri("dup", "")); !errors.Is(err, pkcs11.ErrAmbiguous) {
		t.Fatalf("Delete of an ambiguous label: %v", err)
	}
	a, err := keystore.Open(ctx, n.uri("dup", ";id=%0a%01"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := keystore.Open(ctx, n.uri("dup", ";id=%0a%02"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Public().(*ecdsa.PublicKey).Equal(b.Public()) {
		t.Fatal("two ids, one key")
	}
	checkSign(t, a)
	// a key made by another tool is found and described
	info, err := keystore.Describe(ctx, n.uri("dup", ";id=%0a%02"))
	if err != nil || info.Algorithm != keystore.ECDSAP256 {
		t.Fatalf("Describe: %+v, %v", info, err)
	}
	if _, err := keystore.Generate(ctx, n.uri("dup", ";id=%0a%03"), keystore.ECDSAP256); !errors.Is(err, keystore.ErrExists) {
		t.Fatalf("Generate over a duplicated label: %v", err)
	}
}

func TestErrors(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	base := "pkcs11:token=" + tokenLabel + ";object=x?pin-value=" + userPIN + "&module-path="
	tests := []struct {
		name     string
		uri      string
		is       error
		contains []string
	}{
		{"fail/missing-module", base + "/nonexistent/libnope.so", pkcs11.ErrModuleNotFound, []string{"/nonexistent/libnope.so"}},
		{"fail/not-a-module", base + "/etc/hostname", pkcs11.ErrModuleNotFound, []string{"/etc/hostname", "cannot be loaded"}},
		{"fail/no-such-token", "pkcs11:token=no-such-token;object=x?module-path=" + hsm.Module + "&pin-value=" + userPIN, pkcs11.ErrTokenNotFound, []string{`"no-such-token"`, tokenLabel}},
		{"fail/wrong-pin", "pkcs11:token=" + token2Label + ";object=x?module-path=" + hsm.Module + "&pin-value=" + wrongPIN, pkcs11.ErrPINRejected, []string{token2Label, "PIN"}},
		{"fail/different-pin-for-open-token", "pkcs11:token=" + tokenLabel + ";object=x?module-path=" + hsm.Module + "&pin-value=" + wrongPIN, nil, []string{tokenLabel, "different PIN"}},
	}
	// make sure the first token is open with the right PIN
	if _, err := keystore.Open(ctx, n.uri("nothing-here", "")); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Open of a missing key: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, op := range []string{"open", "generate"} {
				var err error
				if op == "open" {
					_, err = keystore.Open(ctx, tc.uri)
				} else {
					_, err = keystore.Generate(ctx, tc.uri, keystore.ECDSAP256)
				}
				if err == nil {
					t.Fatalf("%s succeeded", op)
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("%s: err = %v, want %v", op, err, tc.is)
				}
				for _, c := range tc.contains {
					if !strings.Contains(err.Error(), c) {
						t.Errorf("%s: err = %q, want it to contain %q", op, err, c)
					}
				}
				for _, secret := range []string{userPIN, wrongPIN} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("%s: error leaks a PIN: %q", op, err)
					}
				}
			}
		})
	}
	t.Run("fail/unsupported-algorithm", func(t *testing.T) {
		u, _ := keystore.ParseURI(n.uri("alg", ""))
		_, err := pkcs11.Backend{}.Generate(ctx, u, keystore.Algorithm("ed25519"))
		if !errors.Is(err, keystore.ErrUnsupportedAlgorithm) {
			t.Fatalf("err = %v", err)
		}
		if _, err := keystore.Open(ctx, n.uri("alg", "")); !errors.Is(err, keystore.ErrNotFound) {
			t.Fatalf("a key was created: %v", err)
		}
	})
	t.Run("fail/conflicting-slot-id", func(t *testing.T) {
		_, err := keystore.Open(ctx, n.uri("x", ";slot-id=4294967295"))
		if err == nil || !strings.Contains(err.Error(), "slot") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestPINSourceFile(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	pinFile := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pinFile, []byte(userPIN+"\n"), 0o600)
	u := "pkcs11:token=" + tokenLabel + ";object=" + n.label("pin-file") + "?module-path=" + hsm.Module + "&pin-source=file:" + pinFile
	s, err := keystore.Generate(ctx, u, keystore.ECDSAP256)
	if err != nil {
		t.Fatalf("Generate with pin-source: %v", err)
	}
	checkSign(t, s)
	t.Setenv(pkcs11.ModuleEnv, hsm.Module)
	o, err := keystore.Open(ctx, "pkcs11:token="+tokenLabel+";object="+n.label("pin-file")+"?pin-source=file:"+pinFile)
	if err != nil {
		t.Fatalf("Open with module from %s: %v", pkcs11.ModuleEnv, err)
	}
	samePublic(t, s, o)
}

func TestConcurrentUse(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	if _, err := keystore.Generate(ctx, n.uri("concurrent", ""), keystore.ECDSAP256); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := keystore.Open(ctx, n.uri("concurrent", ""))
			if err != nil {
				errs <- err
				return
			}
			for j := 0; j < 20; j++ {
				d := sha256.Sum256([]byte{byte(i), byte(j)})
				sig, err := s.Sign(rand.Reader, d[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
					errs <- errors.New("bad signature")
					return
				}
			}
			// concurrent Generate of distinct names
			if _, err := keystore.Generate(ctx, n.uri(fmt.Sprintf("concurrent-%d", i), ""), keystore.ECDSAP256); err != nil {
				errs <- err
			}
		}(i)
	}
	// and of one name: exactly one wins
	wins := make(chan bool, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := keystore.Generate(ctx, n.uri("race", ""), keystore.ECDSAP256)
			if err != nil && !errors.Is(err, keystore.ErrExists) {
				errs <- err
			}
			wins <- err == nil
		}()
	}
	wg.Wait()
	close(errs)
	close(wins)
	for err := range errs {
		t.Error(err)
	}
	won := 0
	for w := range wins {
		if w {
			won++
		}
	}
	if won != 1 {
		t.Fatalf("%d concurrent Generates of one name succeeded, want 1", won)
	}
}

// slotOf finds a token's slot id with pkcs11-tool -L.
func slotOf(t *testing.T, label string) uint64 {
	t.Helper()
	testenv.Require(t, "pkcs11-tool")
	out, err := exec.Command("pkcs11-tool", "--module", hsm.Module, "-L").CombinedOutput()
	if err != nil {
		t.Fatalf("pkcs11-tool -L: %v\n%s", err, out)
	}
	var slot uint64
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Slot ") {
			// Slot 1 (0x48a24395): SoftHSM slot ID 0x48a24395
			if i, j := strings.Index(line, "(0x"), strings.Index(line, "):"); i > 0 && j > i {
				slot, err = strconv.ParseUint(line[i+3:j], 16, 64)
				if err != nil {
					t.Fatalf("parsing %q: %v", line, err)
				}
			}
		}
		if strings.TrimSpace(line) == "token label        : "+label {
			found = true
			break
		}
	}
	if !found {
		t.Fatalf("pkcs11-tool -L does not list token %q:\n%s", label, out)
	}
	return slot
}

func TestSlotID(t *testing.T) {
	need(t)
	n := fresh(t)
	ctx := context.Background()
	s, err := keystore.Generate(ctx, n.uri("slot", ""), keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	slot := strconv.FormatUint(slotOf(t, tokenLabel), 10)
	other := strconv.FormatUint(slotOf(t, token2Label), 10)
	byID := func(extra string) string {
		return "pkcs11:" + extra + ";object=" + n.label("slot") + "?module-path=" + hsm.Module + "&pin-value=" + userPIN
	}
	for name, u := range map[string]string{
		"ok/slot-only":      byID("slot-id=" + slot),
		"ok/slot-and-token": byID("slot-id=" + slot + ";token=" + tokenLabel),
	} {
		t.Run(name, func(t *testing.T) {
			o, err := keystore.Open(ctx, u)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			samePublic(t, s, o)
		})
	}
	t.Run("fail/slot-and-token-conflict", func(t *testing.T) {
		_, err := keystore.Open(ctx, byID("slot-id="+other+";token="+tokenLabel))
		var ue *keystore.URIError
		if !errors.As(err, &ue) || ue.Part != "attribute slot-id" || !strings.Contains(err.Error(), token2Label) {
			t.Fatalf("err = %v, want a URIError naming slot-id and the token in that slot", err)
		}
	})
}
