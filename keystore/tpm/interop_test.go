package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
)

// tpm2-openssl reads bootcert's key files: same public key, and its
// signatures verify in Go.
func TestInteropOpenSSL(t *testing.T) {
	testenv.Require(t, "openssl")
	testenv.RequireFile(t, tpm2ProviderPath(t))
	sw := startTPM(t)
	b, _ := newBackend()
	dir := t.TempDir()
	for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
		t.Run("ok/"+string(alg), func(t *testing.T) {
			key := filepath.Join(dir, string(alg)+".pem")
			s := generate(t, b, "tpm:device="+sw.Device()+";blob="+key, alg)
			// swtpm serves one client: release it.
			if err := CloseDevice(sw.Device()); err != nil {
				t.Fatal(err)
			}
			env := append(os.Environ(), "TPM2OPENSSL_TCTI="+sw.TCTI())
			out := runCmd(t, env, "openssl", "pkey", "-provider", "tpm2", "-provider", "default", "-in", key, "-pubout")
			blk, _ := pem.Decode(out)
			if blk == nil {
				t.Fatalf("openssl pkey printed no PEM: %s", out)
			}
			pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if !publicEqual(pub, s.Public()) {
				t.Fatalf("tpm2-openssl reads a different public key from %s", key)
			}
			msg := filepath.Join(dir, "msg")
			os.WriteFile(msg, []byte("signed by tpm2-openssl"), 0o600)
			sigPath := filepath.Join(dir, string(alg)+".sig")
			runCmd(t, env, "openssl", "dgst", "-sha256", "-provider", "tpm2", "-provider", "default",
				"-propquery", "?provider=tpm2", "-sign", key, "-out", sigPath, msg)
			sig, _ := os.ReadFile(sigPath)
			d := sha256.Sum256([]byte("signed by tpm2-openssl"))
			ok := verify(s.Public(), d[:], sig)
			if !ok {
				// openssl may default to PSS for RSA keys from a provider.
				if k, isRSA := s.Public().(*rsa.PublicKey); isRSA {
					ok = rsa.VerifyPSS(k, crypto.SHA256, d[:], sig, nil) == nil
				}
			}
			if !ok {
				t.Fatal("the openssl signature does not verify in Go")
			}
			// And bootcert still signs with it afterwards (device reopened).
			signVerify(t, s)
			CloseDevice(sw.Device())
		})
	}
}

// tpm2-tools reads bootcert's persistent keys.
func TestInteropTPM2Tools(t *testing.T) {
	testenv.Require(t, "tpm2_readpublic", "tpm2_flushcontext")
	sw := startTPM(t)
	b, _ := newBackend()
	const raw = ";handle=0x81000140"
	s := generate(t, b, "tpm:device="+sw.Device()+raw, keystore.ECDSAP256)
	if err := CloseDevice(sw.Device()); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "TPM2TOOLS_TCTI="+sw.TCTI())
	pubPath := filepath.Join(t.TempDir(), "pub.pem")
	runCmd(t, env, "tpm2_readpublic", "-c", "0x81000140", "-f", "pem", "-o", pubPath)
	runCmd(t, env, "tpm2_flushcontext", "-t")
	blk, _ := pem.Decode(mustRead(t, pubPath))
	if blk == nil {
		t.Fatal("tpm2_readpublic wrote no PEM")
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !publicEqual(pub, s.Public()) {
		t.Fatal("tpm2_readpublic shows a different public key")
	}
	info, err := b.Describe(context.Background(), mustURI(t, "tpm:device="+sw.Device()+raw))
	if err != nil || !info.Hardware {
		t.Fatalf("Describe after tpm2-tools: %+v %v", info, err)
	}
}

func runCmd(t *testing.T, env []string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return out
}

// tpm2ProviderPath finds tpm2-openssl's provider module.
func tpm2ProviderPath(t *testing.T) string {
	out, err := exec.Command("openssl", "version", "-m").Output()
	if err == nil {
		// MODULESDIR: "/usr/lib/x86_64-linux-gnu/ossl-modules"
		if i := bytes.IndexByte(out, '"'); i >= 0 {
			if j := bytes.IndexByte(out[i+1:], '"'); j >= 0 {
				return filepath.Join(string(out[i+1:i+1+j]), "tpm2.so")
			}
		}
	}
	return "/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so"
}
