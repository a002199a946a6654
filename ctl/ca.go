package ctl

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/factory"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/keystore"
)

func init() { register(newCACmd) }

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Factory CA: create it, sign device CSRs, revoke device certificates, refresh the CRL",
		Long: `The factory CA signs the devices' bootstrap certificates. Its key is best
kept in the station's PKCS#11 HSM (--key pkcs11:...); without --key it is a
software key written beside the certificate (development).

Register ca.pem with AWS IoT (bootcert-admin cloud setup) and upload the CRL
(ca revoke / ca crl) with the manifest.`,
	}
	cmd.AddCommand(newCACreateCmd(), newCASignCmd(), newCARevokeCmd(), newCACRLCmd())
	return cmd
}

func newCACreateCmd() *cobra.Command {
	var (
		out, keyURI, cn, alg string
		days                 int
	)
	cmd := &cobra.Command{
		Use:   "create --out DIR",
		Short: "Create the factory CA (self-signed, path length 0)",
		Long: `Create a self-signed factory CA certificate, DIR/ca.pem. With --key the CA key
is that key (used when it exists, generated with --alg when it does not),
ideally in an HSM. Without --key a software key is generated as DIR/ca.key
(mode 0600) and the CA key URI is then file:DIR/ca.key. An existing ca.pem or
ca.key is never overwritten.`,
		Example: `  # CA key in the station's HSM (SoftHSM2 shown)
  bootcertctl ca create --out /etc/bootcert/factory-ca --cn "Acme Factory CA 2026" \
    --key 'pkcs11:token=factory;object=factory-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/hsm-pin'

  # development: software key in DIR/ca.key
  bootcertctl ca create --out ./ca --days 3650`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&out, "out", "", "directory for ca.pem (and ca.key without --key); created when missing (required)")
	cmd.Flags().StringVar(&keyURI, "key", "", "CA key URI (pkcs11:, tpm:, file:); default: a new software key file:DIR/ca.key")
	cmd.Flags().StringVar(&cn, "cn", "bootcert factory CA", "subject common name of the CA")
	cmd.Flags().IntVar(&days, "days", 7300, "validity in days; device certificates never outlive the CA")
	cmd.Flags().StringVar(&alg, "alg", string(keystore.DefaultAlgorithm), "algorithm when the key is generated: "+algHelp())
	cmd.MarkFlagRequired("out")
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		a, err := keystore.ParseAlgorithm(alg)
		if err != nil {
			return fmt.Errorf("--alg: %w", err)
		}
		res, err := station().InitCA(cmd.Context(), factory.CASpec{Dir: out, KeyURI: keyURI, Algorithm: a, CommonName: cn, Days: days})
		if err != nil {
			return err
		}
		if *jsonOut {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		hw := "no: software key, development only; keep it offline or use --key pkcs11:..."
		if res.Hardware {
			hw = "yes"
		}
		return writeFields(cmd.OutOrStdout(),
			"certificate", res.Certificate,
			"key", res.KeyURI,
			"key in hardware", hw,
			"subject", res.Subject,
			"serial", res.Serial,
			"not after", res.NotAfter.Format(time.RFC3339),
			"sha256", res.SHA256,
		)
	}
	return cmd
}

// station is the factory workflows with the factory commands' clock.
func station() *factory.Provisioner { return &factory.Provisioner{Now: factoryNow} }

// loadCA reads the CA certificate and opens its key, checking they match.
// The caller closes the signer.
func loadCA(cmd *cobra.Command, certPath, keyURI string) (*x509.Certificate, crypto.Signer, error) {
	return station().OpenCA(cmd.Context(), certPath, keyURI)
}

type crlResult struct {
	CRL        string    `json:"crl"`
	Number     string    `json:"number"`
	Revoked    []string  `json:"revoked"`
	Already    []string  `json:"already_revoked"`
	Total      int       `json:"total"`
	NextUpdate time.Time `json:"next_update"`
}

func hexList(ns []*big.Int) []string {
	out := []string{}
	for _, n := range ns {
		out = append(out, fmt.Sprintf("%x", n))
	}
	return out
}

