package ctl

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/daemon/proxy"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

func init() { register(newCheckCmd) }

// Check outcomes.
const (
	checkPass = "pass"
	checkWarn = "warn"
	checkFail = "fail"
	checkSkip = "skip"
)

// Exit codes of `bootcertctl check`.
const (
	ExitCheckOK       = 0 // every check passed (or was skipped)
	ExitCheckWarnings = 1 // warnings, no failure
	ExitCheckFailures = 2 // at least one failure
)

// CheckResult is one line of `bootcertctl check`.
type CheckResult struct {
	Name    string `json:"name"`
	Status  string `json:"status"` // pass, warn, fail, skip
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

// CheckReport is `bootcertctl check --json`.
type CheckReport struct {
	Config  string        `json:"config"`
	Checks  []CheckResult `json:"checks"`
	Summary string        `json:"summary"`
	Exit    int           `json:"exit"`
}

// checkNow is the clock `check` judges validity with (tests set it).
var checkNow = time.Now

// exitCode is an error that sets bootcertctl's exit status.
type exitCode struct {
	code int
	msg  string
}

func (e *exitCode) Error() string { return e.msg }

// defaultUnitFiles are where the bootcertd unit and its drop-ins live.
var defaultUnitFiles = []string{
	"/usr/lib/systemd/system/bootcertd.service", "/lib/systemd/system/bootcertd.service",
	"/etc/systemd/system/bootcertd.service", "/etc/systemd/system/bootcertd.service.d/*.conf",
	"/run/systemd/system/bootcertd.service.d/*.conf", "/usr/lib/systemd/system/bootcertd.service.d/*.conf",
}

type checker struct {
	ctx     context.Context
	cfgPath string
	cfg     *config.Config
	now     time.Time
	user    string
	units   []string
	online  bool
	results []CheckResult

	uid    int
	group  string // the user's primary group
	gids   []int
	userOK bool
	thing  string
	roots  *x509.CertPool
	boot   []*x509.Certificate
	active activeCred
}

type activeCred struct {
	gen    int
	keyURI string
	chain  []*x509.Certificate
	signer crypto.Signer
}

func newCheckCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the gateway's bootcert setup and say how to fix what is wrong",
		Long: `check runs every check a support engineer would run on a gateway, without
the daemon's help (it reads the configuration, the keys and the state directory
itself; run it as root):

  config       the configuration parses; root CA and bootstrap certificate files read
  clock        the system clock is plausible (not 1970, not before the certificates' notBefore)
  files        key files, TPM key blobs and PIN files are readable by the daemon's user,
               and PIN files by nobody else
  keys         every key URI resolves and its key is reachable (TPM device, PKCS#11
               module, token, PIN) and signs
  certificate  the active chain matches its key, is valid, and its remaining life
  state        the state directory, journal and credential generations agree
  sandbox      the systemd unit allows what the backend needs (TPM device, PKCS#11
               token store, metrics and export directories)
  lockout      the TPM's dictionary-attack counter, where the TPM reports it
  online       (--online) the endpoint resolves, TLS succeeds with broker.root_ca and
               ALPN, and the broker accepts the credential (MQTT CONNECT with the
               thing name as client ID: bootcertd's session is closed by the
               broker and reconnects)

Each line is pass, warn, fail or skip, with a fix. Exit status: 0 all passed,
1 warnings only, 2 at least one failure.`,
		Args: cobra.NoArgs,
	}
	asJSON := addJSONFlag(cmd)
	cfgPath := cmd.Flags().String("config", config.DefaultPath, "bootcertd configuration")
	online := cmd.Flags().Bool("online", false, "also connect to the broker (TLS and MQTT CONNECT)")
	usr := cmd.Flags().String("user", "bootcert", "the user bootcertd runs as (the unit's User=)")
	units := cmd.Flags().StringSlice("unit", defaultUnitFiles, "unit file and drop-ins to read the sandbox from (globs)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c := &checker{ctx: cmd.Context(), cfgPath: *cfgPath, now: checkNow(), user: *usr, units: *units, online: *online}
		c.run()
		defer keystore.CloseAll(context.Background())
		rep := c.report()
		out := cmd.OutOrStdout()
		if *asJSON {
			if err := writeJSON(out, rep); err != nil {
				return err
			}
		} else {
			for _, r := range rep.Checks {
				fmt.Fprintf(out, "%-4s  %-12s %s\n", r.Status, r.Name, r.Message)
				if r.Fix != "" {
					fmt.Fprintf(out, "      %-12s fix: %s\n", "", r.Fix)
				}
			}
			fmt.Fprintln(out, rep.Summary)
		}
		if rep.Exit != ExitCheckOK {
			return &exitCode{code: rep.Exit, msg: rep.Summary}
		}
		return nil
	}
	return cmd
}

