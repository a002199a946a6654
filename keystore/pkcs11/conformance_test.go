//go:build cgo

package pkcs11_test

import (
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/keystoretest"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

// pkcs11Attributes are what every key bootcert makes on a token has.
var pkcs11Attributes = map[string]bool{"sensitive": true, "neverExtractable": true, "extractable": false}

// PKCS11BadURIs are malformed URIs for a token: each names the attribute.
func pkcs11BadURIs(token, module, pin string) []keystoretest.BadURI {
	q := "?module-path=" + module + "&pin-value=" + pin
	return []keystoretest.BadURI{
		{URI: "pkcs11:object=k" + q, Part: "attribute token"},
		{URI: "pkcs11:token=" + token + q, Part: "attribute object"},
		{URI: "pkcs11:token=" + token + ";object=k;type=public" + q, Part: "attribute type"},
		{URI: "pkcs11:token=" + token + ";object=k;slot-id=zero" + q, Part: "attribute slot-id"},
		{URI: "pkcs11:token=" + token + ";object=k;pin-value=" + pin + "?module-path=" + module, Part: "attribute pin-value"},
		{URI: "pkcs11:token=" + token + ";object=k?pin-value=" + pin, Part: "query attribute module-path"},
		{URI: "pkcs11:token=" + token + ";object=k?module-path=" + module + "&pin-value=" + pin + "&pin-source=/etc/pin", Part: "query attribute pin-value"},
	}
}

// The conformance suite on SoftHSM2; Reopen unloads the module.
func TestConformanceSoftHSM(t *testing.T) {
	need(t)
	keystoretest.Run(t, keystoretest.Config{
		Scheme:          "pkcs11",
		NewURI:          func(t *testing.T, name string) string { return fresh(t).uri(name, "") },
		Algorithms:      keystore.Algorithms,
		Unsupported:     []keystore.Algorithm{"ed25519"},
		Hardware:        true,
		Attributes:      pkcs11Attributes,
		BadURIs:         pkcs11BadURIs(tokenLabel, hsm.Module, userPIN),
		Secret:          userPIN,
		Reopen:          func(t *testing.T) { pkcs11.CloseAll() },
		SeparateSigners: true,
	})
}
