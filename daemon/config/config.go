// Package config loads bootcertd's TOML configuration strictly: unknown keys
// and invalid values are errors naming the file and the key, and an absent
// key gets its documented default.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bootcert/bootcert/daemon/proxy"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// DefaultPath is where bootcertd looks for its configuration.
const DefaultPath = "/etc/bootcert/bootcertd.toml"

// MaxSize bounds the configuration file.
const MaxSize = 256 << 10

// GenerationPlaceholder is replaced by the credential generation number in
// Identity.OperationalKey.
const GenerationPlaceholder = "{generation}"

// ALPN is the protocol name AWS IoT Core needs for MQTT over port 443.
const ALPN = "x-amzn-mqtt-ca"

// Modes of rotation.
const (
	ModeOnDemand       = "on-demand"
	ModePreProvisioned = "pre-provisioned"
	// ModeFleetProvisioning onboards by claim (AWS IoT fleet provisioning,
	// section [provisioning]) instead of a bootstrap certificate.
	ModeFleetProvisioning = "fleet-provisioning"
)

// ErrInvalid is wrapped by every error about a bad configuration.
var ErrInvalid = errors.New("invalid configuration")

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write e.g. \"30s\", \"5m\")", string(b))
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is bootcertd's configuration.
type Config struct {
	Broker   Broker   `toml:"broker" json:"broker"`
	Identity Identity `toml:"identity" json:"identity"`
	State    State    `toml:"state" json:"state"`
	Timeouts Timeouts `toml:"timeouts" json:"timeouts"`
	Backoff  Backoff  `toml:"backoff" json:"backoff"`
	Fallback Fallback `toml:"fallback" json:"fallback"`
	Rotation Rotation `toml:"rotation" json:"rotation"`
	Verify   Verify   `toml:"verify" json:"verify"`
	Control  Control  `toml:"control" json:"control"`
	Log      Log      `toml:"log" json:"log"`
	Export   Export   `toml:"export" json:"export"`
	Metrics  Metrics  `toml:"metrics" json:"metrics"`
	// Provisioning is used with identity.mode = "fleet-provisioning".
	Provisioning Provisioning `toml:"provisioning" json:"provisioning,omitzero"`

	// Path is the file the configuration was read from.
	Path string `toml:"-" json:"path"`
}

// Broker says where AWS IoT Core (or the lab) is.
type Broker struct {
	Endpoint string `toml:"endpoint" json:"endpoint"`
	Port     int    `toml:"port" json:"port"`
	RootCA   string `toml:"root_ca" json:"root_ca"`
	// ALPN is set automatically to x-amzn-mqtt-ca on port 443.
	ALPN string `toml:"alpn" json:"alpn,omitempty"`
	// Proxy is an HTTP proxy (http://[user:password@]host:port) the MQTT
	// connection and certificate downloads are tunnelled through with
	// CONNECT; "" connects directly. The environment's HTTPS_PROXY is not
	// read (a systemd service does not get /etc/environment).
	Proxy string `toml:"proxy" json:"proxy,omitempty"`
}

// Identity names the device's keys and certificates.
type Identity struct {
	ThingName      string `toml:"thing_name" json:"thing_name,omitempty"`
	BootstrapKey   string `toml:"bootstrap_key" json:"bootstrap_key"`
	BootstrapCert  string `toml:"bootstrap_cert" json:"bootstrap_cert"`
	OperationalKey string `toml:"operational_key" json:"operational_key"`
	KeyAlgorithm   string `toml:"key_algorithm" json:"key_algorithm"`
	Mode           string `toml:"mode" json:"mode"`
	PreProvisioned string `toml:"preprovisioned_key" json:"preprovisioned_key,omitempty"`
	// AttestationKey is the TPM attestation key (AK) that certifies each
	// new key (docs/attestation.md); "" uses the one `bootcertctl provision`
	// puts next to a tpm: bootstrap key (blob=DIR/X.tpmkey gives
	// DIR/X.ak.tpmkey, a handle gives 0x81000002; keystore.DefaultAKURI).
	AttestationKey string `toml:"attestation_key" json:"attestation_key,omitempty"`
}

// Provisioning is onboarding by claim (AWS IoT fleet provisioning).
type Provisioning struct {
	// ClaimKey and ClaimCert are the claim credential shared by a batch
	// (key URI: file, tpm or pkcs11). The claim key is never the
	// operational key.
	ClaimKey  string `toml:"claim_key" json:"claim_key"`
	ClaimCert string `toml:"claim_cert" json:"claim_cert"`
	// Template is the provisioning template name (bootcert-fleet).
	Template string `toml:"template" json:"template"`
	// SerialNumber is the device's serial number, its thing name.
	SerialNumber string `toml:"serial_number" json:"serial_number"`
	// Parameters are extra RegisterThing parameters (e.g. EKPubSHA256).
	Parameters map[string]string `toml:"parameters" json:"parameters,omitempty"`
}