func runRevoke(cmd *cobra.Command, caCertPath, caKey, crlPath string, certPaths []string, days int, asJSON bool) error {
	if crlPath == "" {
		return errors.New("--crl: required (the CRL file to update or create)")
	}
	if days <= 0 {
		return fmt.Errorf("--days %d: must be at least 1", days)
	}
	var certs []*x509.Certificate
	for _, p := range certPaths {
		c, err := factory.ReadCertificate(p)
		if err != nil {
			return fmt.Errorf("--cert: %w", err)
		}
		certs = append(certs, c)
	}
	ca, signer, err := loadCA(cmd, caCertPath, caKey)
	if err != nil {
		return err
	}
	defer keystore.CloseSigner(signer)
	existing, err := os.ReadFile(crlPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("--crl: %w", err)
	}
	t := factoryNow()
	validity := time.Duration(days) * 24 * time.Hour
	res, err := factory.Revoke(existing, ca, signer, certs, t, validity)
	if err != nil {
		return fmt.Errorf("--crl %s: %w", crlPath, err)
	}
	if err := atomicfile.WriteFile(crlPath, res.CRL, 0o644); err != nil {
		return fmt.Errorf("--crl: %w", err)
	}
	out := crlResult{CRL: crlPath, Number: res.Number.String(), Revoked: hexList(res.Added), Already: hexList(res.Already), Total: res.Total, NextUpdate: t.Add(validity).UTC()}
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), out)
	}
	w := cmd.OutOrStdout()
	for _, s := range out.Revoked {
		fmt.Fprintf(w, "revoked serial %s\n", s)
	}
	for _, s := range out.Already {
		fmt.Fprintf(w, "serial %s was already revoked\n", s)
	}
	return writeFields(w, "crl", out.CRL, "crl number", out.Number, "entries", fmt.Sprint(out.Total), "next update", out.NextUpdate.Format(time.RFC3339))
}

func newCARevokeCmd() *cobra.Command {
	var (
		caCert, caKey, crl string
		certs              []string
		days               int
	)
	cmd := &cobra.Command{
		Use:   "revoke --ca-cert PEM --ca-key URI --crl FILE --cert DEVICE.pem",
		Short: "Add device certificates to the CRL (created when missing)",
		Long: `Add device certificates to the factory CRL, signed by the factory CA, with the
next CRL number. The CRL file is replaced atomically; it is created when it
does not exist. A certificate that is already listed is reported and left as
it was. Upload the CRL where the cloud reads it (see docs/factory.md).`,
		Example: `  bootcertctl ca revoke --ca-cert ca/ca.pem --ca-key file:$PWD/ca/ca.key \
    --crl ca/crl.pem --cert certs/gw-0001.pem`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&caCert, "ca-cert", "", "factory CA certificate (PEM)")
	cmd.Flags().StringVar(&caKey, "ca-key", "", "factory CA key URI")
	cmd.Flags().StringVar(&crl, "crl", "", "CRL file to update (PEM)")
	cmd.Flags().StringSliceVar(&certs, "cert", nil, "device certificate to revoke (PEM); repeatable")
	cmd.Flags().IntVar(&days, "days", 30, "days until the CRL's next update; refresh it before with bootcertctl ca crl")
	cmd.MarkFlagRequired("cert")
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return runRevoke(cmd, caCert, caKey, crl, certs, days, *jsonOut)
	}
	return cmd
}

