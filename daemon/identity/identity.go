// Package identity shares the gateway's current AWS IoT identity with other
// software on the gateway (the AWS IoT Device Client, Greengrass nucleus
// lite, a customer's application):
//
//	DIR/cert.pem        -> current/cert.pem       the certificate chain, leaf first
//	DIR/key.uri         -> current/key.uri        the key's URI (secrets redacted: use pin-source)
//	DIR/identity.json   -> current/identity.json  thing, endpoint, generation, certificate ID, validity
//	DIR/current         -> gen-N-<certid>         swapped with one atomic rename
//
// The paths above never change; what they point at is replaced as a whole,
// so a reader never sees a certificate with another credential's key URI.
// Only committed credentials are exported: a credential being tried (phase
// switched) is not, so that co-resident clients never pick up one that is
// rolled back.
//
// After every commit and rollback the executables in the hooks directory
// run (after the export), one at a time in lexical order, with the new
// identity in their environment (BOOTCERT_*), each bounded by a timeout. A
// hook runs after the rotation has ended: its failure is logged and never
// changes the rotation's outcome.
package identity

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/protocol"
)

// Stable file names in the export directory.
const (
	CertFile     = "cert.pem"
	KeyURIFile   = "key.uri"
	JSONFile     = "identity.json"
	CurrentLink  = "current"
	DefaultDir   = "/run/bootcert/identity"
	DefaultHooks = "/etc/bootcert/hooks.d"
)

// Event is why hooks run.
type Event string

// Events.
const (
	Commit   Event = "commit"
	Rollback Event = "rollback"
)

// Identity is identity.json.
type Identity struct {
	Thing         string    `json:"thing"`
	Endpoint      string    `json:"endpoint"`
	Generation    int       `json:"generation"`
	CertificateID string    `json:"certificateId"`
	NotBefore     time.Time `json:"notBefore"`
	NotAfter      time.Time `json:"notAfter"`
	KeyURI        string    `json:"keyUri"`
	Backend       string    `json:"backend"`
	CertFile      string    `json:"certFile"` // the stable path DIR/cert.pem
	UpdatedAt     time.Time `json:"updatedAt"`
}

// Config says where to export and which hooks to run.
type Config struct {
	Dir         string // "": no export (hooks still run)
	HooksDir    string // "": no hooks
	HookTimeout time.Duration
	StateDir    string              // the credential store (generations >= 1)
	Bootstrap   []*x509.Certificate // generation 0's chain
	Now         func() time.Time    // nil: time.Now
	Log         *slog.Logger
}

// Exporter follows the engine's status (Observe) and exports and runs
// hooks on its own goroutine (Run), so that the engine never waits for a
// file system or a hook.
type Exporter struct {
	cfg   Config
	store *credset.Store

	mu       sync.Mutex
	queue    []job
	wake     chan struct{}
	prev     control.Status
	seen     bool
	exported string // certificate ID last queued for export
	// done counts finished jobs (tests wait on it).
	done int
}

type job struct {
	st    control.Status
	event Event // "": export only
}

// New prepares an exporter.
func New(cfg Config) (*Exporter, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.HookTimeout <= 0 {
		cfg.HookTimeout = 30 * time.Second
	}
	if len(cfg.Bootstrap) == 0 {
		return nil, errors.New("identity: no bootstrap certificate")
	}
	st, err := credset.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	return &Exporter{cfg: cfg, store: st, wake: make(chan struct{}, 1)}, nil
}