// State is where the journal and credential generations live.
type State struct {
	Dir string `toml:"dir" json:"dir"`
}

// Timeouts bound network waits.
type Timeouts struct {
	Connect   Duration `toml:"connect" json:"connect"`
	Reply     Duration `toml:"reply" json:"reply"`
	KeepAlive Duration `toml:"keepalive" json:"keepalive"`
	Shutdown  Duration `toml:"shutdown" json:"shutdown"`
}

// Backoff is exponential with full jitter, capped. It starts again from
// Initial only after a session that lasted ResetAfter or moved a rotation on.
type Backoff struct {
	Initial    Duration `toml:"initial" json:"initial"`
	Max        Duration `toml:"max" json:"max"`
	ResetAfter Duration `toml:"reset_after" json:"reset_after"`
}

// Fallback is the rollback and recovery policy.
type Fallback struct {
	// Refusals within Window of a just-switched credential roll it back.
	Refusals int      `toml:"refusals" json:"refusals"`
	Window   Duration `toml:"window" json:"window"`
	// Bootstrap allows falling back to the bootstrap certificate when the
	// operational one is expired or keeps being refused.
	Bootstrap bool `toml:"bootstrap" json:"bootstrap"`
}

// Verify is how a new certificate is checked.
type Verify struct {
	// IssuerSHA256 pins the issuer: lower-hex SHA-256 of the issuing CA
	// certificate's DER, or of its SubjectPublicKeyInfo. Empty: no pin.
	IssuerSHA256 []string `toml:"issuer_sha256" json:"issuer_sha256,omitempty"`
	// LocationHosts are the hosts a certificate may be downloaded from
	// (HTTPS only). Empty: never download.
	LocationHosts []string `toml:"location_hosts" json:"location_hosts,omitempty"`
	// LocationCA optionally adds a CA file for location downloads (the lab).
	LocationCA string `toml:"location_ca" json:"location_ca,omitempty"`
}

// Control is the local control socket.
type Control struct {
	Socket string `toml:"socket" json:"socket"`
}

// Log is the logging setup.
type Log struct {
	Level string `toml:"level" json:"level"`
}

// Export shares the device's identity with other gateway software
// (daemon/identity): stable paths for the current certificate chain and
// key URI, and hooks run after every commit and rollback.
type Export struct {
	// Dir receives cert.pem, key.uri and identity.json ("": off).
	Dir string `toml:"dir" json:"dir"`
	// HooksDir holds executables run after a commit or rollback ("": off;
	// a missing directory runs none).
	HooksDir    string   `toml:"hooks_dir" json:"hooks_dir"`
	HookTimeout Duration `toml:"hook_timeout" json:"hook_timeout"`
}

// Metrics is the Prometheus textfile (daemon/metrics).
type Metrics struct {
	// Textfile is the .prom file node_exporter's textfile collector reads
	// ("": off).
	Textfile string `toml:"textfile" json:"textfile"`
}

// Defaults returns a Config with every default filled in.
func Defaults() Config {
	return Config{
		Broker:   Broker{Port: 8883},
		Identity: Identity{KeyAlgorithm: string(keystore.DefaultAlgorithm), Mode: ModeOnDemand},
		State:    State{Dir: "/var/lib/bootcert"},
		Timeouts: Timeouts{Connect: Duration(30 * time.Second), Reply: Duration(30 * time.Second), KeepAlive: Duration(60 * time.Second), Shutdown: Duration(5 * time.Second)},
		Backoff:  Backoff{Initial: Duration(time.Second), Max: Duration(5 * time.Minute), ResetAfter: Duration(time.Minute)},
		Fallback: Fallback{Refusals: 3, Window: Duration(10 * time.Minute), Bootstrap: true},
		Rotation: DefaultRotation(),
		Control:  Control{Socket: "/run/bootcert/control.sock"},
		Log:      Log{Level: "info"},
		Export:   Export{Dir: "/run/bootcert/identity", HooksDir: "/etc/bootcert/hooks.d", HookTimeout: Duration(30 * time.Second)},
	}
}

