package daemon

import (
	"crypto/x509"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/internal/testca"
)

// checked is a Checked as diffConfig sees it: the configuration and what
// Check read from the files it names.
func checked(t *testing.T, edit func(*config.Config), boot *x509.Certificate, root *testca.CA) *Checked {
	t.Helper()
	c := config.Defaults()
	c.Broker.Endpoint, c.Broker.RootCA = "a1b2c3-ats.iot.eu-west-1.amazonaws.com", "/etc/bootcert/AmazonRootCA1.pem"
	c.Identity.BootstrapKey, c.Identity.BootstrapCert = "tpm:device=/dev/tpmrm0;handle=0x81000001", "/etc/bootcert/bootstrap.pem"
	c.Identity.OperationalKey = "tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/op-{generation}.tpmkey"
	c.Path = "/etc/bootcert/bootcertd.toml"
	if edit != nil {
		edit(&c)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	return &Checked{Config: &c, RootCAs: pool, Bootstrap: []*x509.Certificate{boot}, Thing: boot.Subject.CommonName}
}

func TestDiffConfig(t *testing.T) {
	ca, otherCA := testca.New(t, "factory CA"), testca.New(t, "other root")
	boot := ca.NewLeaf(t, "gw-1").Cert
	base := checked(t, nil, boot, ca)
	for _, tc := range []struct {
		name    string
		edit    func(*config.Config)
		boot    *x509.Certificate
		root    *testca.CA
		want    []keyChange
		restart bool
	}{
		{name: "unchanged"},
		{name: "empty list is no list", edit: func(c *config.Config) { c.Verify.IssuerSHA256 = []string{} }},
		{name: "log and metrics at once", edit: func(c *config.Config) {
			c.Log.Level, c.Metrics.Textfile = "debug", "/var/lib/prometheus/node-exporter/bootcert.prom"
		}, want: []keyChange{{"log.level", changeNow}, {"metrics.textfile", changeNow}}},
		{name: "broker reconnects", edit: func(c *config.Config) {
			c.Broker.Port, c.Broker.Proxy, c.Timeouts.KeepAlive = 443, "http://proxy:3128", config.Duration(90e9)
		}, want: []keyChange{{"broker.port", changeReconnect}, {"broker.proxy", changeReconnect}, {"timeouts.keepalive", changeReconnect}}},
		{name: "root CA file content", root: otherCA, want: []keyChange{{"broker.root_ca", changeReconnect}}},
		{name: "engine settings when idle", edit: func(c *config.Config) {
			c.Backoff.Max, c.Rotation.MaxAge, c.Rotation.RequestAfterLife = config.Duration(60e9), config.Age(400*24*3600e9), 0.9
			c.Fallback.Bootstrap, c.Verify.IssuerSHA256 = false, []string{strings.Repeat("ab", 32)}
		}, want: []keyChange{{"backoff.max", changeIdle}, {"fallback.bootstrap", changeIdle}, {"rotation.request_after_life", changeIdle},
			{"rotation.max_age", changeIdle}, {"verify.issuer_sha256", changeIdle}}},
		{name: "operational key needs a restart", edit: func(c *config.Config) {
			c.Identity.OperationalKey = "pkcs11:token=gw;object=op-{generation}"
			c.Log.Level = "warn"
		}, want: []keyChange{{"identity.operational_key", changeRestart}, {"log.level", changeNow}}, restart: true},
		{name: "state, socket, export, mode need a restart", edit: func(c *config.Config) {
			c.State.Dir, c.Control.Socket, c.Export.HooksDir = "/srv/bootcert", "/run/other.sock", "/etc/other.d"
			c.Identity.Mode, c.Identity.PreProvisioned = config.ModePreProvisioned, "tpm:device=/dev/tpmrm0;handle=0x81000002"
		}, want: []keyChange{{"identity.mode", changeRestart}, {"identity.preprovisioned_key", changeRestart}, {"state.dir", changeRestart},
			{"control.socket", changeRestart}, {"export.hooks_dir", changeRestart}}, restart: true},
		{name: "bootstrap certificate replaced in place", boot: ca.NewLeaf(t, "gw-1").Cert,
			want: []keyChange{{"identity.bootstrap_cert", changeRestart}}, restart: true},
		{name: "thing from the new certificate's CN", boot: ca.NewLeaf(t, "gw-2").Cert,
			want: []keyChange{{"identity.bootstrap_cert", changeRestart}, {"identity.thing_name", changeRestart}}, restart: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, root := boot, ca
			if tc.boot != nil {
				b = tc.boot
			}
			if tc.root != nil {
				root = tc.root
			}
			d := diffConfig(base, checked(t, tc.edit, b, root))
			if !slices.Equal(d, tc.want) {
				t.Errorf("diff %v, want %v", d, tc.want)
			}
			if got := len(d.keys(changeRestart)) > 0; got != tc.restart {
				t.Errorf("restart needed %v, want %v", got, tc.restart)
			}
		})
	}
}

// TestLiveKeysExist: every key the reload applies live is a key of the
// configuration (a renamed key would otherwise silently need a restart).
func TestLiveKeysExist(t *testing.T) {
	all := map[string]bool{}
	var walk func(prefix string, tp reflect.Type)
	walk = func(prefix string, tp reflect.Type) {
		for i := range tp.NumField() {
			f := tp.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			if prefix != "" {
				name = prefix + "." + name
			}
			if f.Type.Kind() == reflect.Struct {
				walk(name, f.Type)
				continue
			}
			all[name] = true
		}
	}
	walk("", reflect.TypeFor[config.Config]())
	for k := range liveKeys {
		if !all[k] {
			t.Errorf("liveKeys has %q, which is not a configuration key", k)
		}
	}
	for _, k := range []string{"identity.thing_name", "identity.bootstrap_key", "state.dir", "control.socket", "provisioning.claim_key"} {
		if !all[k] || classify(k) != changeRestart {
			t.Errorf("%s: want a key that needs a restart", k)
		}
	}
}