// Observe takes one status change. It is cheap and never blocks: call it
// from the engine's OnStatus.
func (x *Exporter) Observe(s control.Status) {
	x.mu.Lock()
	defer x.mu.Unlock()
	prev, seen := x.prev, x.seen
	x.prev, x.seen = s, true
	if s.Active.CertificateID == "" {
		return // not known yet
	}
	export := s.Phase != journal.Switched && s.Active.CertificateID != x.exported
	// a rotation that ended while the daemon runs (not the journal's
	// last result read at start): committed, or rolled back once the
	// previous credential is in use again
	var ev Event
	if seen && !s.LastResultAt.Equal(prev.LastResultAt) && !s.LastResultAt.Before(s.Counters.Since) {
		switch s.LastResult {
		case protocol.JobSucceeded:
			ev = Commit
		case protocol.ResultRolledBack:
			ev = Rollback
		}
	}
	if !export && ev == "" {
		return
	}
	if export {
		x.exported = s.Active.CertificateID
	}
	x.queue = append(x.queue, job{st: s, event: ev})
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// Run exports and runs hooks until ctx ends; the job in progress finishes
// first (a hook is bounded by its timeout).
func (x *Exporter) Run(ctx context.Context) {
	for {
		x.mu.Lock()
		q := x.queue
		x.queue = nil
		x.mu.Unlock()
		for _, j := range q {
			x.do(ctx, j)
			x.mu.Lock()
			x.done++
			x.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-x.wake:
		}
	}
}

// Done is how many observed changes have been handled.
func (x *Exporter) Done() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.done
}

func (x *Exporter) do(ctx context.Context, j job) {
	id, chain, err := x.identity(j.st)
	if err != nil {
		x.cfg.Log.Warn("exporting the identity", "generation", j.st.Active.Generation, "err", err)
		return
	}
	if x.cfg.Dir != "" {
		if err := x.Export(id, chain); err != nil {
			x.cfg.Log.Warn("exporting the identity (export.dir)", "dir", x.cfg.Dir, "err", err)
		} else {
			x.cfg.Log.Info("identity exported", "dir", x.cfg.Dir, "generation", id.Generation, "certificateId", id.CertificateID)
		}
	}
	if j.event != "" && x.cfg.HooksDir != "" {
		x.RunHooks(ctx, j.event, id, j.st)
	}
}

func (x *Exporter) identity(s control.Status) (Identity, []*x509.Certificate, error) {
	chain := x.cfg.Bootstrap
	if g := s.Active.Generation; g > 0 {
		c, err := x.store.Get(g)
		if err != nil {
			return Identity{}, nil, err
		}
		chain = c.Chain
	}
	leaf := chain[0]
	id := Identity{Thing: s.Thing, Endpoint: s.Endpoint, Generation: s.Active.Generation, CertificateID: s.Active.CertificateID,
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), KeyURI: s.Active.KeyURI, Backend: s.Active.Backend,
		UpdatedAt: x.cfg.Now().UTC()}
	if x.cfg.Dir != "" {
		id.CertFile = filepath.Join(x.cfg.Dir, CertFile)
	}
	return id, chain, nil
}

