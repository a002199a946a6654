package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const base = `
[broker]
endpoint = "a1b2c3-ats.iot.us-east-1.amazonaws.com"
root_ca = "/etc/bootcert/AmazonRootCA1.pem"

[identity]
bootstrap_key = "tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/bootstrap.tpmkey"
bootstrap_cert = "/etc/bootcert/bootstrap.pem"
operational_key = "tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-{generation}.tpmkey"
`

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		repl  [2]string
		key   string // "" = ok
		check func(t *testing.T, c *Config)
	}{
		{name: "ok/defaults", check: func(t *testing.T, c *Config) {
			if c.Broker.Port != 8883 || c.Broker.ALPN != "" || c.State.Dir != "/var/lib/bootcert" || c.Fallback.Refusals != 3 || c.Timeouts.KeepAlive.D() != time.Minute {
				t.Errorf("defaults: %+v", c)
			}
			if got := c.OperationalKeyURI(7); !strings.HasSuffix(got, "op-7.tpmkey") {
				t.Errorf("OperationalKeyURI(7) = %s", got)
			}
		}},
		{name: "ok/port-443-alpn", repl: [2]string{"[broker]\n", "[broker]\nport = 443\n"}, check: func(t *testing.T, c *Config) {
			if c.Broker.ALPN != ALPN {
				t.Errorf("ALPN = %q", c.Broker.ALPN)
			}
		}},
		{name: "ok/timeouts", extra: "[timeouts]\nreply = \"2s\"\n[backoff]\ninitial=\"100ms\"\nmax=\"1s\"\n", check: func(t *testing.T, c *Config) {
			if c.Timeouts.Reply.D() != 2*time.Second || c.Backoff.Max.D() != time.Second {
				t.Errorf("%+v %+v", c.Timeouts, c.Backoff)
			}
		}},
		{name: "ok/preprovisioned", repl: [2]string{`operational_key = "tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-{generation}.tpmkey"`, "mode = \"pre-provisioned\"\npreprovisioned_key = \"tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/factory-op.tpmkey\""}},
		{name: "ok/verify", extra: "[verify]\nlocation_hosts = [\"bucket.s3.amazonaws.com\", \"127.0.0.1\"]\nissuer_sha256 = [\"" + strings.Repeat("ab", 32) + "\"]\n"},
		{name: "ok/fleet-provisioning", repl: [2]string{base[strings.Index(base, "[identity]"):], "[identity]\nmode = \"fleet-provisioning\"\noperational_key = \"tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-{generation}.tpmkey\"\n[provisioning]\nclaim_key = \"file:/etc/bootcert/claim.key\"\nclaim_cert = \"/etc/bootcert/claim.pem\"\ntemplate = \"bootcert-fleet\"\nserial_number = \"gw-1\"\n[provisioning.parameters]\nEKPubSHA256 = \"ab\"\n"}, check: func(t *testing.T, c *Config) {
			if got := c.Provisioning.Parameters; len(got) != 1 || got["EKPubSHA256"] != "ab" {
				t.Errorf("provisioning.parameters = %v", got)
			}
		}},
		{name: "fail/fleet-serial-parameter", repl: [2]string{base[strings.Index(base, "[identity]"):], "[identity]\nmode = \"fleet-provisioning\"\noperational_key = \"tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-{generation}.tpmkey\"\n[provisioning]\nclaim_key = \"file:/etc/bootcert/claim.key\"\nclaim_cert = \"/etc/bootcert/claim.pem\"\ntemplate = \"bootcert-fleet\"\nserial_number = \"gw-1\"\n[provisioning.parameters]\nSerialNumber = \"gw-2\"\n"}, key: "provisioning.parameters.SerialNumber"},
		{name: "fail/fleet-key-parameter", repl: [2]string{base[strings.Index(base, "[identity]"):], "[identity]\nmode = \"fleet-provisioning\"\noperational_key = \"tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-{generation}.tpmkey\"\n[provisioning]\nclaim_key = \"file:/etc/bootcert/claim.key\"\nclaim_cert = \"/etc/bootcert/claim.pem\"\ntemplate = \"bootcert-fleet\"\nserial_number = \"gw-1\"\nparameters.KeySHA256 = \"ab\"\n"}, key: "provisioning.parameters.KeySHA256"},
		{name: "fail/unknown-key", extra: "[control]\nsockets = \"x\"\n", key: "control.sockets"},
		{name: "fail/unknown-section-key", extra: "[logging]\nlevel = \"info\"\n", key: "logging"},
		{name: "fail/missing-endpoint", repl: [2]string{`endpoint = "a1b2c3-ats.iot.us-east-1.amazonaws.com"`, ""}, key: "broker.endpoint"},
		{name: "fail/endpoint-with-scheme", repl: [2]string{`endpoint = "a1b2c3-ats`, `endpoint = "mqtts://a1b2c3-ats`}, key: "broker.endpoint"},
		{name: "fail/port-range", repl: [2]string{"[broker]\n", "[broker]\nport = 70000\n"}, key: "broker.port"},
		{name: "fail/port-type", repl: [2]string{"[broker]\n", "[broker]\nport = \"8883\"\n"}, key: "broker.port"},
		{name: "fail/alpn", repl: [2]string{"[broker]\n", "[broker]\nalpn = \"h2\"\n"}, key: "broker.alpn"},
		{name: "fail/relative-ca", repl: [2]string{`"/etc/bootcert/AmazonRootCA1.pem"`, `"AmazonRootCA1.pem"`}, key: "broker.root_ca"},
		{name: "fail/thing-name", repl: [2]string{"[identity]\n", "[identity]\nthing_name = \"a b\"\n"}, key: "identity.thing_name"},
		{name: "fail/bad-uri", repl: [2]string{`bootstrap_key = "tpm:`, `bootstrap_key = "`}, key: "identity.bootstrap_key"},
		{name: "fail/no-generation", repl: [2]string{"op-{generation}", "op-1"}, key: "identity.operational_key"},
		{name: "fail/mode", repl: [2]string{"[identity]\n", "[identity]\nmode = \"sometimes\"\n"}, key: "identity.mode"},
		{name: "fail/preprovisioned-missing", repl: [2]string{"[identity]\n", "[identity]\nmode = \"pre-provisioned\"\n"}, key: "identity.preprovisioned_key"},
		{name: "ok/attestation-key", repl: [2]string{"[identity]\n", "[identity]\nattestation_key = \"tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/ak.tpmkey\"\n"}, check: func(t *testing.T, c *Config) {
			if c.Identity.AttestationKey != "tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/ak.tpmkey" {
				t.Errorf("attestation_key = %q", c.Identity.AttestationKey)
			}
		}},
		{name: "fail/attestation-key-not-tpm", repl: [2]string{"[identity]\n", "[identity]\nattestation_key = \"file:/var/lib/bootcert/ak.pem\"\n"}, key: "identity.attestation_key"},
		{name: "fail/attestation-key-uri", repl: [2]string{"[identity]\n", "[identity]\nattestation_key = \"ak.tpmkey\"\n"}, key: "identity.attestation_key"},
		{name: "fail/algorithm", repl: [2]string{"[identity]\n", "[identity]\nkey_algorithm = \"dsa\"\n"}, key: "identity.key_algorithm"},
		{name: "fail/duration", extra: "[timeouts]\nreply = \"soon\"\n", key: "reply"},
		{name: "fail/duration-range", extra: "[timeouts]\nkeepalive = \"1s\"\n", key: "timeouts.keepalive"},
		{name: "fail/backoff-order", extra: "[backoff]\ninitial = \"10s\"\nmax = \"1s\"\n", key: "backoff.max"},
		{name: "fail/refusals", extra: "[fallback]\nrefusals = 0\n", key: "fallback.refusals"},
		{name: "fail/issuer-pin", extra: "[verify]\nissuer_sha256 = [\"XYZ\"]\n", key: "verify.issuer_sha256[0]"},
		{name: "fail/location-host", extra: "[verify]\nlocation_hosts = [\"https://evil\"]\n", key: "verify.location_hosts[0]"},
		{name: "fail/log-level", extra: "[log]\nlevel = \"loud\"\n", key: "log.level"},
		{name: "fail/syntax", extra: "[broker\n", key: ""},
		{name: "ok/rotation-defaults", check: func(t *testing.T, c *Config) {
			r := c.Rotation
			if r.PhaseSessions != 5 || r.RequestAfterLife != 0.8 || r.MaxAge != 0 || r.RequestInterval.D() != time.Hour || c.Backoff.ResetAfter.D() != time.Minute {
				t.Errorf("rotation defaults %+v, backoff %+v", r, c.Backoff)
			}
		}},
		{name: "ok/rotation", extra: "[rotation]\nphase_sessions = 3\nrequest_after_life = 0.66\nmax_age = \"400d\"\nrequest_interval = \"30m\"\n[backoff]\nreset_after = \"10s\"\n", check: func(t *testing.T, c *Config) {
			r := c.Rotation
			if r.PhaseSessions != 3 || r.RequestAfterLife != 0.66 || r.MaxAge.D() != 400*24*time.Hour || r.RequestInterval.D() != 30*time.Minute || c.Backoff.ResetAfter.D() != 10*time.Second {
				t.Errorf("rotation %+v, backoff %+v", r, c.Backoff)
			}
		}},
		{name: "ok/max-age-hours", extra: "[rotation]\nmax_age = \"9600h\"\nrequest_after_life = 0\n", check: func(t *testing.T, c *Config) {
			if c.Rotation.MaxAge.D() != 9600*time.Hour || c.Rotation.RequestAfterLife != 0 {
				t.Errorf("rotation %+v", c.Rotation)
			}
		}},
		{name: "fail/phase-sessions", extra: "[rotation]\nphase_sessions = 0\n", key: "rotation.phase_sessions"},
		{name: "fail/request-after-life", extra: "[rotation]\nrequest_after_life = 1.5\n", key: "rotation.request_after_life"},
		{name: "fail/request-after-life-low", extra: "[rotation]\nrequest_after_life = 0.1\n", key: "rotation.request_after_life"},
		{name: "fail/max-age-unit", extra: "[rotation]\nmax_age = \"1y\"\n", key: "max_age"},
		{name: "fail/max-age-range", extra: "[rotation]\nmax_age = \"1h\"\n", key: "rotation.max_age"},
		{name: "fail/request-interval", extra: "[rotation]\nrequest_interval = \"1s\"\n", key: "rotation.request_interval"},
		{name: "fail/reset-after", extra: "[backoff]\nreset_after = \"0s\"\n", key: "backoff.reset_after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := base
			if tt.repl[0] != "" {
				if !strings.Contains(text, tt.repl[0]) {
					t.Fatalf("test bug: %q not in base", tt.repl[0])
				}
				text = strings.Replace(text, tt.repl[0], tt.repl[1], 1)
			}
			text += tt.extra
			c, err := Parse("/etc/bootcert/bootcertd.toml", []byte(text))
			if strings.HasPrefix(tt.name, "ok/") {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if tt.check != nil {
					tt.check(t, c)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse succeeded, want error on %q", tt.key)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.File != "/etc/bootcert/bootcertd.toml" {
				t.Fatalf("error %v does not name the file", err)
			}
			if tt.key != "" && !strings.Contains(ce.Key, tt.key) {
				t.Errorf("error %v names key %q, want %q", err, ce.Key, tt.key)
			}
		})
	}
}

