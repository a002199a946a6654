package tpm

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/keystoretest"
)

// tpmAttributes are what every bootcert TPM key has: made in the TPM and
// bound to it.
var tpmAttributes = map[string]bool{"fixedTPM": true, "fixedParent": true, "sensitiveDataOrigin": true, "userWithAuth": true}

func tpmBadURIs(device, dir string) []keystoretest.BadURI {
	return []keystoretest.BadURI{
		{URI: "tpm:device=" + device + ";handle=0x12", Part: "attribute handle"},
		{URI: "tpm:device=" + device + ";handle=0x81000001", Part: "attribute handle"}, // the SRK's
		{URI: fmt.Sprintf("tpm:device=%s;blob=%s;handle=0x81000300", device, filepath.Join(dir, "k")), Part: "attributes blob and handle"},
		{URI: "tpm:device=" + device, Part: "attributes blob and handle"},
		{URI: fmt.Sprintf("tpm:device=%s;blob=%s;srk=owner", device, filepath.Join(dir, "k")), Part: "attribute srk"},
		{URI: fmt.Sprintf("tpm:device=%s;blob=%s;pin-value=Secret-1234", device, filepath.Join(dir, "k")), Part: "attribute pin-value"},
	}
}

// The conformance suite on swtpm, with key files and with persistent
// handles; Reopen closes the connection as a process restart would.
func TestConformanceSWTPM(t *testing.T) {
	sw := startTPM(t)
	reopen := func(t *testing.T) {
		if err := CloseDevice(sw.Device()); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("blob", func(t *testing.T) {
		keystoretest.Run(t, keystoretest.Config{
			Scheme:          "tpm",
			NewURI:          func(t *testing.T, name string) string { return blobURI(sw.Device(), t.TempDir(), name+".tpmkey") },
			Algorithms:      keystore.Algorithms,
			Unsupported:     []keystore.Algorithm{"ed25519"},
			Hardware:        true,
			Attributes:      tpmAttributes,
			BadURIs:         tpmBadURIs(sw.Device(), t.TempDir()),
			Secret:          "Secret-1234",
			Reopen:          reopen,
			SeparateSigners: true,
		})
	})
	t.Run("handle", func(t *testing.T) {
		var next atomic.Uint32
		next.Store(0x81000400)
		keystoretest.Run(t, keystoretest.Config{
			Scheme: "tpm",
			NewURI: func(t *testing.T, _ string) string {
				return fmt.Sprintf("tpm:device=%s;handle=0x%08x", sw.Device(), next.Add(1))
			},
			Algorithms:      []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384},
			Hardware:        true,
			Attributes:      tpmAttributes,
			Reopen:          reopen,
			SeparateSigners: true,
		})
	})
}
