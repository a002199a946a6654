// Package credset keeps numbered credential generations (certificate and key
// URI) in a state directory and an "active" pointer that names the active
// and the previous generation, replaced with one atomic rename.
//
// Layout under DIR (the daemon's state directory):
//
//	creds/<N>/cert.pem   the certificate chain of generation N
//	creds/<N>/key.uri    the key URI (no secrets: pin-source, never pin-value)
//	creds/<N>/meta.json  certificate ID, job, times
//	creds/active         {"active":N,"previous":M}
//
// Generation 0 is the bootstrap credential from the configuration; it is never
// stored here and its key is never deleted.
package credset

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/protocol"
)

// Bootstrap is the generation number of the bootstrap credential.
const Bootstrap = 0

// Errors.
var (
	ErrNotFound = errors.New("credential generation not found")
	ErrCorrupt  = errors.New("credential generation corrupt")
	ErrExists   = errors.New("credential generation already exists")
)

// KeyRole is what a key is for; it decides what bootcertd may do with it.
type KeyRole string

// Key roles.
const (
	// RoleBootstrap is generation 0's key, made at the factory: never
	// destroyed.
	RoleBootstrap KeyRole = "bootstrap"
	// RoleStaged is the key of the rotation in progress (journal.Entry.KeyURI):
	// destroyed when the rotation fails or rolls back, unless the factory
	// made it (ModePreProvisioned).
	RoleStaged KeyRole = "staged"
	// RoleOperational is a committed generation's key: destroyed once a newer
	// generation commits.
	RoleOperational KeyRole = "operational"
)

// Mode is where a rotation's key comes from (identity.mode).
type Mode string

// Rotation modes.
const (
	// ModeOnDemand: bootcertd makes the key in the hardware and sends a CSR.
	ModeOnDemand Mode = "on-demand"
	// ModePreProvisioned: the factory made the key
	// (identity.preprovisioned_key) and registered its CSR; no CSR is sent.
	ModePreProvisioned Mode = "pre-provisioned"
)

// Meta describes a generation. KeyRole and Mode were added after the first
// release: a meta.json without them is a generation with an operational key
// made on demand (Get fills them in).
type Meta struct {
	Generation    int       `json:"generation"`
	CertificateID string    `json:"certificateId"`
	JobID         string    `json:"jobId,omitempty"`
	Issuer        string    `json:"issuer"`
	NotAfter      time.Time `json:"notAfter"`
	CreatedAt     time.Time `json:"createdAt"`
	KeyRole       KeyRole   `json:"keyRole,omitempty"`
	Mode          Mode      `json:"mode,omitempty"`
	// Attested is true when the cloud verified the key's TPM attestation
	// before issuing the certificate (protocol.GetAccepted.Attested).
	Attested bool `json:"attested,omitempty"`
}

// Credential is one generation: a certificate chain and the URI of its key.
type Credential struct {
	Generation int
	KeyURI     string
	Chain      []*x509.Certificate
	Meta       Meta
}

// Leaf is the device certificate.
func (c *Credential) Leaf() *x509.Certificate { return c.Chain[0] }

// Pointer names the active and previous generations.
type Pointer struct {
	Active   int `json:"active"`
	Previous int `json:"previous"`
}

// Store is the credential store of a state directory.
type Store struct {
	dir string // DIR/creds
}

// Open prepares DIR/creds.
func Open(stateDir string) (*Store, error) {
	d := filepath.Join(stateDir, "creds")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, fmt.Errorf("creating credential directory %s: %w", d, err)
	}
	return &Store{dir: d}, nil
}

// Dir is DIR/creds.
func (s *Store) Dir() string { return s.dir }

func (s *Store) genDir(n int) string { return filepath.Join(s.dir, strconv.Itoa(n)) }