func (c *checker) add(name, status, msg, fix string) {
	c.results = append(c.results, CheckResult{Name: name, Status: status, Message: msg, Fix: fix})
}

func (c *checker) report() CheckReport {
	var w, f int
	for _, r := range c.results {
		switch r.Status {
		case checkWarn:
			w++
		case checkFail:
			f++
		}
	}
	rep := CheckReport{Config: c.cfgPath, Checks: c.results}
	switch {
	case f > 0:
		rep.Exit = ExitCheckFailures
	case w > 0:
		rep.Exit = ExitCheckWarnings
	}
	rep.Summary = fmt.Sprintf("%d checks: %d failed, %d warnings", len(c.results), f, w)
	return rep
}

func (c *checker) run() {
	cfg, err := config.Load(c.cfgPath)
	if err != nil {
		c.add("config", checkFail, err.Error(), "correct the file; bootcertd --check-config "+c.cfgPath+" checks it again")
		return
	}
	c.cfg = cfg
	c.add("config", checkPass, c.cfgPath+" parses", "")
	c.loadFiles()
	c.checkUser()
	c.checkClock()
	c.checkState()
	c.checkFiles()
	c.checkKeys()
	c.checkCertificate()
	c.checkSandbox()
	c.checkLockout()
	if c.online {
		c.checkOnline()
	}
}

func (c *checker) loadFiles() {
	cfg := c.cfg
	data, err := os.ReadFile(cfg.Broker.RootCA)
	c.roots = x509.NewCertPool()
	if err != nil || !c.roots.AppendCertsFromPEM(data) {
		c.roots = nil
		c.add("config", checkFail, fmt.Sprintf("broker.root_ca %s: not a readable PEM CA file (%v)", cfg.Broker.RootCA, err), "install the broker's CA (AmazonRootCA1.pem) there, or correct broker.root_ca")
	}
	data, err = os.ReadFile(cfg.Identity.BootstrapCert)
	if err == nil {
		c.boot, err = protocol.ParseChain(data)
	}
	if err != nil {
		c.add("config", checkFail, fmt.Sprintf("identity.bootstrap_cert %s: %v", cfg.Identity.BootstrapCert, err), "install the device's bootstrap certificate (made at the factory), or correct identity.bootstrap_cert")
		return
	}
	c.thing = cfg.Identity.ThingName
	if c.thing == "" {
		c.thing = c.boot[0].Subject.CommonName
	}
}

func (c *checker) checkUser() {
	u, err := user.Lookup(c.user)
	if err != nil {
		c.add("files", checkWarn, fmt.Sprintf("user %s does not exist: cannot check who may read the key and PIN files", c.user), "install the bootcert package (it creates the user), or give --user")
		return
	}
	c.uid, _ = strconv.Atoi(u.Uid)
	c.group = u.Gid
	if g, err := user.LookupGroupId(u.Gid); err == nil {
		c.group = g.Name
	}
	gids, _ := u.GroupIds()
	for _, g := range gids {
		n, _ := strconv.Atoi(g)
		c.gids = append(c.gids, n)
	}
	c.userOK = true
}

func (c *checker) checkClock() {
	now := c.now.UTC().Format(time.RFC3339)
	fix := "set the time: enable NTP (timedatectl set-ntp true; systemd-timesyncd or chrony) and check the network to the time servers; gateways without an RTC boot in 1970"
	// the daemon's own floor (clock.Floor: compiled in, raised by the
	// build's commit time): what bootcertd waits on, check reports
	if f := clock.Floor(); c.now.Before(f) {
		c.add("clock", checkFail, fmt.Sprintf("the system clock says %s, before %s: not plausible (bootcertd waits until the clock is set)", now, f.UTC().Format(time.RFC3339)), fix)
		return
	}
	if len(c.boot) > 0 && c.now.Before(c.boot[0].NotBefore) {
		c.add("clock", checkFail, fmt.Sprintf("the system clock says %s, before the bootstrap certificate's notBefore %s", now, c.boot[0].NotBefore.UTC().Format(time.RFC3339)), fix)
		return
	}
	c.add("clock", checkPass, "the system clock says "+now, "")
}

