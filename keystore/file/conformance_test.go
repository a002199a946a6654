package file_test

import (
	"path/filepath"
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/keystoretest"
)

func TestConformance(t *testing.T) {
	keystoretest.Run(t, keystoretest.Config{
		Scheme: "file",
		NewURI: func(t *testing.T, name string) string {
			return "file:" + filepath.Join(t.TempDir(), name+".pem")
		},
		Algorithms:  keystore.Algorithms,
		Unsupported: []keystore.Algorithm{"ed25519"},
		Hardware:    false,
		Attributes:  map[string]bool{"sensitive": false, "neverExtractable": false, "alwaysSensitive": false, "local": false},
		BadURIs: []keystoretest.BadURI{
			{URI: "file:keys/k.pem", Part: "path"},
			{URI: "file:" + filepath.Join("/nonexistent-dir", "k.pem") + "?pin-value=Secret-1234", Part: "query attribute pin-value"},
		},
		Secret:          "Secret-1234",
		SeparateSigners: true,
	})
}
