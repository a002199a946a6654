package ctl

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/keystore"
	_ "github.com/bootcert/bootcert/keystore/all" // every backend
	"github.com/bootcert/bootcert/keystore/csr"
)

// factoryNow is the clock of the factory commands; tests replace it.
var factoryNow = time.Now

func init() { register(newKeyCmd) }

const uriHelp = `Key URIs:
  tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/boot.tpmkey   (TPM 2.0, TSS2 key file)
  tpm:device=tcp:127.0.0.1:2321;blob=/tmp/k.tpmkey                 (swtpm)
  tpm:device=/dev/tpmrm0;handle=0x81000101                         (persistent handle)
  pkcs11:token=factory;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/bootcert/pin
  file:/var/lib/bootcert/keys/dev.pem                              (software, development only)`

// oneKeyURI is the argument check of the key subcommands: it says what the
// argument is (cobra's ExactArgs says only "accepts 1 arg(s)").
func oneKeyURI(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s: give exactly one key URI, got %d arguments (quote it: ; ? & are shell syntax; see bootcertctl key --help)", strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" "), len(args))
	}
	return nil
}

func newKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Generate, inspect and delete keys held in a TPM, a PKCS#11 token or a file",
		Long: `Work with the private keys bootcert uses. A key never leaves its hardware:
these commands print public keys, CSRs and attributes only.

` + uriHelp,
	}
	cmd.AddCommand(newKeyGenerateCmd(), newKeyPublicCmd(), newKeyCSRCmd(), newKeyInfoCmd(), newKeyDeleteCmd())
	return cmd
}

func algHelp() string {
	var s []string
	for _, a := range keystore.Algorithms {
		s = append(s, string(a))
	}
	return strings.Join(s, "|")
}

func newKeyGenerateCmd() *cobra.Command {
	var alg string
	cmd := &cobra.Command{
		Use:   "generate URI",
		Short: "Create a key inside its hardware (never overwrites an existing key)",
		Long: `Create a key inside its hardware. An existing key is never overwritten.

A key file (TPM key blob, file: key) made by root is given to bootcertd's user
(bootcert, when that user exists) so that the daemon can read it; --owner
names another owner, "none" keeps it root's.`,
		Example: `  bootcertctl key generate 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/boot.tpmkey'
  bootcertctl key generate --alg ecdsa-p384 'pkcs11:token=factory;object=ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/root/pin'`,
		Args: oneKeyURI,
	}
	cmd.Flags().StringVar(&alg, "alg", string(keystore.DefaultAlgorithm), "key algorithm: "+algHelp())
	owner := addOwnerFlag(cmd)
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		a, err := keystore.ParseAlgorithm(alg)
		if err != nil {
			return fmt.Errorf("--alg: %w", err)
		}
		ctx := cmd.Context()
		o, err := resolveOwner(*owner)
		if err != nil {
			return err
		}
		if o != nil {
			ctx = keystore.WithOwner(ctx, *o)
		}
		s, err := keystore.Generate(ctx, args[0], a)
		if err != nil {
			return err
		}
		keystore.CloseSigner(s)
		info, err := keystore.Describe(cmd.Context(), args[0])
		if err != nil {
			return fmt.Errorf("key generated, but describing it failed: %w", err)
		}
		return printInfo(cmd, info, *jsonOut)
	}
	return cmd
}

func newKeyInfoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "info URI",
		Short: "Show a key's backend, algorithm, fingerprint and hardware attributes",
		Long: `Show what is known about a key without revealing it: the backend, the
algorithm, the SHA-256 fingerprint of its DER SubjectPublicKeyInfo (the same as
` + "`openssl pkey -pubin -outform DER | sha256sum`" + `), and the hardware attributes:
fixedTPM/fixedParent/sensitiveDataOrigin for TPM keys, sensitive/
neverExtractable/local for PKCS#11 keys. "hardware: yes" means the private key
cannot leave the device.

For a TPM key it also says whether the device's attestation key (--ak, by
default next to the key: X.tpmkey -> X.ak.tpmkey) certifies it now
("attestable"; the cloud's attested-key record says whether the vendor
accepted it), and the TPM's dictionary-attack lockout counter, maximum tries
and recovery time.`,
		Example: `  bootcertctl key info 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/boot.tpmkey'
  bootcertctl key info --json file:/tmp/dev.pem`,
		Args: oneKeyURI,
	}
	jsonOut := addJSONFlag(cmd)
	ak := addAKFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		info, err := keystore.Describe(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		return printKeyInfo(cmd, describeKey(cmd.Context(), args[0], *ak, info), *jsonOut)
	}
	return cmd
}

