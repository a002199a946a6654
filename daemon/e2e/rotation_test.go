package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/daemon/engine"
)

// TestRotation: JITR first connect (refused, retried), the continuous job,
// a key staged in hardware, CSR over MQTT, swap, ack over the new
// certificate, commit, then a second rotation (renewal) that destroys the
// first operational key and never the bootstrap key.
func TestRotation(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind keyKind
	}{{"tpm", onTPM}, {"pkcs11", onPKCS11}, {"tpm2-pkcs11", onTPM2PKCS11}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCloud(t)
			d := newDevice(t, c, "gw-"+tc.name, deviceOpts{kind: tc.kind})
			d.start()
			st := d.waitFor("operational generation 1", operational(1))
			if !strings.HasPrefix(st.Summary, "operational, certificate expires ") || st.LastResult != "SUCCEEDED" {
				t.Errorf("status %+v", st)
			}
			if !strings.Contains(d.Log(), "refused") {
				t.Errorf("no JITR refusal in the log: the first connect should be refused")
			}
			if s, det := c.jobStatus(d.name); s != types.JobExecutionStatusSucceeded {
				t.Errorf("job execution %s %v, want SUCCEEDED", s, det)
			}
			if got := c.certStatus(st.Active.CertificateID); got != types.CertificateStatusActive {
				t.Errorf("new certificate %s", got)
			}
			if got := c.certStatus(d.bootID); got != types.CertificateStatusInactive {
				t.Errorf("bootstrap certificate %s, want INACTIVE", got)
			}
			if st.Active.Backend != map[keyKind]string{onTPM: "tpm", onPKCS11: "pkcs11", onTPM2PKCS11: "pkcs11"}[tc.kind] || strings.Contains(st.Active.KeyURI, "1234") || strings.Contains(st.Active.KeyURI, "Tpm-User") {
				t.Errorf("active key %q backend %q", st.Active.KeyURI, st.Active.Backend)
			}
			// renewal
			c.addToRotation(d.name)
			d.waitFor("operational generation 2", operational(2))
			if tc.kind == onTPM {
				keys := filepath.Join(d.dir, "keys")
				if _, err := os.Stat(filepath.Join(keys, "op-1.tpmkey")); !os.IsNotExist(err) {
					t.Errorf("generation 1 key not destroyed: %v", err)
				}
				if _, err := os.Stat(filepath.Join(keys, "bootstrap.tpmkey")); err != nil {
					t.Errorf("bootstrap key gone: %v", err)
				}
			}
			d.stop()
			if !strings.Contains(d.Log(), "stopping") {
				t.Error("no graceful stop in the log")
			}
		})
	}
}

var _ = engine.Status{}
