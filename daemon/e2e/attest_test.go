package e2e

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/engine"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/manifest"
)

// attestCloud is the lab with the real template and
// AttestationPolicy=required, trusting swtpm_setup's local CA as the TPM
// manufacturer.
func attestCloud(t *testing.T, m *testenv.Manufactured) *cloudEnv {
	c := newCloudWith(t, cloudOpts{params: map[string]string{"AttestationPolicy": "required"}})
	c.put(fleet.DefaultEKRootsKey, append(append([]byte{}, m.RootPEM...), m.IssuerPEM...))
	return c
}

func manufacture(t *testing.T) *testenv.Manufactured {
	t.Helper()
	dir := t.TempDir()
	m, err := testenv.Manufacture(filepath.Join(dir, "tpm"), filepath.Join(dir, "ca"))
	if err != nil {
		testenv.Missing(t, "swtpm_setup could not manufacture a TPM with an EK certificate (run `make deps`): "+err.Error())
	}
	return m
}

// enrolAK does what bootcertctl provision does for the bootstrap key: the AK
// next to it, credential activation, the record; it returns the allow-list
// columns. swapAK then replaces the AK with another one of the same TPM
// (the cloud keeps the enrolled one).
func enrolAK(t *testing.T, swapAK bool) func(string) string {
	return func(boot string) string {
		ctx := context.Background()
		akURI, err := keystore.DefaultAKURI(boot)
		if err != nil {
			t.Fatal(err)
		}
		ek, err := keystore.ReadEndorsement(ctx, boot)
		if err != nil {
			t.Fatal(err)
		}
		ak, err := keystore.CreateAK(ctx, akURI)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := attest.NewChallenge(ek.Public, ak.Name)
		if err != nil {
			t.Fatal(err)
		}
		ans, err := keystore.ActivateCredential(ctx, akURI, ek, ch.CredentialBlob, ch.EncryptedSecret)
		if err != nil {
			t.Fatal(err)
		}
		rec, _, err := attest.Enrol(attest.Enrolment{EKCert: ek.Certificate, EKPublic: ek.Public, AKPublic: ak.Public}, ch, ans, attest.Trust{AllowUnverifiedEK: true})
		if err != nil {
			t.Fatal(err)
		}
		if swapAK {
			u, _ := keystore.ParseURI(akURI)
			blob, _ := u.Get("blob")
			if err := os.Remove(blob); err != nil {
				t.Fatal(err)
			}
			if _, err := keystore.CreateAK(ctx, akURI); err != nil {
				t.Fatal(err)
			}
		}
		cols := manifest.Entry{DeviceID: "x", Attestation: rec.Manifest()}.Record()[3:]
		return "," + strings.Join(cols, ",")
	}
}

// TestAttestedRotation: the real bootcertd with a swtpm key, the lab with
// the real template and AttestationPolicy=required: the rotation's CSR goes
// with TPM2_Certify under the factory-enrolled AK, the vendor verifies it
// and issues, and the attested-key record names the key and the AK.
func TestAttestedRotation(t *testing.T) {
	m := manufacture(t)
	c := attestCloud(t, m)
	d := newDevice(t, c, "gw-attested", deviceOpts{kind: onTPM, tpm: m, enrol: enrolAK(t, false)})
	d.start()
	st := d.waitFor("operational generation 1", operational(1))
	if !st.Active.Attested {
		t.Errorf("status does not show the active key attested: %+v", st.Active)
	}
	out, err := c.s3.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(c.bucket), Key: aws.String(fleet.LatestAttestationKey(d.name))})
	if err != nil {
		t.Fatalf("no attested-key record: %v", err)
	}
	body, _ := io.ReadAll(out.Body)
	var r fleet.AttestedKey
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	if r.EK != attest.EKCertified || r.Principal != d.bootID || r.Policy != "required" || r.KeyName == "" || r.AKName == "" {
		t.Errorf("attested-key record %+v", r)
	}
	d.stop()
}

// TestAttestationRefused: under required, a device whose evidence comes
// from another AK of its TPM, or whose new key is a software key, gets
// ATTESTATION_FAILED and no certificate, and stays connected with its
// bootstrap credential.
func TestAttestationRefused(t *testing.T) {
	for _, tc := range []struct {
		name, reason string
		swapAK       bool
		configure    func(dir string) func(*config.Config)
	}{
		{name: "another-AK", reason: "BAD_SIGNATURE", swapAK: true},
		{name: "software-key", reason: "NOT_ATTESTED", configure: func(dir string) func(*config.Config) {
			return func(cfg *config.Config) { cfg.Identity.OperationalKey = "file:" + dir + "/op-{generation}.pem" }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := manufacture(t)
			c := attestCloud(t, m)
			o := deviceOpts{kind: onTPM, tpm: m, enrol: enrolAK(t, tc.swapAK)}
			if tc.configure != nil {
				o.configure = tc.configure(t.TempDir())
			}
			d := newDevice(t, c, "gw-"+tc.name, o)
			d.start()
			st := d.waitFor("the rotation refused", func(s engine.Status) bool { return s.LastResult == "FAILED" })
			if !strings.Contains(st.LastReason+d.Log(), "ATTESTATION_FAILED") || !strings.Contains(st.LastReason+d.Log(), tc.reason) {
				t.Errorf("reason %q, want ATTESTATION_FAILED %s; log:\n%s", st.LastReason, tc.reason, tail(d.Log(), 40))
			}
			st = d.waitFor("connected with the bootstrap credential", func(s engine.Status) bool { return s.Connection == "connected" && s.ConnectedWith == 0 })
			if st.Active.Generation != 0 {
				t.Errorf("active generation %d after a refused rotation", st.Active.Generation)
			}
			list, err := c.s3.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(c.bucket), Prefix: aws.String("issuance/" + d.name + "/")})
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Contents) != 0 {
				t.Errorf("%d issuance records for a refused attestation", len(list.Contents))
			}
			d.stop()
		})
	}
}
