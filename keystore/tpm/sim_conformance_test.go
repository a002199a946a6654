//go:build cgo && !nosimulator

package tpm

import (
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/keystoretest"
)

// The conformance suite on the in-process simulator (built without
// RSA-3072); Reopen closes it, and key files load again because its seed is
// fixed.
func TestConformanceSimulator(t *testing.T) {
	t.Cleanup(func() { CloseDevice("sim") })
	keystoretest.Run(t, keystoretest.Config{
		Scheme:          "tpm",
		NewURI:          func(t *testing.T, name string) string { return blobURI("sim", t.TempDir(), name+".tpmkey") },
		Algorithms:      []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.RSA2048},
		Unsupported:     []keystore.Algorithm{keystore.RSA3072},
		Hardware:        true,
		Attributes:      tpmAttributes,
		BadURIs:         tpmBadURIs("sim", t.TempDir()),
		Secret:          "Secret-1234",
		Reopen:          func(t *testing.T) { CloseDevice("sim") },
		SeparateSigners: true,
	})
}