func (c *checker) checkState() {
	dir := c.cfg.State.Dir
	c.active = activeCred{keyURI: c.cfg.Identity.BootstrapKey, chain: c.boot}
	fi, err := os.Stat(dir)
	if err != nil {
		c.add("state", checkWarn, fmt.Sprintf("state directory %s: %v (bootcertd creates it at its first start)", dir, err), "systemctl start bootcertd, or correct state.dir")
		return
	}
	if c.userOK && !c.accessible(fi, 0o7) {
		c.add("state", checkFail, fmt.Sprintf("state directory %s is %s %s: the daemon's user %s cannot use it", dir, fi.Mode().Perm(), owner(fi), c.user), fmt.Sprintf("chown -R %s:%s %s", c.user, c.group, dir))
		return
	}
	j, err := journal.Open(dir)
	if err != nil {
		c.add("state", checkFail, fmt.Sprintf("journal %s: %v", filepath.Join(dir, journal.FileName), err), "stop bootcertd and move the journal aside; the daemon then starts from the credential pointer (docs/bootcertd.md, State)")
		return
	}
	st, err := openStore(dir)
	if err != nil {
		c.add("state", checkFail, err.Error(), "check the state directory's permissions")
		return
	}
	ptr, err := st.Pointer()
	if err != nil {
		c.add("state", checkFail, fmt.Sprintf("credential pointer: %v", err), "stop bootcertd and restore "+filepath.Join(dir, "creds", "active")+" (docs/bootcertd.md, State)")
		return
	}
	if ptr.Active > 0 {
		cr, err := st.Get(ptr.Active)
		if err != nil {
			c.add("state", checkFail, fmt.Sprintf("the active credential generation %d: %v", ptr.Active, err), "bootcertd falls back to the bootstrap certificate; the next rotation job replaces it")
			return
		}
		c.active = activeCred{gen: ptr.Active, keyURI: cr.KeyURI, chain: cr.Chain}
	}
	cur := j.Current()
	switch cur.Phase {
	case journal.Idle, journal.Committed, journal.RolledBack:
		c.add("state", checkPass, fmt.Sprintf("journal %s, active generation %d", cur.Phase, ptr.Active), "")
	default:
		c.add("state", checkWarn, fmt.Sprintf("a rotation is in progress (journal phase %s, job %s, generation %d)", cur.Phase, cur.JobID, cur.Generation), "nothing if bootcertd runs: it resumes or rolls back; bootcertctl status shows the progress")
	}
}

func openStore(dir string) (*credset.Store, error) {
	if _, err := os.Stat(filepath.Join(dir, "creds")); err != nil {
		return nil, fmt.Errorf("credential store %s: %w", filepath.Join(dir, "creds"), err)
	}
	return credset.Open(dir)
}

// keyURIs are the keys bootcertd uses, by configuration key.
func (c *checker) keyURIs() [][2]string {
	out := [][2]string{{"identity.bootstrap_key", c.cfg.Identity.BootstrapKey}}
	if c.cfg.Identity.PreProvisioned != "" {
		out = append(out, [2]string{"identity.preprovisioned_key", c.cfg.Identity.PreProvisioned})
	}
	if c.active.gen > 0 {
		out = append(out, [2]string{fmt.Sprintf("generation %d", c.active.gen), c.active.keyURI})
	}
	return out
}

// checkFiles: the files behind the key URIs (file keys, TPM blobs, PIN
// files) must be readable by the daemon's user; PIN files by nobody else.
func (c *checker) checkFiles() {
	bad := false
	for _, k := range c.keyURIs() {
		u, err := keystore.ParseURI(k[1])
		if err != nil {
			continue
		}
		var files []string
		switch u.Scheme {
		case "file":
			files = append(files, u.Opaque)
		case "tpm":
			if b, ok := u.Get("blob"); ok {
				files = append(files, b)
			}
		}
		for _, f := range files {
			if !c.fileReadable(k[0], f, false) {
				bad = true
			}
		}
		if src, ok := u.Query["pin-source"]; ok {
			p := strings.TrimPrefix(src, "file:")
			if !c.fileReadable(k[0]+" pin-source", p, true) {
				bad = true
			}
		}
		if _, ok := u.Query["pin-value"]; ok {
			c.add("files", checkWarn, k[0]+": the PIN is in the URI (pin-value=): it ends up in bootcertd.toml and journal.json", "put the PIN in a file (mode 0640, owner root, group of bootcertd's user) and use pin-source=file:/etc/bootcert/pin")
		}
	}
	if !bad {
		c.add("files", checkPass, "key, TPM blob and PIN files are readable by "+c.user, "")
	}
}

