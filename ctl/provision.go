package ctl

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/keystore"
)

func init() { register(newProvisionCmd) }

func newProvisionCmd() *cobra.Command {
	var (
		r                     factory.Provisioning
		alg, caCert, caKeyURI string
	)
	cmd := &cobra.Command{
		Use:   "provision --device-id ID --key URI --cert-out PATH --ca-cert PEM --ca-key URI --manifest FILE",
		Short: "Give a device its bootstrap identity: hardware key, certificate, manifest line",
		Long: `Provision one device on the factory station:

  1. generate the bootstrap key inside the device's hardware (--key),
  2. make a CSR with CN = device ID, signed by that key,
  3. sign it with the factory CA (--ca-cert, --ca-key),
  4. check the key is non-extractable (TPM fixedTPM+sensitiveDataOrigin,
     PKCS#11 sensitive+never-extractable),
  5. write the certificate to --cert-out (atomically),
  6. append "device_id,bootstrap_sha256,final_csr" to the manifest (last).

With --final-key (pre-provisioned mode) the operational key is generated in the
hardware too and its CSR recorded in the manifest's final_csr column.

It prints a JSON report. Re-running it for a provisioned device reports the
existing identity ("status": "exists") and changes nothing. A failure at any
step leaves nothing behind: a key it created is deleted, the certificate file
and the manifest are untouched. An existing key is never overwritten; --force
re-issues the certificate for an existing key and replaces the manifest line.
Several stations may share one manifest file: appends take a lock.

Run on the device as root, the key files and the certificate are given to
bootcertd's user (bootcert, when it exists) so that the daemon can read them;
--owner names another owner, "none" keeps them root's. Each file is chowned
before it appears under its name. When writing into a mounted device image
from a station, give the image's numeric IDs: --owner 999:999.`,
		Example: `  # device TPM (here swtpm on 127.0.0.1:2321), CA key in the station HSM
  bootcertctl provision --device-id gw-0001 \
    --key 'tpm:device=tcp:127.0.0.1:2321;blob=/mnt/dev/var/lib/bootcert/keys/bootstrap.tpmkey' \
    --cert-out /mnt/dev/etc/bootcert/bootstrap.pem \
    --ca-cert /etc/bootcert/factory-ca/ca.pem \
    --ca-key 'pkcs11:token=factory;object=factory-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/hsm-pin' \
    --manifest /srv/factory/manifest.csv

  # pre-provisioned mode: the operational key too
  bootcertctl provision ... --final-key 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/factory-op.tpmkey'

  # development with a software key
  bootcertctl provision --allow-software-key --device-id dev-1 --key file:$PWD/dev-1.key \
    --cert-out dev-1.pem --ca-cert ca/ca.pem --ca-key file:$PWD/ca/ca.key --manifest manifest.csv`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&r.DeviceID, "device-id", "", "device ID = AWS IoT thing name = certificate CN (1-64 of a-z A-Z 0-9 : _ -)")
	f.StringVar(&r.KeyURI, "key", "", "bootstrap key URI in the device's hardware (tpm: or pkcs11:)")
	f.StringVar(&r.CertOut, "cert-out", "", "where to write the bootstrap certificate (PEM)")
	f.StringVar(&caCert, "ca-cert", "", "factory CA certificate (PEM)")
	f.StringVar(&caKeyURI, "ca-key", "", "factory CA key URI")
	f.StringVar(&r.Manifest, "manifest", "", "manifest (allow list) CSV to append to; created with its header when missing")
	f.StringVar(&r.FinalKeyURI, "final-key", "", "pre-provisioned mode: operational key URI to generate and record the CSR of")
	f.StringVar(&alg, "alg", string(keystore.DefaultAlgorithm), "algorithm of the generated keys: "+algHelp())
	f.IntVar(&r.Days, "days", 3650, "bootstrap certificate validity in days (never beyond the CA's)")
	f.BoolVar(&r.Force, "force", false, "re-provision: reuse an existing key, replace the certificate file and the manifest line")
	f.BoolVar(&r.AllowSoftwareKey, "allow-software-key", false, "accept file: keys (development only: they can be copied)")
	owner := addOwnerFlag(cmd)
	f.Bool("json", true, "accepted for symmetry: the report is always JSON")
	for _, name := range []string{"device-id", "key", "cert-out", "ca-cert", "ca-key", "manifest"} {
		cmd.MarkFlagRequired(name)
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		a, err := keystore.ParseAlgorithm(alg)
		if err != nil {
			return fmt.Errorf("--alg: %w", err)
		}
		r.Algorithm = a
		if r.Owner, err = resolveOwner(*owner); err != nil {
			return err
		}
		ca, signer, err := loadCA(cmd, caCert, caKeyURI)
		if err != nil {
			return err
		}
		defer keystore.CloseSigner(signer)
		r.CACert, r.CASigner = ca, signer
		p := station()
		rep, err := p.Provision(cmd.Context(), r)
		if err != nil {
			return err
		}
		return writeJSON(cmd.OutOrStdout(), rep)
	}
	return cmd
}