// Put stores generation n atomically: the files are written into a temporary
// directory that is renamed to creds/<n>. An existing generation is never
// replaced (ErrExists); a leftover temporary directory is removed.
func (s *Store) Put(c *Credential) error {
	if c.Generation <= Bootstrap {
		return fmt.Errorf("storing credential generation %d: generations start at 1", c.Generation)
	}
	final := s.genDir(c.Generation)
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("storing credential generation %d in %s: %w", c.Generation, final, ErrExists)
	}
	tmp, err := os.MkdirTemp(s.dir, ".gen-"+strconv.Itoa(c.Generation)+"-*")
	if err != nil {
		return fmt.Errorf("storing credential generation %d: %w", c.Generation, err)
	}
	defer os.RemoveAll(tmp)
	meta, err := json.MarshalIndent(c.Meta, "", "  ")
	if err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"cert.pem", protocol.EncodeChain(c.Chain)},
		{"key.uri", []byte(c.KeyURI + "\n")},
		{"meta.json", append(meta, '\n')},
	} {
		// the directory is private until renamed: plain writes + fsync
		if err := writeSynced(filepath.Join(tmp, f.name), f.data); err != nil {
			return fmt.Errorf("storing credential generation %d: %w", c.Generation, err)
		}
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("storing credential generation %d in %s: %w", c.Generation, final, err)
	}
	return atomicfile.SyncDir(s.dir)
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Get loads generation n (n >= 1).
func (s *Store) Get(n int) (*Credential, error) {
	d := s.genDir(n)
	certPEM, err := os.ReadFile(filepath.Join(d, "cert.pem"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("credential generation %d (%s): %w", n, d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading credential generation %d: %w", n, err)
	}
	chain, err := protocol.ParseChain(certPEM)
	if err != nil {
		return nil, fmt.Errorf("credential generation %d (%s/cert.pem): %w: %v", n, d, ErrCorrupt, err)
	}
	uri, err := os.ReadFile(filepath.Join(d, "key.uri"))
	if err != nil {
		return nil, fmt.Errorf("credential generation %d (%s/key.uri): %w: %v", n, d, ErrCorrupt, err)
	}
	c := &Credential{Generation: n, KeyURI: strings.TrimSpace(string(uri)), Chain: chain}
	if data, err := os.ReadFile(filepath.Join(d, "meta.json")); err == nil {
		if err := json.Unmarshal(data, &c.Meta); err != nil {
			return nil, fmt.Errorf("credential generation %d (%s/meta.json): %w: %v", n, d, ErrCorrupt, err)
		}
	}
	if c.Meta.KeyRole == "" {
		c.Meta.KeyRole = RoleOperational
	}
	if c.Meta.Mode == "" {
		c.Meta.Mode = ModeOnDemand
	}
	return c, nil
}

// Remove deletes generation n's files (not its key).
func (s *Store) Remove(n int) error {
	if n <= Bootstrap {
		return fmt.Errorf("refusing to remove credential generation %d", n)
	}
	// rename first so that a crash never leaves a half-deleted generation
	// that Get could read
	d := s.genDir(n)
	tomb := filepath.Join(s.dir, fmt.Sprintf(".removed-%d", n))
	os.RemoveAll(tomb)
	if err := os.Rename(d, tomb); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("removing credential generation %d: %w", n, err)
	}
	if err := atomicfile.SyncDir(s.dir); err != nil {
		return err
	}
	return os.RemoveAll(tomb)
}

// Generations lists the stored generations, ascending.
func (s *Store) Generations() ([]int, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", s.dir, err)
	}
	var gens []int
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil || n <= 0 {
			continue
		}
		gens = append(gens, n)
	}
	sort.Ints(gens)
	return gens, nil
}

// Cleanup removes leftover temporary directories of interrupted Puts and
// Removes.
func (s *Store) Cleanup() error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".gen-") || strings.HasPrefix(e.Name(), ".removed-") || strings.HasPrefix(e.Name(), ".active.tmp-") {
			os.RemoveAll(filepath.Join(s.dir, e.Name()))
		}
	}
	return nil
}

// Pointer reads creds/active; absent means the bootstrap credential.
func (s *Store) Pointer() (Pointer, error) {
	p := filepath.Join(s.dir, "active")
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Pointer{}, nil
	}
	if err != nil {
		return Pointer{}, fmt.Errorf("reading %s: %w", p, err)
	}
	var ptr Pointer
	if err := json.Unmarshal(data, &ptr); err != nil || ptr.Active < 0 || ptr.Previous < 0 {
		return Pointer{}, fmt.Errorf("%s: %w: %q", p, ErrCorrupt, data)
	}
	return ptr, nil
}

// SetPointer replaces creds/active atomically.
func (s *Store) SetPointer(ptr Pointer) error {
	data, _ := json.Marshal(ptr)
	return atomicfile.WriteFile(filepath.Join(s.dir, "active"), append(data, '\n'), 0o600)
}