func (c *checker) fileReadable(what, path string, secret bool) bool {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !secret {
			return true // made at the first rotation, or reported by the keys check
		}
		c.add("files", checkFail, fmt.Sprintf("%s: %s: %v", what, path, err), "create it (docs/factory.md) or correct the URI")
		return false
	}
	ok := true
	if c.userOK && !c.accessible(fi, 0o4) {
		c.add("files", checkFail, fmt.Sprintf("%s: %s is %s %s: bootcertd (user %s) cannot read it", what, path, fi.Mode().Perm(), owner(fi), c.user),
			fmt.Sprintf("chown %s:%s %s (files made by root at the factory step on the device belong to root)", c.user, c.group, path))
		ok = false
	}
	if secret && fi.Mode().Perm()&0o007 != 0 {
		c.add("files", checkFail, fmt.Sprintf("%s: %s is %s: readable by every user", what, path, fi.Mode().Perm()), fmt.Sprintf("chmod 0640 %s; chown root:%s %s", path, c.group, path))
		ok = false
	}
	return ok
}

// accessible says whether the daemon's user has the permission bits want
// (4 read, 2 write, 1 execute/search) on fi.
func (c *checker) accessible(fi fs.FileInfo, want fs.FileMode) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	perm := fi.Mode().Perm()
	if c.uid == 0 {
		return true
	}
	if int(st.Uid) == c.uid {
		return perm>>6&want == want
	}
	for _, g := range c.gids {
		if int(st.Gid) == g {
			return perm>>3&want == want
		}
	}
	return perm&want == want
}

func owner(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	u, g := strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}

// checkKeys opens every key and has it sign.
func (c *checker) checkKeys() {
	for _, k := range c.keyURIs() {
		u, err := keystore.ParseURI(k[1])
		if err != nil {
			c.add("keys", checkFail, fmt.Sprintf("%s: %v", k[0], err), "correct the URI in "+c.cfgPath)
			continue
		}
		ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		s, err := keystore.Open(ctx, k[1])
		if err == nil {
			d := sha256.Sum256([]byte("bootcertctl check"))
			_, err = s.Sign(rand.Reader, d[:], crypto.SHA256)
		}
		cancel()
		if err != nil {
			c.add("keys", checkFail, fmt.Sprintf("%s %s: %v", k[0], u.Redacted(), err), keyFix(u))
			continue
		}
		if k[1] == c.active.keyURI {
			c.active.signer = s
		}
		c.add("keys", checkPass, fmt.Sprintf("%s %s reachable, signs", k[0], u.Redacted()), "")
	}
}

func keyFix(u *keystore.URI) string {
	switch u.Scheme {
	case "tpm":
		d, _ := u.Get("device")
		if d == "" {
			d = "/dev/tpmrm0"
		}
		return "check the TPM at " + d + ": the device node exists (ls -l " + d + "; dmesg | grep -i tpm), bootcertd's user is in group tss, the SRK is the one the key was made under (tpm2_getcap handles-persistent); bootcertctl key info URI tests the key"
	case "pkcs11":
		return "check the PKCS#11 module path, the token label (pkcs11-tool --module MODULE -L), the object label and the PIN; bootcertctl key info URI tests the key"
	}
	return "check that the key file exists and is a PEM private key"
}