func newCACRLCmd() *cobra.Command {
	var (
		caCert, caKey, crl string
		days               int
	)
	cmd := &cobra.Command{
		Use:   "crl --ca-cert PEM --ca-key URI --crl FILE",
		Short: "Create the CRL, or re-sign it with a new next-update time",
		Long: `Create an empty factory CRL, or re-sign the existing one (same entries, next
CRL number, new this/next update times). Run it before the CRL's next update.`,
		Example: `  bootcertctl ca crl --ca-cert ca/ca.pem --ca-key file:$PWD/ca/ca.key --crl ca/crl.pem --days 30`,
		Args:    cobra.NoArgs,
	}
	cmd.Flags().StringVar(&caCert, "ca-cert", "", "factory CA certificate (PEM)")
	cmd.Flags().StringVar(&caKey, "ca-key", "", "factory CA key URI")
	cmd.Flags().StringVar(&crl, "crl", "", "CRL file to create or refresh (PEM)")
	cmd.Flags().IntVar(&days, "days", 30, "days until the CRL's next update")
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return runRevoke(cmd, caCert, caKey, crl, nil, days, *jsonOut)
	}
	return cmd
}

func newCASignCmd() *cobra.Command {
	var (
		csrPath, caCert, caKey, certOut, manifestPath, finalCSR string
		days                                                    int
	)
	cmd := &cobra.Command{
		Use:   "sign --csr FILE --ca-cert PEM --ca-key URI --cert-out PATH",
		Short: "Sign a device CSR made elsewhere (split mode: the key stays on the device)",
		Long: `Sign a CSR that a device made with its own hardware key
(bootcertctl key generate + bootcertctl key csr --cn DEVICE-ID on the device),
for stations that cannot reach the device's TPM or token themselves. The
subject CN must be a valid device ID; the certificate is written atomically and
never overwritten; with --manifest the line device_id,bootstrap_sha256 (and
final_csr from --final-csr) is appended last.

Unlike provision, the station cannot check here that the key is
non-extractable: run "bootcertctl key info" on the device and keep its output.`,
		Example: `  # on the device
  bootcertctl key generate 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/bootstrap.tpmkey'
  bootcertctl key csr --cn gw-0001 --out /tmp/gw-0001.csr 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/bootstrap.tpmkey'
  # on the station
  bootcertctl ca sign --csr gw-0001.csr --ca-cert ca/ca.pem --ca-key file:$PWD/ca/ca.key \
    --cert-out certs/gw-0001.pem --manifest manifest.csv`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&csrPath, "csr", "", "device CSR (PEM or DER), CN = device ID")
	f.StringVar(&caCert, "ca-cert", "", "factory CA certificate (PEM)")
	f.StringVar(&caKey, "ca-key", "", "factory CA key URI")
	f.StringVar(&certOut, "cert-out", "", "where to write the certificate (PEM); never overwritten")
	f.StringVar(&manifestPath, "manifest", "", "manifest to append the device to (optional)")
	f.StringVar(&finalCSR, "final-csr", "", "pre-provisioned mode: the operational key's CSR to record in the manifest")
	f.IntVar(&days, "days", 3650, "validity in days (never beyond the CA's)")
	for _, n := range []string{"csr", "ca-cert", "ca-key", "cert-out"} {
		cmd.MarkFlagRequired(n)
	}
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		req, err := factory.ReadCSR(csrPath)
		if err != nil {
			return fmt.Errorf("--csr: %w", err)
		}
		sg := factory.Signing{CSR: req, CertOut: certOut, Manifest: manifestPath, Days: days}
		if finalCSR != "" {
			if sg.FinalCSR, err = factory.ReadCSR(finalCSR); err != nil {
				return fmt.Errorf("--final-csr: %w", err)
			}
		}
		ca, signer, err := loadCA(cmd, caCert, caKey)
		if err != nil {
			return err
		}
		defer keystore.CloseSigner(signer)
		sg.CACert, sg.CASigner = ca, signer
		res, err := station().Sign(cmd.Context(), sg)
		if err != nil {
			return err
		}
		if *jsonOut {
			return writeJSON(cmd.OutOrStdout(), res)
		}
		kv := []string{"device", res.DeviceID, "certificate", res.Certificate, "serial", res.Serial, "bootstrap_sha256", res.BootstrapSHA256, "not after", res.NotAfter.Format(time.RFC3339)}
		if res.Manifest != "" {
			kv = append(kv, "manifest", res.Manifest+" (appended)")
		}
		return writeFields(cmd.OutOrStdout(), kv...)
	}
	return cmd
}
