//go:build !cgo || nosimulator

package tpm

import (
	"errors"

	"github.com/google/go-tpm/tpm2/transport"
)

// ErrNoSimulator is returned for device=sim in a CGO_ENABLED=0 build.
var errNoSimulator = errors.New("built without cgo or with the nosimulator tag: the in-process TPM simulator is unavailable")

func openSim() (transport.TPMCloser, error) { return nil, errNoSimulator }