func (c *checker) checkCertificate() {
	if len(c.active.chain) == 0 {
		return
	}
	leaf := c.active.chain[0]
	name := "bootstrap certificate"
	if c.active.gen > 0 {
		name = fmt.Sprintf("operational certificate (generation %d)", c.active.gen)
	}
	if c.active.signer != nil {
		if !publicKeysEqual(c.active.signer.Public(), leaf.PublicKey) {
			fix := "the key URI names another key than the one certified: correct identity.bootstrap_key / identity.bootstrap_cert so that they belong together (bootcertctl key public URI shows the key)"
			if c.active.gen > 0 {
				fix = "the key of generation " + strconv.Itoa(c.active.gen) + " was replaced: bootcertd falls back to the bootstrap certificate; run a rotation job to make a new key"
			}
			c.add("certificate", checkFail, name+": its public key does not match the key "+redact(c.active.keyURI), fix)
			return
		}
	}
	now := c.now
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	left := leaf.NotAfter.Sub(now)
	na := leaf.NotAfter.UTC().Format(time.RFC3339)
	switch {
	case now.Before(leaf.NotBefore):
		c.add("certificate", checkFail, fmt.Sprintf("%s not valid before %s", name, leaf.NotBefore.UTC().Format(time.RFC3339)), "check the clock (see the clock check)")
	case left <= 0:
		c.add("certificate", checkFail, fmt.Sprintf("%s expired at %s", name, na), "the cloud queues a renewal before expiry; if it has expired, bootcertd falls back to the bootstrap certificate and rotates (check the rotation job, bootcert-admin)")
	case left < life/5 || left < 14*24*time.Hour:
		c.add("certificate", checkWarn, fmt.Sprintf("%s expires at %s (%s left of %s)", name, na, days(left), days(life)), "the renewal is overdue: check that the gateway is online and that the renewal function runs (docs/cloud.md)")
	default:
		c.add("certificate", checkPass, fmt.Sprintf("%s matches its key, valid until %s (%s left)", name, na, days(left)), "")
	}
}

func days(d time.Duration) string { return fmt.Sprintf("%d days", int(d.Hours()/24)) }

func redact(raw string) string {
	u, err := keystore.ParseURI(raw)
	if err != nil {
		return "(invalid key URI)"
	}
	return u.Redacted()
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	x, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && x.Equal(b)
}

// unitSettings are the sandbox settings of the unit and its drop-ins.
type unitSettings struct {
	files         []string
	readWrite     []string
	deviceAllow   []string
	devicePolicy  string
	protectSystem string
}

func readUnit(globs []string) unitSettings {
	var u unitSettings
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		for _, f := range m {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			u.files = append(u.files, f)
			sc := bufio.NewScanner(bytes.NewReader(data))
			for sc.Scan() {
				line := strings.TrimSpace(sc.Text())
				k, v, ok := strings.Cut(line, "=")
				if !ok || strings.HasPrefix(line, "#") {
					continue
				}
				switch strings.TrimSpace(k) {
				case "ReadWritePaths":
					if v == "" {
						u.readWrite = nil
					}
					for _, p := range strings.Fields(v) {
						u.readWrite = append(u.readWrite, strings.TrimLeft(p, "-+"))
					}
				case "DeviceAllow":
					if v == "" {
						u.deviceAllow = nil
					} else {
						u.deviceAllow = append(u.deviceAllow, strings.Fields(v)[0])
					}
				case "DevicePolicy":
					u.devicePolicy = v
				case "ProtectSystem":
					u.protectSystem = v
				}
			}
		}
	}
	return u
}

