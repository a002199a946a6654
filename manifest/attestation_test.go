package manifest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAttestationColumns(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.csv")
	// An old three-column manifest.
	old := "device_id,bootstrap_sha256,final_csr\ngw-1,,\n"
	if err := os.WriteFile(path, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &Attestation{
		EKCertSHA256: strings.Repeat("ab", 32),
		EKPubSHA256:  strings.Repeat("cd", 32),
		AKPublic:     []byte{0, 0x23, 0, 0x0b, 1, 2, 3},
		AKName:       append([]byte{0, 0x0b}, bytes.Repeat([]byte{9}, 32)...),
	}
	if err := Append(path, Entry{DeviceID: "gw-2", Attestation: a}); err != nil {
		t.Fatal(err)
	}
	if err := Append(path, Entry{DeviceID: "gw-3"}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(data), strings.Join(Header, ",")+"\ngw-1,,\n") {
		t.Fatalf("header not widened in place:\n%s", data)
	}
	l, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	e1, _ := l.Lookup("gw-1")
	e2, _ := l.Lookup("gw-2")
	e3, _ := l.Lookup("gw-3")
	if e1.Attestation != nil || e3.Attestation != nil {
		t.Fatal("unattested lines got an attestation")
	}
	if e2.Attestation == nil || e2.Attestation.EKCertSHA256 != a.EKCertSHA256 || !bytes.Equal(e2.Attestation.AKPublic, a.AKPublic) || !bytes.Equal(e2.Attestation.AKName, a.AKName) {
		t.Fatalf("attestation round trip: %+v", e2.Attestation)
	}

	// A new file without attestation keeps the three-column header.
	p2 := filepath.Join(dir, "m2.csv")
	if err := Append(p2, Entry{DeviceID: "gw-1"}); err != nil {
		t.Fatal(err)
	}
	if d, _ := os.ReadFile(p2); !strings.HasPrefix(string(d), "device_id,bootstrap_sha256,final_csr\n") {
		t.Fatalf("header %q", d)
	}
}

func TestAttestationColumnErrors(t *testing.T) {
	h := strings.Join(Header, ",") + "\n"
	ek := strings.Repeat("ab", 32)
	name := "000b" + strings.Repeat("11", 32)
	for _, tt := range []struct{ name, line, col string }{
		{"fail/ek-cert-hex", "gw,,,zz," + ek + ",AAEC," + name, "ek_cert_sha256"},
		{"fail/ek-pub-missing", "gw,,,,,AAEC," + name, "ek_pub_sha256"},
		{"fail/ak-public-b64", "gw,,,," + ek + ",!!," + name, "ak_public"},
		{"fail/ak-name", "gw,,,," + ek + ",AAEC,00", "ak_name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(h + tt.line + "\n"))
			pe, ok := err.(*ParseError)
			if !ok || pe.Column != tt.col || pe.Line != 2 {
				t.Fatalf("err = %v, want column %s line 2", err, tt.col)
			}
		})
	}
	// More fields than a three-column header allows.
	if _, err := Parse(strings.NewReader("device_id,bootstrap_sha256,final_csr\ngw,,,x\n")); err == nil {
		t.Fatal("a fourth field under a three-column header was accepted")
	}
}
