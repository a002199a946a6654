package keystore_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/keystore"
)

func TestParseURI(t *testing.T) {
	ok := []struct {
		name   string
		raw    string
		scheme string
		opaque string
		attrs  map[string]string
		query  map[string]string
	}{
		{"ok/pkcs11", "pkcs11:token=bootcert;object=op-3?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/pin",
			"pkcs11", "token=bootcert;object=op-3",
			map[string]string{"token": "bootcert", "object": "op-3"},
			map[string]string{"module-path": "/usr/lib/softhsm/libsofthsm2.so", "pin-source": "file:/etc/bootcert/pin"}},
		{"ok/pkcs11-percent", "pkcs11:token=my%20token;id=%01%ff;object=a%3Bb", "pkcs11", "token=my%20token;id=%01%ff;object=a%3Bb",
			map[string]string{"token": "my token", "id": "\x01\xff", "object": "a;b"}, map[string]string{}},
		{"ok/pkcs11-plus-is-literal", "pkcs11:object=a+b", "pkcs11", "object=a+b", map[string]string{"object": "a+b"}, map[string]string{}},
		{"ok/tpm-blob", "tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-3.tpmkey", "tpm", "device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-3.tpmkey",
			map[string]string{"device": "/dev/tpmrm0", "blob": "/var/lib/bootcert/keys/op-3.tpmkey"}, map[string]string{}},
		{"ok/tpm-tcp-device", "tpm:device=tcp:127.0.0.1:2321;handle=0x81000101", "tpm", "device=tcp:127.0.0.1:2321;handle=0x81000101",
			map[string]string{"device": "tcp:127.0.0.1:2321", "handle": "0x81000101"}, map[string]string{}},
		{"ok/file", "file:/var/lib/bootcert/keys/op-3.pem", "file", "/var/lib/bootcert/keys/op-3.pem", nil, map[string]string{}},
		{"ok/file-triple-slash", "file:///var/lib/k.pem", "file", "/var/lib/k.pem", nil, map[string]string{}},
		{"ok/file-escaped", "file:/var/lib/my%20key.pem", "file", "/var/lib/my key.pem", nil, map[string]string{}},
		{"ok/upper-scheme", "PKCS11:object=k", "pkcs11", "object=k", map[string]string{"object": "k"}, map[string]string{}},
		{"ok/empty-segments", "pkcs11:;object=k;;?&pin-value=1&", "pkcs11", ";object=k;;", map[string]string{"object": "k"}, map[string]string{"pin-value": "1"}},
		{"ok/same-attr-twice-same-value", "pkcs11:object=k;object=k", "pkcs11", "object=k;object=k", map[string]string{"object": "k"}, map[string]string{}},
		{"ok/empty-value", "pkcs11:object=", "pkcs11", "object=", map[string]string{"object": ""}, map[string]string{}},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			u, err := keystore.ParseURI(tc.raw)
			if err != nil {
				t.Fatalf("ParseURI: %v", err)
			}
			if u.Scheme != tc.scheme || u.Opaque != tc.opaque {
				t.Errorf("scheme %q opaque %q", u.Scheme, u.Opaque)
			}
			if !reflect.DeepEqual(u.Attrs, tc.attrs) {
				t.Errorf("attrs = %q, want %q", u.Attrs, tc.attrs)
			}
			if !reflect.DeepEqual(u.Query, tc.query) {
				t.Errorf("query = %q, want %q", u.Query, tc.query)
			}
			if u.Raw() != tc.raw {
				t.Errorf("Raw = %q", u.Raw())
			}
		})
	}

	fail := []struct {
		name string
		raw  string
		part string
	}{
		{"fail/empty", "", "uri"},
		{"fail/blank", "   ", "uri"},
		{"fail/no-scheme", "/var/lib/k.pem", "scheme"},
		{"fail/empty-scheme", ":object=k", "scheme"},
		{"fail/bad-scheme", "pk cs11:object=k", "scheme"},
		{"fail/digit-scheme", "1pkcs11:object=k", "scheme"},
		{"fail/not-name-value", "pkcs11:token", "path attributes"},
		{"fail/empty-name", "pkcs11:=v", "path attributes"},
		{"fail/bad-percent", "pkcs11:object=%zz", "path attributes"},
		{"fail/bad-percent-query", "pkcs11:object=k?module-path=%", "query attributes"},
		{"fail/conflicting-twice", "pkcs11:object=a;object=b", "path attributes"},
		{"fail/conflicting-query-twice", "pkcs11:object=a?pin-value=1&pin-value=2", "query attributes"},
		{"fail/path-and-query", "pkcs11:token=a;object=k?token=a", "attribute token"},
		{"fail/path-and-query-different", "pkcs11:token=a;object=k?object=j", "attribute object"},
		{"fail/file-empty", "file:", "path"},
		{"fail/file-bad-percent", "file:/a%zz", "path"},
	}
	for _, tc := range fail {
		t.Run(tc.name, func(t *testing.T) {
			_, err := keystore.ParseURI(tc.raw)
			var ue *keystore.URIError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a URIError", err)
			}
			if ue.Part != tc.part {
				t.Errorf("part = %q, want %q (%v)", ue.Part, tc.part, err)
			}
			if !strings.Contains(err.Error(), tc.part) {
				t.Errorf("message %q does not name %q", err, tc.part)
			}
		})
	}
}

