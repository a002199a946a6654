package credset

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/protocol"
)

func cred(t *testing.T, ca *testca.CA, gen int) *Credential {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c := ca.Issue(t, "gw-1", k.Public())
	return &Credential{Generation: gen, KeyURI: "file:/k/op-1.pem", Chain: []*x509.Certificate{c, ca.Cert},
		Meta: Meta{Generation: gen, CertificateID: protocol.CertificateID(c.Raw), NotAfter: c.NotAfter}}
}

func TestPutGet(t *testing.T) {
	ca := testca.New(t, "ca")
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := cred(t, ca, 1)
	if err := s.Put(c); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	if got.KeyURI != c.KeyURI || len(got.Chain) != 2 || !got.Leaf().Equal(c.Leaf()) || got.Meta.CertificateID != protocol.CertificateID(c.Leaf().Raw) {
		t.Errorf("Get = %+v", got)
	}
	if err := s.Put(cred(t, ca, 1)); !errors.Is(err, ErrExists) {
		t.Errorf("second Put: %v, want ErrExists", err)
	}
	if got2, _ := s.Get(1); !got2.Leaf().Equal(c.Leaf()) {
		t.Errorf("a refused Put replaced the generation")
	}
	if _, err := s.Get(2); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(2): %v", err)
	}
	if err := s.Put(&Credential{Generation: 0}); err == nil {
		t.Errorf("Put(generation 0) succeeded")
	}
	if err := s.Remove(0); err == nil {
		t.Errorf("Remove(0) succeeded")
	}
	s.Put(cred(t, ca, 3))
	gens, _ := s.Generations()
	if len(gens) != 2 || gens[0] != 1 || gens[1] != 3 {
		t.Errorf("Generations = %v", gens)
	}
	if err := s.Remove(1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(1); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Remove: %v", err)
	}
}

func TestPointer(t *testing.T) {
	s, _ := Open(t.TempDir())
	p, err := s.Pointer()
	if err != nil || p != (Pointer{}) {
		t.Fatalf("fresh pointer %+v %v", p, err)
	}
	if err := s.SetPointer(Pointer{Active: 2, Previous: 1}); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Pointer(); p != (Pointer{Active: 2, Previous: 1}) {
		t.Errorf("pointer %+v", p)
	}
	os.WriteFile(filepath.Join(s.Dir(), "active"), []byte("junk"), 0o600)
	if _, err := s.Pointer(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt pointer: %v", err)
	}
}

// A crash in the middle of Put leaves a temporary directory that is neither
// listed nor readable, and Cleanup removes it.
func TestInterruptedPut(t *testing.T) {
	s, _ := Open(t.TempDir())
	os.MkdirAll(filepath.Join(s.Dir(), ".gen-4-123"), 0o700)
	os.WriteFile(filepath.Join(s.Dir(), ".gen-4-123", "cert.pem"), []byte("half"), 0o600)
	if gens, _ := s.Generations(); len(gens) != 0 {
		t.Errorf("Generations = %v", gens)
	}
	if _, err := s.Get(4); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(4): %v", err)
	}
	s.Cleanup()
	if _, err := os.Stat(filepath.Join(s.Dir(), ".gen-4-123")); !os.IsNotExist(err) {
		t.Errorf("leftover not removed")
	}
}

// TestLoadsMetaWithoutRoleAndMode: a generation stored before meta.json
// recorded the key's role and the mode still loads, as an operational key
// made on demand; one stored now keeps what it recorded.
func TestLoadsMetaWithoutRoleAndMode(t *testing.T) {
	ca := testca.New(t, "ca")
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := cred(t, ca, 1)
	if err := s.Put(old); err != nil {
		t.Fatal(err)
	}
	// meta.json exactly as the previous release wrote it
	legacy := `{
  "generation": 1,
  "certificateId": "` + old.Meta.CertificateID + `",
  "jobId": "rot-1",
  "issuer": "CN=ca",
  "notAfter": "2027-01-01T00:00:00Z",
  "createdAt": "2026-01-01T00:00:00Z"
}
`
	if err := os.WriteFile(filepath.Join(dir, "creds", "1", "meta.json"), []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(1)
	if err != nil {
		t.Fatalf("Get of a legacy generation: %v", err)
	}
	if got.Meta.KeyRole != RoleOperational || got.Meta.Mode != ModeOnDemand || got.Meta.JobID != "rot-1" || got.KeyURI != old.KeyURI {
		t.Errorf("legacy generation loaded as %+v", got.Meta)
	}
	pre := cred(t, ca, 2)
	pre.Meta.KeyRole, pre.Meta.Mode = RoleOperational, ModePreProvisioned
	if err := s.Put(pre); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(2); err != nil || got.Meta.Mode != ModePreProvisioned {
		t.Errorf("Get(2) = %+v, %v; want the recorded mode", got, err)
	}
}