func printInfo(cmd *cobra.Command, info keystore.Info, asJSON bool) error {
	if info.Attributes == nil {
		info.Attributes = map[string]bool{}
	}
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), info)
	}
	var names []string
	for k := range info.Attributes {
		names = append(names, k)
	}
	sort.Strings(names)
	var attrs []string
	for _, k := range names {
		v := "no"
		if info.Attributes[k] {
			v = "yes"
		}
		attrs = append(attrs, k+"="+v)
	}
	hw := "no (the private key can be copied)"
	if info.Hardware {
		hw = "yes (the private key cannot leave the device)"
	}
	return writeFields(cmd.OutOrStdout(),
		"uri", info.URI,
		"backend", info.Backend,
		"algorithm", string(info.Algorithm),
		"fingerprint", info.Fingerprint,
		"hardware", hw,
		"attributes", strings.Join(attrs, " "),
	)
}

func newKeyPublicCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:     "public URI",
		Short:   "Print a key's public key (PEM SubjectPublicKeyInfo)",
		Example: `  bootcertctl key public 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/boot.tpmkey' | openssl pkey -pubin -noout -text`,
		Args:    oneKeyURI,
	}
	cmd.Flags().StringVar(&out, "out", "", "write the PEM to this file (atomically) instead of standard output")
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := keystore.Open(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		pub := s.Public()
		keystore.CloseSigner(s)
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return fmt.Errorf("encoding the public key of %s: %w", redactKeyURI(args[0]), err)
		}
		p := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		if out != "" {
			if err := atomicfile.WriteFile(out, p, 0o644); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
		}
		if *jsonOut {
			info, err := keystore.DescribePublic(pub)
			if err != nil {
				return err
			}
			return writeJSON(cmd.OutOrStdout(), map[string]any{
				"uri": redactKeyURI(args[0]), "algorithm": info.Algorithm, "fingerprint": info.Fingerprint, "public_key_pem": string(p),
			})
		}
		if out == "" {
			_, err = cmd.OutOrStdout().Write(p)
		}
		return err
	}
	return cmd
}

func newKeyCSRCmd() *cobra.Command {
	var (
		cn   string
		sans []string
		out  string
	)
	cmd := &cobra.Command{
		Use:   "csr URI --cn NAME",
		Short: "Make a certificate signing request signed by the key itself",
		Long: `Make a PKCS#10 CSR with subject CN=NAME, signed inside the key's hardware.
The request is checked before it is printed; verify it with
` + "`openssl req -in req.pem -noout -verify`.",
		Example: `  bootcertctl key csr --cn gw-0001 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/boot.tpmkey' > gw-0001.csr
  bootcertctl key csr --cn gw-0001 --out gw-0001.csr file:/tmp/dev.pem`,
		Args: oneKeyURI,
	}
	cmd.Flags().StringVar(&cn, "cn", "", "subject common name (required; for devices: the device ID)")
	cmd.Flags().StringSliceVar(&sans, "san", nil, "subject alternative name (DNS name, IP, URI or e-mail); repeatable")
	cmd.Flags().StringVar(&out, "out", "", "write the PEM to this file (atomically) instead of standard output")
	cmd.MarkFlagRequired("cn")
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		s, err := keystore.Open(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		der, err := csr.Create(s, cn, sans...)
		keystore.CloseSigner(s)
		if err != nil {
			return fmt.Errorf("key %s: %w", redactKeyURI(args[0]), err)
		}
		p := csr.EncodePEM(der)
		if out != "" {
			if err := atomicfile.WriteFile(out, p, 0o644); err != nil {
				return fmt.Errorf("--out: %w", err)
			}
		}
		if *jsonOut {
			return writeJSON(cmd.OutOrStdout(), map[string]any{"uri": redactKeyURI(args[0]), "cn": cn, "csr_pem": string(p)})
		}
		if out == "" {
			_, err = cmd.OutOrStdout().Write(p)
		}
		return err
	}
	return cmd
}

func newKeyDeleteCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete URI",
		Short: "Destroy a key (irreversible)",
		Long: `Destroy a key in its hardware. Irreversible: a certificate for this key
becomes useless. Never delete a device's bootstrap key that is listed in the
manifest unless the device is being scrapped or re-provisioned with --force.`,
		Example: `  bootcertctl key delete 'tpm:device=/dev/tpmrm0;blob=/var/lib/bootcert/keys/old.tpmkey'`,
		Args:    oneKeyURI,
	}
	jsonOut := addJSONFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := keystore.Delete(cmd.Context(), args[0]); err != nil {
			return err
		}
		if *jsonOut {
			return writeJSON(cmd.OutOrStdout(), map[string]any{"uri": redactKeyURI(args[0]), "deleted": true})
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", redactKeyURI(args[0]))
		return err
	}
	return cmd
}

// redactKeyURI is a key URI safe to print.
func redactKeyURI(raw string) string {
	if u, err := keystore.ParseURI(raw); err == nil {
		return u.Redacted()
	}
	return "(invalid key URI)"
}
