//go:build !cgo || nosimulator

package tpm

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/keystore"
)

const haveSim = false

func TestSimulatorUnavailableWithoutCgo(t *testing.T) {
	b, _ := newBackend()
	_, err := b.Generate(context.Background(), mustURI(t, "tpm:device=sim;blob="+filepath.Join(t.TempDir(), "k")), keystore.ECDSAP256)
	if err == nil || !strings.Contains(err.Error(), "built without cgo") {
		t.Fatalf("err = %v, want the no-cgo error", err)
	}
}