func TestCheckAttrs(t *testing.T) {
	u, err := keystore.ParseURI("pkcs11:token=t;object=k;colour=red?module-path=/m.so&pin-value=1234")
	if err != nil {
		t.Fatal(err)
	}
	err = u.CheckAttrs([]string{"token", "object"}, []string{"module-path", "pin-value"})
	var ue *keystore.URIError
	if !errors.As(err, &ue) || ue.Part != "attribute colour" {
		t.Fatalf("err = %v, want URIError about attribute colour", err)
	}
	if strings.Contains(err.Error(), "1234") {
		t.Fatalf("error leaks the PIN: %v", err)
	}
	if err := u.CheckAttrs([]string{"token", "object", "colour"}, []string{"module-path"}); err == nil || !strings.Contains(err.Error(), "query attribute pin-value") {
		t.Fatalf("err = %v, want unknown query attribute pin-value", err)
	}
	if err := u.CheckAttrs([]string{"token", "object", "colour"}, []string{"module-path", "pin-value"}); err != nil {
		t.Fatalf("all known: %v", err)
	}
	if v, ok := u.Get("pin-value"); !ok || v != "1234" {
		t.Fatalf("Get(pin-value) = %q, %v", v, ok)
	}
	if v, ok := u.Get("object"); !ok || v != "k" {
		t.Fatalf("Get(object) = %q, %v", v, ok)
	}
	if _, ok := u.Get("nope"); ok {
		t.Fatal("Get(nope) found something")
	}
}