// Error names the file and the key of a bad value.
type Error struct {
	File   string
	Key    string
	Reason string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("config %s: %s", e.File, e.Reason)
	}
	return fmt.Sprintf("config %s: %s: %s", e.File, e.Key, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

// ReferenceDoc is where the installed package describes every key
// (docs/bootcertd.md, shipped by nfpm.yaml); errors point the operator to it.
const ReferenceDoc = "/usr/share/doc/bootcert/bootcertd.md"

// Load reads and validates a configuration file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w (the bootcert package installs a commented default as /etc/bootcert/bootcertd.toml; every key is described in %s)", path, err, ReferenceDoc)
	}
	return Parse(path, data)
}

// Parse decodes and validates configuration text; name is the file name used
// in errors.
func Parse(name string, data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, &Error{File: name, Reason: fmt.Sprintf("file larger than %d bytes", MaxSize)}
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, &Error{File: name, Reason: "file contains NUL bytes: not a TOML text file"}
	}
	c := Defaults()
	if err := decodeTOML(name, data, &c); err != nil {
		return nil, err
	}
	c.Path = name
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) validate() error {
	bad := func(key, format string, args ...any) error {
		return &Error{File: c.Path, Key: key, Reason: fmt.Sprintf(format, args...)}
	}
	missing := func(key, what string) error {
		return &Error{File: c.Path, Key: key, Reason: "missing: " + what}
	}
	b := &c.Broker
	if b.Endpoint == "" {
		return missing("broker.endpoint", "the AWS IoT Core device data endpoint (aws iot describe-endpoint --endpoint-type iot:Data-ATS)")
	}
	if strings.ContainsAny(b.Endpoint, " /:@?#") || net.ParseIP(b.Endpoint) == nil && !validHost(b.Endpoint) {
		return bad("broker.endpoint", "%q is not a host name or IP address (no scheme, no port: give the port in broker.port)", b.Endpoint)
	}
	if b.Port < 1 || b.Port > 65535 {
		return bad("broker.port", "%d is not a TCP port (use 8883, or 443 with ALPN)", b.Port)
	}
	if b.ALPN == "" && b.Port == 443 {
		b.ALPN = ALPN
	}
	if b.ALPN != "" && b.ALPN != ALPN {
		return bad("broker.alpn", "%q is not supported (use %q, or leave it out)", b.ALPN, ALPN)
	}
	if b.Proxy != "" {
		if _, err := proxy.Parse(b.Proxy); err != nil {
			return bad("broker.proxy", "%v", err)
		}
	}
	if b.RootCA == "" {
		return missing("broker.root_ca", "the CA file that signs the broker's server certificate (AmazonRootCA1.pem)")
	}
	if err := absPath(b.RootCA); err != nil {
		return bad("broker.root_ca", "%v", err)
	}
	id := &c.Identity
	if id.ThingName != "" {
		if err := protocol.ValidThingName(id.ThingName); err != nil {
			return bad("identity.thing_name", "%v; leave it out to use the bootstrap certificate's CN", err)
		}
	}
	if id.Mode == ModeFleetProvisioning {
		if err := c.validateProvisioning(bad, missing); err != nil {
			return err
		}
	} else if id.BootstrapKey == "" {
		return missing("identity.bootstrap_key", "the URI of the bootstrap key (tpm:..., pkcs11:...)")
	}
	if id.Mode != ModeFleetProvisioning {
		if err := c.validateBootstrap(bad, missing); err != nil {
			return err
		}
	}
	if err := c.validateMode(bad, missing); err != nil {
		return err
	}
	if ak := c.Identity.AttestationKey; ak != "" {
		u, err := keystore.ParseURI(ak)
		if err != nil {
			return bad("identity.attestation_key", "%v", err)
		}
		if u.Scheme != "tpm" {
			return bad("identity.attestation_key", "%q is a %s: key; an attestation key lives in a TPM (tpm:)", u.Redacted(), u.Scheme)
		}
	}
	return c.validateRest(bad, missing)
}

func (c *Config) validateBootstrap(bad func(key, format string, args ...any) error, missing func(key, what string) error) error {
	id := &c.Identity
	if _, err := keystore.ParseURI(id.BootstrapKey); err != nil {
		return bad("identity.bootstrap_key", "%v", err)
	}
	if strings.Contains(id.BootstrapKey, GenerationPlaceholder) {
		return bad("identity.bootstrap_key", "must not contain %s", GenerationPlaceholder)
	}
	if id.BootstrapCert == "" {
		return missing("identity.bootstrap_cert", "the bootstrap certificate PEM file")
	}
	if err := absPath(id.BootstrapCert); err != nil {
		return bad("identity.bootstrap_cert", "%v", err)
	}
	return nil
}