// Export writes id and chain as the current identity: a new directory,
// then one rename of the current link. The previous directory is kept (a
// reader may still be in it); older ones are removed.
func (x *Exporter) Export(id Identity, chain []*x509.Certificate) error {
	dir := x.cfg.Dir
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	name := fmt.Sprintf("gen-%d-%s", id.Generation, short(id.CertificateID))
	gd := filepath.Join(dir, name)
	if err := os.MkdirAll(gd, 0o750); err != nil {
		return err
	}
	var pemChain bytes.Buffer
	for _, c := range chain {
		pem.Encode(&pemChain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	js, _ := json.MarshalIndent(id, "", "  ")
	for _, f := range []struct {
		name string
		data []byte
	}{{CertFile, pemChain.Bytes()}, {KeyURIFile, []byte(id.KeyURI + "\n")}, {JSONFile, append(js, '\n')}} {
		if err := atomicfile.WriteFile(filepath.Join(gd, f.name), f.data, 0o640); err != nil {
			return err
		}
	}
	// the pointer: a new symlink renamed over the old one
	tmp := filepath.Join(dir, "."+CurrentLink+".tmp")
	os.Remove(tmp)
	if err := os.Symlink(name, tmp); err != nil {
		return err
	}
	cur := filepath.Join(dir, CurrentLink)
	old, _ := os.Readlink(cur)
	if err := os.Rename(tmp, cur); err != nil {
		return err
	}
	// the stable names, made once
	for _, f := range []string{CertFile, KeyURIFile, JSONFile} {
		p := filepath.Join(dir, f)
		if t, err := os.Readlink(p); err == nil && t == filepath.Join(CurrentLink, f) {
			continue
		}
		os.Remove(p)
		if err := os.Symlink(filepath.Join(CurrentLink, f), p); err != nil {
			return err
		}
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return err
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "gen-") && n != name && n != old {
			os.RemoveAll(filepath.Join(dir, n))
		}
	}
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// hookName is what run-parts(8) accepts: no dot files, editor backups or
// dpkg leftovers.
var hookName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Hooks lists the executables in dir that would run, in order.
func Hooks(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !hookName.MatchString(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			continue
		}
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// HookResult is how one hook ended.
type HookResult struct {
	Path     string
	Err      error // nil: exit status 0
	Output   string
	Duration time.Duration
}

// maxOutput bounds what is kept of a hook's output for the log.
const maxOutput = 4 << 10

// RunHooks runs the hooks for ev and returns how each ended. It never
// fails: a hook that cannot start, exits non-zero or outlives its timeout
// is logged and the next one runs.
func (x *Exporter) RunHooks(ctx context.Context, ev Event, id Identity, s control.Status) []HookResult {
	hooks, err := Hooks(x.cfg.HooksDir)
	if err != nil {
		x.cfg.Log.Warn("reading the hooks directory (export.hooks_dir)", "dir", x.cfg.HooksDir, "err", err)
		return nil
	}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"BOOTCERT_EVENT=" + string(ev),
		"BOOTCERT_THING=" + id.Thing,
		"BOOTCERT_ENDPOINT=" + id.Endpoint,
		"BOOTCERT_GENERATION=" + strconv.Itoa(id.Generation),
		"BOOTCERT_CERTIFICATE_ID=" + id.CertificateID,
		"BOOTCERT_NOT_AFTER=" + id.NotAfter.Format(time.RFC3339),
		"BOOTCERT_KEY_URI=" + id.KeyURI,
		"BOOTCERT_KEY_BACKEND=" + id.Backend,
		"BOOTCERT_RESULT=" + string(s.LastResult),
	}
	if x.cfg.Dir != "" {
		env = append(env, "BOOTCERT_IDENTITY_DIR="+x.cfg.Dir, "BOOTCERT_CERT_FILE="+filepath.Join(x.cfg.Dir, CertFile),
			"BOOTCERT_KEY_URI_FILE="+filepath.Join(x.cfg.Dir, KeyURIFile))
	}
	var out []HookResult
	for _, h := range hooks {
		r := x.runHook(ctx, h, env)
		out = append(out, r)
		if r.Err != nil {
			x.cfg.Log.Warn("hook failed (the rotation's outcome stands)", "hook", h, "event", ev, "err", r.Err, "output", r.Output, "took", r.Duration.Round(time.Millisecond))
		} else {
			x.cfg.Log.Info("hook ran", "hook", h, "event", ev, "generation", id.Generation, "took", r.Duration.Round(time.Millisecond))
		}
	}
	return out
}

func (x *Exporter) runHook(ctx context.Context, path string, env []string) HookResult {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, x.cfg.HookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = env
	cmd.Dir = "/"
	var buf limitedBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	// its own process group, killed whole on timeout (a hook's children
	// must not outlive it)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("killed after export.hook_timeout %s", x.cfg.HookTimeout)
	}
	return HookResult{Path: path, Err: err, Output: strings.TrimSpace(buf.String()), Duration: time.Since(start)}
}

type limitedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := maxOutput - l.b.Len(); room > 0 {
		if len(p) > room {
			l.b.Write(p[:room])
		} else {
			l.b.Write(p)
		}
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