func TestRedacted(t *testing.T) {
	tests := []struct {
		name, raw, want string
	}{
		{"ok/query", "pkcs11:token=t;object=k?module-path=/m.so&pin-value=1234", "pkcs11:token=t;object=k?module-path=/m.so&pin-value=***"},
		{"ok/path", "pkcs11:pin-value=1234;object=k", "pkcs11:pin-value=***;object=k"},
		{"ok/upper-name", "pkcs11:object=k?PIN-VALUE=1234", "pkcs11:object=k?PIN-VALUE=***"},
		{"ok/pin-with-semicolon", "pkcs11:object=k?pin-value=12;34&module-path=/m.so", "pkcs11:object=k?pin-value=***&module-path=/m.so"},
		{"ok/pin-with-question-mark", "pkcs11:object=k?pin-value=12?34", "pkcs11:object=k?pin-value=***"},
		{"ok/pin-source-kept", "pkcs11:object=k?pin-source=file:/etc/pin", "pkcs11:object=k?pin-source=file:/etc/pin"},
		{"ok/file-untouched", "file:/k;pin-value=x.pem", "file:/k;pin-value=x.pem"},
		{"ok/unparseable", "pin-value=1234", "pin-value=***"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, err := keystore.ParseURI(tc.raw)
			if err != nil {
				// unparseable input is redacted in the error
				if strings.Contains(err.Error(), "1234") {
					t.Fatalf("error leaks the PIN: %v", err)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %q lacks %q", err, tc.want)
				}
				return
			}
			if got := u.Redacted(); got != tc.want {
				t.Errorf("Redacted = %q, want %q", got, tc.want)
			}
			if u.String() != u.Redacted() {
				t.Errorf("String %q != Redacted", u.String())
			}
		})
	}
	t.Run("ok/error-redacted", func(t *testing.T) {
		_, err := keystore.ParseURI("pkcs11:object=a;object=b?pin-value=s3cret")
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("err = %v", err)
		}
		_, err = keystore.ParseURI("pkcs11:pin-value?pin-value=s3cret")
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("err = %v", err)
		}
	})
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=bootcert;object=op-3?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/pin",
		"pkcs11:token=t;object=k?module-path=/m.so&pin-value=1234",
		"pkcs11:token=my%20token;id=%01%ff",
		"pkcs11:pin-value=12;34?pin-value=12;34",
		"tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-3.tpmkey",
		"tpm:device=tcp:127.0.0.1:2321;handle=0x81000101",
		"file:/var/lib/bootcert/keys/op-3.pem",
		"file:///k.pem?pin-value=x",
		"", ":", "pkcs11:", "pkcs11:=", "pkcs11:a=%zz", "pkcs11:a=b?a=b", "x:?&;=%",
	} {
		f.Add(s, "s3cret-PIN")
	}
	f.Fuzz(func(t *testing.T, raw, pin string) {
		// 1. Any input: no panic; errors and redacted forms are printable.
		u, err := keystore.ParseURI(raw)
		if err != nil {
			var ue *keystore.URIError
			if !errors.As(err, &ue) || ue.Part == "" {
				t.Fatalf("ParseURI(%q): error %v is not a URIError naming a part", raw, err)
			}
		} else {
			red := u.Redacted()
			if u.String() != red {
				t.Fatal("String differs from Redacted")
			}
			// round trip: the redacted form parses to the same structure,
			// secrets replaced.
			r, err := keystore.ParseURI(red)
			if err != nil {
				t.Fatalf("Redacted form %q of %q does not parse: %v", red, raw, err)
			}
			if r.Scheme != u.Scheme || len(r.Attrs) != len(u.Attrs) || len(r.Query) != len(u.Query) {
				t.Fatalf("round trip of %q via %q changed the structure", raw, red)
			}
			for k, v := range u.Attrs {
				if rv, ok := r.Attrs[k]; !ok || (rv != v && rv != "***") {
					t.Fatalf("round trip changed attribute %q", k)
				}
			}
			for k, v := range u.Query {
				if rv, ok := r.Query[k]; !ok || (rv != v && rv != "***") {
					t.Fatalf("round trip of %q via %q changed query attribute %q", raw, red, k)
				}
			}
			for _, m := range []map[string]string{r.Attrs, r.Query} {
				if v, ok := m["pin-value"]; ok && v != "***" {
					t.Fatalf("Redacted %q of %q keeps a pin-value", red, raw)
				}
			}
			if u.Scheme == "file" && r.Opaque != u.Opaque {
				t.Fatalf("round trip changed the file path %q -> %q", u.Opaque, r.Opaque)
			}
		}

		// 2. A pin-value is never in the redacted URI nor in an error.
		if len(pin) < 4 || strings.ContainsAny(pin, "&") {
			return
		}
		prefix := raw
		if i := strings.Index(prefix, "?"); i >= 0 {
			prefix = prefix[:i]
		}
		withPIN := prefix + "?pin-value=" + pin
		// the same URI with a harmless value: the pin text may occur there
		// by coincidence (in the prefix, in "pin-value=")
		neutral := redactedOrError(prefix + "?pin-value=***")
		if got := redactedOrError(withPIN); strings.Count(got, pin) > strings.Count(neutral, pin) {
			t.Fatalf("pin-value %q leaks from %q: %q", pin, withPIN, got)
		}
	})
}

func redactedOrError(raw string) string {
	u, err := keystore.ParseURI(raw)
	if err != nil {
		return err.Error()
	}
	return u.Redacted()
}
