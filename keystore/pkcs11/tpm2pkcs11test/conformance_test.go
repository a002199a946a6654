//go:build cgo

package tpm2pkcs11test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/keystoretest"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

// The conformance suite on tpm2-pkcs11 over swtpm; Reopen unloads the
// module. swtpm has three object slots and no resource manager, so the
// concurrency check shares one signer per key. RSA is left out: this
// tpm2-pkcs11 (Debian 12) fails C_GenerateKeyPair for RSA-2048 on swtpm with
// CKR_GENERAL_ERROR ("User specified and TPM specified attr mismatch:
// 0x10a") and leaves the TPM without object memory for the next login.
func TestConformance(t *testing.T) {
	setup(t)
	var n atomic.Uint32
	keystoretest.Run(t, keystoretest.Config{
		Scheme:      "pkcs11",
		NewURI:      func(t *testing.T, name string) string { return uri(fmt.Sprintf("%s-%d", name, n.Add(1))) },
		Algorithms:  []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384},
		Unsupported: []keystore.Algorithm{"ed25519"},
		Hardware:    true,
		Attributes:  map[string]bool{"sensitive": true, "neverExtractable": true, "extractable": false},
		BadURIs: []keystoretest.BadURI{
			{URI: "pkcs11:object=k?module-path=" + Module + "&pin-value=" + userPIN, Part: "attribute token"},
			{URI: "pkcs11:token=" + tokenLabel + ";object=k;pin-value=" + userPIN + "?module-path=" + Module, Part: "attribute pin-value"},
		},
		Secret: userPIN,
		Reopen: func(t *testing.T) { pkcs11.CloseAll() },
	})
}
