package e2e

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/keystore"
)

// claim is a batch's claim credential, made as bootcert-admin cloud setup
// --claim-csr does (the claim key is a file here: a factory line that only
// flashes firmware copies it into every image).
type claim struct {
	keyURI, certFile, id string
}

func (c *cloudEnv) claim(t testing.TB) claim {
	t.Helper()
	dir := t.TempDir()
	uri := "file:" + filepath.Join(dir, "claim.pem")
	k, err := keystore.Generate(context.Background(), uri, keystore.ECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bootcert claim"}}, k)
	keystore.CloseSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	res, err := setup.Claim(context.Background(), c.api, setup.ClaimOptions{CSRPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})})
	if err != nil {
		t.Fatalf("setup.Claim: %v", err)
	}
	f := filepath.Join(dir, "claim-cert.pem")
	os.WriteFile(f, []byte(res.CertificatePEM), 0o600)
	return claim{keyURI: uri, certFile: f, id: res.CertificateID}
}

// claimDevice is a device configured to onboard by claim.
func claimDevice(t *testing.T, c *cloudEnv, cl claim, name string, kind keyKind) *device {
	d := newDevice(t, c, name, deviceOpts{kind: kind, notAllowed: true, configure: func(cfg *config.Config) {
		cfg.Identity.Mode = config.ModeFleetProvisioning
		cfg.Identity.BootstrapKey, cfg.Identity.BootstrapCert = "", ""
		cfg.Provisioning = config.Provisioning{ClaimKey: cl.keyURI, ClaimCert: cl.certFile, Template: "bootcert-fleet", SerialNumber: name}
	}})
	c.allowDevice(name + ",,")
	return d
}

// TestFleetProvisioning: the real bootcertd onboards by claim (key made in
// the TPM or token, CreateCertificateFromCsr, RegisterThing through the
// real template and hook), then rotates through the continuous job like a
// JITR device; the claim certificate stays ACTIVE for the next device.
func TestFleetProvisioning(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind keyKind
	}{{"tpm", onTPM}, {"pkcs11", onPKCS11}, {"tpm2-pkcs11", onTPM2PKCS11}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCloud(t)
			cl := c.claim(t)
			d := claimDevice(t, c, cl, "gw-fp-"+tc.name, tc.kind)
			d.start()
			// generation 1 is the provisioned certificate; the thing is in
			// the rotation group, so the continuous job rotates it to 2.
			st := d.waitFor("operational generation 2", operational(2))
			if st.LastResult != "SUCCEEDED" {
				t.Errorf("status %+v", st)
			}
			log := d.Log()
			for _, want := range []string{"CreateCertificateFromCsr accepted", "RegisterThing accepted", "onboarded by claim"} {
				if !strings.Contains(log, want) {
					t.Errorf("no %q in the log", want)
				}
			}
			if s, det := c.jobStatus(d.name); s != types.JobExecutionStatusSucceeded {
				t.Errorf("job execution %s %v, want SUCCEEDED", s, det)
			}
			if got := c.certStatus(cl.id); got != types.CertificateStatusActive {
				t.Errorf("claim certificate %s, want ACTIVE", got)
			}
			if st.Active.KeyURI == cl.keyURI || strings.HasPrefix(st.Active.KeyURI, "file:") {
				t.Errorf("operational key %q is not in hardware", st.Active.KeyURI)
			}
			th, err := c.api.DescribeThing(context.Background(), &iot.DescribeThingInput{ThingName: aws.String(d.name)})
			if err != nil || th.Attributes["operationalCert"] != st.Active.CertificateID {
				t.Errorf("thing %s: %+v %v (want operationalCert %s)", d.name, th, err, st.Active.CertificateID)
			}
			if tc.kind == onTPM {
				if _, err := os.Stat(filepath.Join(d.dir, "keys", "op-1.tpmkey")); !os.IsNotExist(err) {
					t.Errorf("generation 1 key (the provisioned one) not destroyed after the rotation: %v", err)
				}
			}
			if _, err := os.Stat(strings.TrimPrefix(cl.keyURI, "file:")); err != nil {
				t.Errorf("claim key gone: %v", err)
			}
			d.stop()
		})
	}
}
