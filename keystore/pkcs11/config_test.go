package pkcs11

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/keystore"
)

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	pinFile := filepath.Join(dir, "pin")
	os.WriteFile(pinFile, []byte("s3cret-PIN\n"), 0o600)
	crlfFile := filepath.Join(dir, "pin-crlf")
	os.WriteFile(crlfFile, []byte("s3cret-PIN\r\n"), 0o600)
	emptyFile := filepath.Join(dir, "empty")
	os.WriteFile(emptyFile, []byte("\n"), 0o600)
	const mod = "?module-path=/usr/lib/softhsm/libsofthsm2.so"
	t.Setenv(ModuleEnv, "")

	ok := []struct {
		name  string
		uri   string
		check func(*config) bool
	}{
		{"ok/label", "pkcs11:token=bootcert;object=op-3" + mod + "&pin-value=1234", func(c *config) bool {
			return c.token == "bootcert" && string(c.label) == "op-3" && len(c.id) == 0 && c.pin == "1234" && c.module == "/usr/lib/softhsm/libsofthsm2.so"
		}},
		{"ok/id-bytes", "pkcs11:token=bootcert;id=%00%01%ff" + mod + "&pin-value=1234", func(c *config) bool {
			return bytes.Equal(c.id, []byte{0, 1, 0xff}) && len(c.label) == 0
		}},
		{"ok/pin-source-file", "pkcs11:token=t;object=k" + mod + "&pin-source=file:" + pinFile, func(c *config) bool {
			return c.pin == "s3cret-PIN" && strings.Contains(c.pinFrom, pinFile)
		}},
		{"ok/pin-source-file-url", "pkcs11:token=t;object=k" + mod + "&pin-source=file://" + pinFile, func(c *config) bool { return c.pin == "s3cret-PIN" }},
		{"ok/pin-source-path", "pkcs11:token=t;object=k" + mod + "&pin-source=" + crlfFile, func(c *config) bool { return c.pin == "s3cret-PIN" }},
		{"ok/slot-only", "pkcs11:slot-id=7;object=k" + mod + "&pin-value=1", func(c *config) bool { return c.slot != nil && *c.slot == 7 && c.token == "" }},
		{"ok/slot-and-token", "pkcs11:token=t;slot-id=7;object=k" + mod + "&pin-value=1", func(c *config) bool { return *c.slot == 7 && c.token == "t" }},
		{"ok/type-private", "pkcs11:token=t;object=k;type=private" + mod + "&pin-value=1", func(c *config) bool { return true }},
		{"ok/escaped-label", "pkcs11:token=my%20token;object=a%3Bb" + mod + "&pin-value=1", func(c *config) bool { return c.token == "my token" && string(c.label) == "a;b" }},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			u, err := keystore.ParseURI(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			c, err := parseConfig(u)
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			if !tc.check(c) {
				// never print c.pin
				t.Fatalf("config: token %q slot %v label %q id %x module %q pin from %q", c.token, c.slot, c.label, c.id, c.module, c.pinFrom)
			}
		})
	}

	fail := []struct {
		name string
		uri  string
		part string // URIError.Part, or "" for a non-URI error
		want string
	}{
		{"fail/no-token", "pkcs11:object=k" + mod + "&pin-value=1234", "attribute token", "missing"},
		{"fail/no-object", "pkcs11:token=t" + mod + "&pin-value=1234", "attribute object", "missing"},
		{"fail/no-module", "pkcs11:token=t;object=k?pin-value=1234", "query attribute module-path", ModuleEnv},
		{"fail/relative-module", "pkcs11:token=t;object=k?module-path=libsofthsm2.so&pin-value=1234", "query attribute module-path", "absolute"},
		{"fail/no-pin", "pkcs11:token=t;object=k" + mod, "query attribute pin-source", "missing"},
		{"fail/pin-value-and-source", "pkcs11:token=t;object=k" + mod + "&pin-value=1234&pin-source=file:" + pinFile, "query attribute pin-value", "conflicts"},
		{"fail/empty-pin-value", "pkcs11:token=t;object=k" + mod + "&pin-value=", "query attribute pin-value", "empty"},
		{"fail/pin-source-scheme", "pkcs11:token=t;object=k" + mod + "&pin-source=env:PIN", "query attribute pin-source", "file:"},
		{"fail/pin-source-relative", "pkcs11:token=t;object=k" + mod + "&pin-source=file:pin", "query attribute pin-source", "absolute"},
		{"fail/pin-file-missing", "pkcs11:token=t;object=k" + mod + "&pin-source=file:" + filepath.Join(dir, "nope"), "", "nope"},
		{"fail/pin-file-empty", "pkcs11:token=t;object=k" + mod + "&pin-source=file:" + emptyFile, "", "empty"},
		{"fail/pin-file-dir", "pkcs11:token=t;object=k" + mod + "&pin-source=file:" + dir, "", "not a regular file"},
		{"fail/bad-slot", "pkcs11:slot-id=seven;object=k" + mod + "&pin-value=1", "attribute slot-id", "decimal"},
		{"fail/negative-slot", "pkcs11:slot-id=-1;object=k" + mod + "&pin-value=1", "attribute slot-id", "decimal"},
		{"fail/huge-slot", "pkcs11:slot-id=99999999999;object=k" + mod + "&pin-value=1", "attribute slot-id", "decimal"},
		{"fail/type-public", "pkcs11:token=t;object=k;type=public" + mod + "&pin-value=1", "attribute type", "private"},
		{"fail/unknown-path-attr", "pkcs11:token=t;object=k;serial=abcd" + mod + "&pin-value=1", "attribute serial", "unknown"},
		{"fail/unknown-query-attr", "pkcs11:token=t;object=k" + mod + "&pin-value=1&max-sessions=3", "query attribute max-sessions", "unknown"},
		{"fail/module-in-path", "pkcs11:token=t;object=k;module-path=/x.so?pin-value=1", "attribute module-path", "after '?'"},
		{"fail/pin-in-path", "pkcs11:token=t;object=k;pin-value=1234" + mod, "attribute pin-value", "after '?'"},
		{"fail/token-in-query", "pkcs11:object=k" + mod + "&token=t&pin-value=1", "query attribute token", "before '?'"},
		{"fail/wrong-scheme", "tpm:device=sim;blob=/x", "scheme", "pkcs11"},
	}
	for _, tc := range fail {
		t.Run(tc.name, func(t *testing.T) {
			u, err := keystore.ParseURI(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			_, err = parseConfig(u)
			if err == nil {
				t.Fatal("parseConfig succeeded")
			}
			var ue *keystore.URIError
			if tc.part != "" {
				if !errors.As(err, &ue) || ue.Part != tc.part {
					t.Fatalf("err = %v, want a URIError about %q", err, tc.part)
				}
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to contain %q", err, tc.want)
			}
			for _, secret := range []string{"1234", "s3cret-PIN"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error leaks a PIN: %q", err)
				}
			}
		})
	}

	t.Run("ok/module-from-env", func(t *testing.T) {
		t.Setenv(ModuleEnv, "/opt/hsm/lib.so")
		u, _ := keystore.ParseURI("pkcs11:token=t;object=k?pin-value=1")
		c, err := parseConfig(u)
		if err != nil || c.module != "/opt/hsm/lib.so" {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("fail/relative-module-from-env", func(t *testing.T) {
		t.Setenv(ModuleEnv, "lib.so")
		u, _ := keystore.ParseURI("pkcs11:token=t;object=k?pin-value=1")
		_, err := parseConfig(u)
		if err == nil || !strings.Contains(err.Error(), ModuleEnv) {
			t.Fatalf("err = %v", err)
		}
	})
}
