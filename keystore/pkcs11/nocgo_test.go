//go:build !cgo

package pkcs11_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/keystore/pkcs11"
)

// TestNoCgoStub runs in CGO_ENABLED=0 builds (the deps test runs it): every
// call on a pkcs11: URI says the build lacks PKCS#11.
func TestNoCgoStub(t *testing.T) {
	ctx := context.Background()
	const u = "pkcs11:token=t;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234"
	_, errOpen := keystore.Open(ctx, u)
	_, errGen := keystore.Generate(ctx, u, keystore.ECDSAP256)
	errDel := keystore.Delete(ctx, u)
	_, errDesc := keystore.Describe(ctx, u)
	for i, err := range []error{errOpen, errGen, errDel, errDesc} {
		if !errors.Is(err, pkcs11.ErrNotBuilt) {
			t.Errorf("call %d: err = %v, want ErrNotBuilt", i, err)
			continue
		}
		if !strings.Contains(err.Error(), "CGO_ENABLED=0") || strings.Contains(err.Error(), "1234") {
			t.Errorf("call %d: err = %q", i, err)
		}
	}
}