func (c *Config) validateMode(bad func(key, format string, args ...any) error, missing func(key, what string) error) error {
	id := &c.Identity
	switch id.Mode {
	case ModeFleetProvisioning:
		if id.OperationalKey == "" {
			return missing("identity.operational_key", "a key URI template with {generation}: the key made in the TPM or token at onboarding and every rotation")
		}
		if _, err := keystore.ParseURI(strings.ReplaceAll(id.OperationalKey, GenerationPlaceholder, "1")); err != nil {
			return bad("identity.operational_key", "%v", err)
		}
		if !strings.Contains(id.OperationalKey, GenerationPlaceholder) {
			return bad("identity.operational_key", "must contain %s", GenerationPlaceholder)
		}
		if strings.ReplaceAll(id.OperationalKey, GenerationPlaceholder, "1") == c.Provisioning.ClaimKey {
			return bad("identity.operational_key", "must differ from provisioning.claim_key: the claim key is never the operational key")
		}
		if id.PreProvisioned != "" {
			return bad("identity.preprovisioned_key", "only used with mode = %q", ModePreProvisioned)
		}
	case ModeOnDemand:
		if id.OperationalKey == "" {
			return missing("identity.operational_key", "a key URI template with {generation}, e.g. tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-{generation}.tpmkey")
		}
		u, err := keystore.ParseURI(strings.ReplaceAll(id.OperationalKey, GenerationPlaceholder, "1"))
		if err != nil {
			return bad("identity.operational_key", "%v", err)
		}
		if !strings.Contains(id.OperationalKey, GenerationPlaceholder) {
			return bad("identity.operational_key", "%q must contain %s so that every generation has its own key", u.Redacted(), GenerationPlaceholder)
		}
		if id.OperationalKey == id.BootstrapKey {
			return bad("identity.operational_key", "must differ from identity.bootstrap_key")
		}
		if id.PreProvisioned != "" {
			return bad("identity.preprovisioned_key", "only used with mode = %q", ModePreProvisioned)
		}
	case ModePreProvisioned:
		if id.PreProvisioned == "" {
			return missing("identity.preprovisioned_key", "the URI of the operational key made at the factory")
		}
		if _, err := keystore.ParseURI(id.PreProvisioned); err != nil {
			return bad("identity.preprovisioned_key", "%v", err)
		}
		if id.PreProvisioned == id.BootstrapKey {
			return bad("identity.preprovisioned_key", "must differ from identity.bootstrap_key")
		}
		if id.OperationalKey != "" && !strings.Contains(id.OperationalKey, GenerationPlaceholder) {
			return bad("identity.operational_key", "must contain %s", GenerationPlaceholder)
		}
	default:
		return bad("identity.mode", "%q is not %q, %q or %q", id.Mode, ModeOnDemand, ModePreProvisioned, ModeFleetProvisioning)
	}
	return nil
}

func (c *Config) validateProvisioning(bad func(key, format string, args ...any) error, missing func(key, what string) error) error {
	p, id := &c.Provisioning, &c.Identity
	if id.BootstrapKey != "" || id.BootstrapCert != "" {
		return bad("identity.bootstrap_key", "not used with mode = %q (the claim is provisioning.claim_key and provisioning.claim_cert)", ModeFleetProvisioning)
	}
	if p.ClaimKey == "" {
		return missing("provisioning.claim_key", "the URI of the claim key (file:, tpm:, pkcs11:)")
	}
	if _, err := keystore.ParseURI(p.ClaimKey); err != nil {
		return bad("provisioning.claim_key", "%v", err)
	}
	if p.ClaimCert == "" {
		return missing("provisioning.claim_cert", "the claim certificate PEM file (bootcert-admin cloud setup --claim-out)")
	}
	if err := absPath(p.ClaimCert); err != nil {
		return bad("provisioning.claim_cert", "%v", err)
	}
	if p.Template == "" {
		return missing("provisioning.template", "the fleet provisioning template name (bootcert-fleet)")
	}
	if strings.ContainsAny(p.Template, "/#+") {
		return bad("provisioning.template", "%q is not a template name", p.Template)
	}
	if p.SerialNumber == "" {
		return missing("provisioning.serial_number", "the device's serial number (its thing name, as on the allow list)")
	}
	if err := protocol.ValidThingName(p.SerialNumber); err != nil {
		return bad("provisioning.serial_number", "%v", err)
	}
	for _, k := range []string{protocol.ParamSerialNumber, protocol.ParamKeySHA256} {
		if _, ok := p.Parameters[k]; ok {
			return bad("provisioning.parameters."+k, "is set by bootcert (%s), not in the configuration: remove it", paramSource[k])
		}
	}
	if id.ThingName != "" && id.ThingName != p.SerialNumber {
		return bad("identity.thing_name", "%q differs from provisioning.serial_number %q (the template names the thing by the serial number)", id.ThingName, p.SerialNumber)
	}
	return nil
}

