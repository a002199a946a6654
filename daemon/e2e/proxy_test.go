package e2e

import (
	"strings"
	"testing"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/internal/testproxy"
)

// TestRotationThroughProxy (issue 14): a gateway whose only way out is an
// HTTP proxy (broker.proxy, CONNECT with Basic credentials) onboards and
// rotates: every MQTT connection, bootstrap and operational, goes through
// the proxy, TLS end to end. A wrong proxy password is a network failure
// named in status (not a refusal of the device's credentials: the bootstrap
// certificate is not given up), and the password never appears in the log.
func TestRotationThroughProxy(t *testing.T) {
	c := newCloud(t)
	mqtt := c.lab.Endpoints().MQTT

	t.Run("rotates", func(t *testing.T) {
		p := testproxy.Start(t, "gw:proxy-secret-1")
		d := newDevice(t, c, "gw-proxy", deviceOpts{kind: onFile, configure: func(cfg *config.Config) {
			cfg.Broker.Proxy = "http://gw:proxy-secret-1@" + p.Addr()
		}})
		d.start()
		d.waitFor("operational generation 1", operational(1))
		got := p.Targets()
		if len(got) < 2 {
			t.Fatalf("the proxy tunnelled %v, want the bootstrap and the operational connections", got)
		}
		for _, target := range got {
			if target != mqtt {
				t.Errorf("tunnel to %s, want only the broker %s", target, mqtt)
			}
		}
		if strings.Contains(d.Log(), "proxy-secret-1") {
			t.Error("the proxy password is in the daemon's log")
		}
		d.stop()
	})

	t.Run("wrong-password", func(t *testing.T) {
		p := testproxy.Start(t, "gw:right")
		d := newDevice(t, c, "gw-proxy-denied", deviceOpts{kind: onFile, configure: func(cfg *config.Config) {
			cfg.Broker.Proxy = "http://gw:proxy-secret-2@" + p.Addr()
		}})
		d.start()
		st := d.waitFor("the proxy's refusal in status", func(s engine.Status) bool {
			return strings.Contains(s.LastError, "407") && p.Refused() >= 2
		})
		if st.Counters.Refusals != 0 || st.Connection == "connected" {
			t.Errorf("a proxy refusal counted as the broker's: %+v", st.Counters)
		}
		if strings.Contains(d.Log(), "proxy-secret-2") || strings.Contains(st.LastError, "proxy-secret-2") {
			t.Error("the proxy password is in the log or status")
		}
		d.stop()
	})
}