func under(p string, dirs []string) bool {
	p = filepath.Clean(p)
	for _, d := range dirs {
		d = filepath.Clean(d)
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// checkSandbox compares what the configured backends need with the unit's
// ReadWritePaths and DeviceAllow.
func (c *checker) checkSandbox() {
	u := readUnit(c.units)
	if len(u.files) == 0 {
		c.add("sandbox", checkSkip, "no bootcertd unit file found", "")
		return
	}
	// StateDirectory=, RuntimeDirectory= (not /tmp: PrivateTmp=yes gives
	// the daemon its own)
	writable := append([]string{"/run/bootcert", "/var/lib/bootcert"}, u.readWrite...)
	strict := u.protectSystem == "strict" || u.protectSystem == "full" || u.protectSystem == "yes"
	dropin := "systemctl edit bootcertd, then add under [Service]: "
	bad := false
	need := func(what, dir string) {
		if strict && !under(dir, writable) {
			c.add("sandbox", checkFail, fmt.Sprintf("%s %s is read-only for bootcertd (ProtectSystem=%s, not in ReadWritePaths)", what, dir, u.protectSystem), dropin+"ReadWritePaths="+dir)
			bad = true
		}
	}
	seen := map[string]bool{}
	for _, k := range c.keyURIs() {
		ku, err := keystore.ParseURI(k[1])
		if err != nil {
			continue
		}
		switch ku.Scheme {
		case "tpm":
			d, _ := ku.Get("device")
			if d == "" {
				d = "/dev/tpmrm0"
			}
			if strings.HasPrefix(d, "/dev/") && u.devicePolicy != "" && u.devicePolicy != "auto" && !contains(u.deviceAllow, d) {
				c.add("sandbox", checkFail, fmt.Sprintf("%s: TPM device %s is not in the unit's DeviceAllow (DevicePolicy=%s)", k[0], d, u.devicePolicy), dropin+"DeviceAllow="+d+" rw")
				bad = true
			}
		case "pkcs11":
			mod := ku.Query["module-path"]
			if store := tokenStore(mod); store != "" && !seen[store] {
				seen[store] = true
				need(k[0]+": the PKCS#11 token store of "+filepath.Base(mod), store)
			}
		}
	}
	if t := c.cfg.Metrics.Textfile; t != "" {
		need("metrics.textfile's directory", filepath.Dir(t))
	}
	if d := c.cfg.Export.Dir; d != "" {
		need("export.dir", d)
	}
	if !bad {
		c.add("sandbox", checkPass, "the unit ("+strings.Join(u.files, ", ")+") allows the configured backends", "")
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// tokenStore is where a PKCS#11 module keeps its objects (the daemon must
// write there to make keys): SoftHSM2's directories.tokendir, tpm2-pkcs11's
// TPM2_PKCS11_STORE (default /etc/tpm2_pkcs11).
func tokenStore(module string) string {
	switch {
	case strings.Contains(module, "softhsm"):
		conf := os.Getenv("SOFTHSM2_CONF")
		if conf == "" {
			conf = "/etc/softhsm/softhsm2.conf"
		}
		data, err := os.ReadFile(conf)
		if err != nil {
			return "/var/lib/softhsm/tokens"
		}
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok && strings.TrimSpace(k) == "directories.tokendir" {
				return strings.TrimSpace(v)
			}
		}
		return "/var/lib/softhsm/tokens"
	case strings.Contains(module, "tpm2_pkcs11") || strings.Contains(module, "tpm2-pkcs11"):
		if s := os.Getenv("TPM2_PKCS11_STORE"); s != "" {
			return s
		}
		return "/etc/tpm2_pkcs11"
	}
	return ""
}

func (c *checker) checkLockout() {
	u, err := keystore.ParseURI(c.active.keyURI)
	if err != nil || u.Scheme != "tpm" {
		c.add("lockout", checkSkip, "the active key is not in a TPM", "")
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	lo, err := keystore.ReadLockout(ctx, c.active.keyURI)
	switch {
	case err != nil:
		c.add("lockout", checkWarn, "cannot read the TPM's lockout counters: "+err.Error(), keyFix(u))
	case lo.InLockout:
		c.add("lockout", checkFail, fmt.Sprintf("the TPM is in dictionary-attack lockout (%d/%d failures)", lo.Counter, lo.MaxTries), fmt.Sprintf("find what sends wrong authorizations; wait %d s per failure (lockout interval) or clear it with the lockout authorization: tpm2_dictionarylockout --clear-lockout", lo.IntervalSeconds))
	case lo.Counter > 0:
		c.add("lockout", checkWarn, fmt.Sprintf("the TPM counted %d failed authorizations of %d before lockout", lo.Counter, lo.MaxTries), "find what sends wrong authorizations (another program using the TPM?); one failure is forgotten every "+strconv.Itoa(int(lo.IntervalSeconds))+" s")
	default:
		c.add("lockout", checkPass, fmt.Sprintf("TPM lockout counter 0 of %d", lo.MaxTries), "")
	}
}

// checkOnline connects like bootcertd does, with the thing name as client
// ID: the operational policy allows no other (its thing policy variables
// resolve only when the client ID is the thing name, thing-policy-variables.html).
// AWS IoT then closes bootcertd's own session, which reconnects at once.
func (c *checker) checkOnline() {
	cfg := c.cfg
	host, addr := cfg.Broker.Endpoint, cfg.Address()
	ctx, cancel := context.WithTimeout(c.ctx, cfg.Timeouts.Connect.D())
	defer cancel()
	px, err := proxy.Parse(cfg.Broker.Proxy)
	if err != nil {
		c.add("online", checkFail, "broker.proxy: "+err.Error(), "fix broker.proxy in the configuration")
		return
	}
	if px != nil {
		// The proxy resolves the endpoint; the gateway may have no DNS of its own.
	} else if _, err := net.DefaultResolver.LookupHost(ctx, host); err != nil {
		c.add("online", checkFail, fmt.Sprintf("broker.endpoint %s does not resolve: %v", host, err), "check DNS (resolvectl status) and broker.endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS)")
		return
	}
	if c.roots == nil || c.active.signer == nil {
		c.add("online", checkSkip, "no usable root CA or key (see above)", "")
		return
	}
	var raw [][]byte
	for _, x := range c.active.chain {
		raw = append(raw, x.Raw)
	}
	tc := &tls.Config{ServerName: host, RootCAs: c.roots, MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: raw, PrivateKey: c.active.signer, Leaf: c.active.chain[0]}},
		Time:         func() time.Time { return c.now }}
	if cfg.Broker.ALPN != "" {
		tc.NextProtos = []string{cfg.Broker.ALPN}
	}
	conn, err := proxy.Dialer{URL: px, Timeout: cfg.Timeouts.Connect.D()}.DialTLS(ctx, addr, tc)
	if err != nil {
		var ue x509.UnknownAuthorityError
		var he x509.HostnameError
		fix := "check the network path to " + addr + " (firewall, broker.proxy)"
		switch {
		case errors.As(err, &ue):
			fix = "broker.root_ca " + cfg.Broker.RootCA + " does not sign the broker's certificate: install the right CA (AmazonRootCA1.pem for AWS IoT Core ATS endpoints)"
		case errors.As(err, &he):
			fix = "broker.endpoint does not match the broker's certificate: use the ATS endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS)"
		}
		c.add("online", checkFail, fmt.Sprintf("TLS to %s: %v", addr, err), fix)
		return
	}
	defer conn.Close()
	tlsConn := conn
	alpn := tlsConn.ConnectionState().NegotiatedProtocol
	if cfg.Broker.ALPN != "" && alpn != cfg.Broker.ALPN {
		c.add("online", checkFail, fmt.Sprintf("TLS to %s: the server did not select ALPN %s", addr, cfg.Broker.ALPN), "AWS IoT Core on port 443 needs ALPN x-amzn-mqtt-ca; a proxy in between may strip it")
		return
	}
	conn.SetDeadline(time.Now().Add(cfg.Timeouts.Reply.D()))
	rc, err := mqttConnect(conn, c.thing)
	if err != nil {
		c.add("online", checkFail, fmt.Sprintf("MQTT CONNECT to %s: %v (the broker closed the connection: the certificate is not active, not attached to %s, or its policy does not allow the client ID %s)", addr, err, c.thing, c.thing),
			"bootcertctl status shows what bootcertd sees; check the certificate's status, its thing and its policy in AWS IoT")
		return
	}
	if rc != 0 {
		c.add("online", checkFail, fmt.Sprintf("MQTT CONNECT to %s refused: return code %d", addr, rc), "the broker refused the credential: check the certificate's status and policy in AWS IoT")
		return
	}
	conn.Write([]byte{0xe0, 0})
	c.add("online", checkPass, fmt.Sprintf("%s resolves, TLS with broker.root_ca%s, the broker accepts the %s", addr, map[bool]string{true: " and ALPN " + alpn}[alpn != ""], map[bool]string{true: "bootstrap certificate", false: fmt.Sprintf("generation %d certificate", c.active.gen)}[c.active.gen == 0]), "")
}

// mqttConnect sends an MQTT 3.1.1 CONNECT (clean session) and returns the
// CONNACK's return code.
func mqttConnect(rw io.ReadWriter, clientID string) (byte, error) {
	var vh bytes.Buffer
	vh.Write([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30})
	vh.Write([]byte{byte(len(clientID) >> 8), byte(len(clientID))})
	vh.WriteString(clientID)
	pkt := []byte{0x10}
	n := vh.Len()
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	pkt = append(pkt, vh.Bytes()...)
	if _, err := rw.Write(pkt); err != nil {
		return 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(rw, ack[:]); err != nil {
		return 0, err
	}
	if ack[0] != 0x20 || ack[1] != 2 {
		return 0, fmt.Errorf("not a CONNACK: % x", ack)
	}
	return ack[3], nil
}