func TestPINNeverInErrors(t *testing.T) {
	text := strings.Replace(base, "op-{generation}.tpmkey\"", "op-1.tpmkey\"", 1)
	text = strings.Replace(text, `operational_key = "tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-1.tpmkey"`,
		`operational_key = "pkcs11:token=t;object=op-1?pin-value=s3cret"`, 1)
	_, err := Parse("x.toml", []byte(text))
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error %v: want an error without the PIN", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load: %v, want ErrNotExist", err)
	}
}

func TestPackagedDefault(t *testing.T) {
	p := filepath.Join("..", "..", "packaging", "bootcertd.toml")
	if _, err := Load(p); err != nil {
		t.Fatalf("the packaged default config does not load: %v", err)
	}
}

// The errors for a missing file and an unknown key send the operator to
// ReferenceDoc: it must be a file the package installs.
func TestErrorsNameAShippedReference(t *testing.T) {
	nfpm, err := os.ReadFile(filepath.Join("..", "..", "nfpm.yaml"))
	if err != nil {
		t.Fatalf("reading nfpm.yaml: %v", err)
	}
	if !strings.Contains(string(nfpm), "dst: "+ReferenceDoc+"\n") {
		t.Fatalf("nfpm.yaml does not install %s, which config errors point to", ReferenceDoc)
	}
	_, err = Load(filepath.Join(t.TempDir(), "nope.toml"))
	if err == nil || !strings.Contains(err.Error(), ReferenceDoc) {
		t.Errorf("missing file: error %v does not name %s", err, ReferenceDoc)
	}
	_, err = Parse("x.toml", []byte(base+"[log]\nlevle = \"debug\"\n"))
	if err == nil || !strings.Contains(err.Error(), "log.levle") || !strings.Contains(err.Error(), ReferenceDoc) {
		t.Errorf("unknown key: error %v does not name the key and %s", err, ReferenceDoc)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Add([]byte(base + "[timeouts]\nreply=\"1s\"\n"))
	f.Add([]byte("[broker]\nport = 1e9\n"))
	f.Add([]byte("a = [1, \"x\"]\n"))
	f.Add([]byte("[verify]\nlocation_hosts = [ 'a', \"b\\u0041\" ]\n[broker]\nport = 0x1_F\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		// what this decoder accepts, the reference decodes the same
		dec := Defaults()
		if decodeTOML("fuzz.toml", data, &dec) == nil {
			ref, err := burntSushi(t, string(data))
			if err != nil {
				t.Fatalf("decodeTOML accepted what BurntSushi/toml refuses (%v): %q", err, data)
			}
			if !reflect.DeepEqual(dec, ref) {
				t.Fatalf("decoders differ on %q:\n got %+v\nwant %+v", data, dec, ref)
			}
		}
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		if c.Broker.Endpoint == "" || c.Identity.BootstrapKey == "" || c.Broker.Port < 1 {
			t.Fatalf("accepted an invalid config: %+v", c)
		}
	})
}

func TestAgeText(t *testing.T) {
	for in, want := range map[string]time.Duration{"365d": 365 * 24 * time.Hour, "0": 0, "36h": 36 * time.Hour} {
		var a Age
		if err := a.UnmarshalText([]byte(in)); err != nil || a.D() != want {
			t.Errorf("%q: %s %v, want %s", in, a.D(), err, want)
		}
		out, _ := a.MarshalText()
		var b Age
		if err := b.UnmarshalText(out); err != nil || b != a {
			t.Errorf("%q does not round-trip through %q", in, out)
		}
	}
	for _, in := range []string{"d", "-1d", "1.5d", "99999999d", "soon"} {
		var a Age
		if err := a.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("%q accepted as %s", in, a.D())
		}
	}
}
