package tpm

import (
	"bytes"
	"encoding/asn1"
	"strings"

	keyfile "github.com/foxboron/go-tpm-keyfiles"
	"os"
	"path/filepath"
	"testing"

	"github.com/bootcert/bootcert/keystore"
)

// Key URIs come from config files and command lines.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		"tpm:blob=/k.tpmkey",
		"tpm:device=tcp:127.0.0.1:2321;handle=0x81000101",
		"tpm:device=sim;blob=k;srk=0x81000002",
		"tpm:device=tcp:[::1]:2321;blob=/a%20b",
		"tpm:handle=0x80000001",
		"tpm:blob=/k;handle=0x81000101",
		"tpm:device=tcp:h:65535;blob=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := keystore.ParseURI(raw)
		if err != nil {
			return
		}
		k, err := parseSpec(u)
		if err != nil {
			return
		}
		if (k.blob == "") == (k.handle == 0) {
			t.Fatalf("%q: want exactly one of blob and handle, got %q %#x", raw, k.blob, k.handle)
		}
		if k.handle != 0 && (k.handle < persistentFirst || k.handle > persistentLast) {
			t.Fatalf("%q: handle %#x outside the persistent range", raw, k.handle)
		}
		if k.srk < persistentFirst || k.srk > persistentLast || k.srk == k.handle {
			t.Fatalf("%q: bad srk %#x", raw, k.srk)
		}
		if validDevice(k.device) != nil {
			t.Fatalf("%q: invalid device %q accepted", raw, k.device)
		}
	})
}

// Key files are read from disk: a damaged one must give an error, not a
// panic.
func FuzzDecodeKeyFile(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.tpmkey")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("-----BEGIN TSS2 PRIVATE KEY-----\nMAA=\n-----END TSS2 PRIVATE KEY-----\n"))
	f.Add([]byte("not a key"))
	f.Fuzz(func(t *testing.T, data []byte) {
		kf, err := decodeKeyFile("fuzz", data)
		if err == nil && kf == nil {
			t.Fatal("nil key without error")
		}
	})
}

func TestDecodeKeyFile(t *testing.T) {
	p256, err := os.ReadFile("testdata/ecdsa-p256.tpmkey")
	if err != nil {
		t.Fatal(err)
	}
	base, err := keyfile.Decode(p256)
	if err != nil {
		t.Fatal(err)
	}
	// bootcert writes only the bare fields: tpm2-openssl refuses the
	// optional ones (description, policy, secret, authPolicy).
	if base.Description != "" || len(base.Policy) != 0 || len(base.AuthPolicy) != 0 || len(base.Secret.Buffer) != 0 || !base.EmptyAuth {
		t.Fatalf("key file has optional fields: %+v", base)
	}
	reencode := func(oid asn1.ObjectIdentifier, opts ...keyfile.TPMKeyOption) []byte {
		var buf bytes.Buffer
		keyfile.Encode(&buf, keyfile.NewTPMKey(oid, base.Pubkey, base.Privkey, append([]keyfile.TPMKeyOption{keyfile.WithParent(base.Parent)}, opts...)...))
		return buf.Bytes()
	}
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"ok/ecdsa-p256", p256, true},
		{"ok/rsa-2048", mustReadFile(t, "testdata/rsa-2048.tpmkey"), true},
		{"ok/reencoded", reencode(keyfile.OIDLoadableKey), true},
		{"fail/garbage", []byte("garbage"), false},
		{"fail/certificate", []byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"), false},
		{"fail/with-auth", reencode(keyfile.OIDLoadableKey, keyfile.WithUserAuth([]byte("pw"))), false},
		{"fail/sealed", reencode(keyfile.OIDSealedKey), false},
		{"fail/truncated", p256[:len(p256)/2], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeKeyFile("k.tpmkey", tc.data)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "k.tpmkey") {
				t.Fatalf("error does not name the file: %v", err)
			}
		})
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
