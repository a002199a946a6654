package ctl

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/keystore"
)

// Key attestation states in `key info` (docs/attestation.md).
const (
	// keyAttestable: the device's AK certifies the key now (TPM2_Certify,
	// checked here); the cloud's attested-key record says whether the vendor
	// accepted it.
	keyAttestable = "attestable"
	// keyNotAttested: no AK, or not a TPM key.
	keyNotAttested = "not-attested"
)

// keyAttestation is `key info`'s attestation section.
type keyAttestation struct {
	Status string `json:"status"`
	AK     string `json:"ak,omitempty"` // redacted URI
	Why    string `json:"why,omitempty"`
}

// keyInfo is `key info --json`: keystore.Info plus attestation and the
// TPM's dictionary-attack lockout state.
type keyInfo struct {
	keystore.Info
	Attestation *keyAttestation   `json:"attestation"`
	Lockout     *keystore.Lockout `json:"lockout,omitempty"`
}

func addAKFlag(cmd *cobra.Command) *string {
	return cmd.Flags().String("ak", "", "attestation key URI (default: next to the key, where the factory puts the bootstrap key's: X.tpmkey -> X.ak.tpmkey)")
}

// describeKey adds the attestation state and, for TPM keys, the lockout
// counters (one TPM2_GetCapability).
func describeKey(ctx context.Context, uri, ak string, info keystore.Info) keyInfo {
	out := keyInfo{Info: info, Attestation: keyAttestationOf(ctx, uri, ak, info)}
	if lo, err := keystore.ReadLockout(ctx, uri); err == nil {
		out.Lockout = &lo
	}
	return out
}

func keyAttestationOf(ctx context.Context, uri, ak string, info keystore.Info) *keyAttestation {
	if info.Backend != "tpm" {
		return &keyAttestation{Status: keyNotAttested, Why: info.Backend + " keys have no standard attestation"}
	}
	if ak == "" {
		var err error
		if ak, err = keystore.DefaultAKURI(uri); err != nil {
			return &keyAttestation{Status: keyNotAttested, Why: err.Error()}
		}
	}
	redacted := redactKeyURI(ak)
	nonce := make([]byte, 16)
	rand.Read(nonce)
	qd := attest.Binding{Purpose: "key-info", Nonce: nonce}.QualifyingData()
	c, err := keystore.Certify(ctx, uri, ak, qd)
	if errors.Is(err, keystore.ErrNotFound) {
		return &keyAttestation{Status: keyNotAttested, AK: redacted, Why: "no attestation key at " + redacted + " (give --ak, or enrol with bootcertctl provision)"}
	}
	if err != nil {
		return &keyAttestation{Status: keyNotAttested, AK: redacted, Why: err.Error()}
	}
	s, err := keystore.Open(ctx, uri)
	if err != nil {
		return &keyAttestation{Status: keyNotAttested, AK: redacted, Why: err.Error()}
	}
	pub := s.Public()
	keystore.CloseSigner(s)
	if err := attest.CheckCertification(&attest.Evidence{Attest: c.Attest, Signature: c.Signature, Public: c.Public}, qd, pub); err != nil {
		return &keyAttestation{Status: keyNotAttested, AK: redacted, Why: err.Error()}
	}
	return &keyAttestation{Status: keyAttestable, AK: redacted}
}

func printKeyInfo(cmd *cobra.Command, k keyInfo, asJSON bool) error {
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), k)
	}
	if err := printInfo(cmd, k.Info, false); err != nil {
		return err
	}
	a := k.Attestation.Status
	if k.Attestation.AK != "" {
		a += " (AK " + k.Attestation.AK + ")"
	}
	if k.Attestation.Why != "" {
		a += ": " + k.Attestation.Why
	}
	kv := []string{"attestation", a}
	if lo := k.Lockout; lo != nil {
		kv = append(kv, "lockout", fmt.Sprintf("%d of %d failed authorizations (one forgotten every %ds, recovery %ds, in lockout: %v)", lo.Counter, lo.MaxTries, lo.IntervalSeconds, lo.RecoverySeconds, lo.InLockout))
	}
	return writeFields(cmd.OutOrStdout(), kv...)
}