// paramSource says who sets the template parameters bootcert owns.
var paramSource = map[string]string{
	protocol.ParamSerialNumber: "from provisioning.serial_number",
	protocol.ParamKeySHA256:    "by the pre-provisioning hook from the device's new key",
}

func (c *Config) validateRest(bad func(key, format string, args ...any) error, missing func(key, what string) error) error {
	id := &c.Identity
	if _, err := keystore.ParseAlgorithm(id.KeyAlgorithm); err != nil {
		return bad("identity.key_algorithm", "%v", err)
	}
	if c.State.Dir == "" {
		return missing("state.dir", "a directory for the journal and credentials")
	}
	if err := absPath(c.State.Dir); err != nil {
		return bad("state.dir", "%v", err)
	}
	t := c.Timeouts
	for _, d := range []struct {
		key    string
		v      Duration
		lo, hi time.Duration
	}{
		{"timeouts.connect", t.Connect, time.Second, time.Hour},
		{"timeouts.reply", t.Reply, 100 * time.Millisecond, time.Hour},
		{"timeouts.keepalive", t.KeepAlive, 5 * time.Second, 20 * time.Minute},
		{"timeouts.shutdown", t.Shutdown, 0, time.Minute},
		{"backoff.initial", c.Backoff.Initial, 10 * time.Millisecond, time.Hour},
		{"backoff.max", c.Backoff.Max, 10 * time.Millisecond, 24 * time.Hour},
		{"fallback.window", c.Fallback.Window, time.Second, 7 * 24 * time.Hour},
	} {
		if d.v.D() < d.lo || d.v.D() > d.hi {
			return bad(d.key, "%s is out of range [%s, %s]", d.v.D(), d.lo, d.hi)
		}
	}
	if c.Backoff.Max < c.Backoff.Initial {
		return bad("backoff.max", "%s is less than backoff.initial %s", c.Backoff.Max.D(), c.Backoff.Initial.D())
	}
	if c.Fallback.Refusals < 1 || c.Fallback.Refusals > 100 {
		return bad("fallback.refusals", "%d is out of range [1, 100]", c.Fallback.Refusals)
	}
	if err := c.validateRotation(); err != nil {
		return err
	}
	for i, h := range c.Verify.IssuerSHA256 {
		if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
			return bad(fmt.Sprintf("verify.issuer_sha256[%d]", i), "%q is not 64 lower-hex characters", h)
		}
	}
	for i, h := range c.Verify.LocationHosts {
		if !validHost(h) && net.ParseIP(h) == nil {
			return bad(fmt.Sprintf("verify.location_hosts[%d]", i), "%q is not a host name (no scheme, no path)", h)
		}
	}
	if c.Verify.LocationCA != "" {
		if err := absPath(c.Verify.LocationCA); err != nil {
			return bad("verify.location_ca", "%v", err)
		}
	}
	if c.Control.Socket != "" {
		if err := absPath(c.Control.Socket); err != nil {
			return bad("control.socket", "%v", err)
		}
		if len(c.Control.Socket) > 100 {
			return bad("control.socket", "path longer than 100 bytes (Unix socket limit)")
		}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	for _, p := range []struct{ key, v string }{{"export.dir", c.Export.Dir}, {"export.hooks_dir", c.Export.HooksDir}, {"metrics.textfile", c.Metrics.Textfile}} {
		if p.v != "" {
			if err := absPath(p.v); err != nil {
				return bad(p.key, "%v (or \"\" to turn it off)", err)
			}
		}
	}
	if d := c.Export.HookTimeout.D(); d < time.Second || d > 10*time.Minute {
		return bad("export.hook_timeout", "%s is out of range [1s, 10m]", d)
	}
	if t := c.Metrics.Textfile; t != "" && !strings.HasSuffix(t, ".prom") {
		return bad("metrics.textfile", "%q must end in .prom (node_exporter's textfile collector reads only *.prom)", t)
	}
	return nil
}

func absPath(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%q is not an absolute path", p)
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("path contains NUL")
	}
	return nil
}

func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// OperationalKeyURI is the key URI of a generation.
func (c *Config) OperationalKeyURI(gen int) string {
	return strings.ReplaceAll(c.Identity.OperationalKey, GenerationPlaceholder, fmt.Sprint(gen))
}

// Address is host:port of the broker.
func (c *Config) Address() string {
	return net.JoinHostPort(c.Broker.Endpoint, fmt.Sprint(c.Broker.Port))
}
