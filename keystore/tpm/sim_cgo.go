//go:build cgo && !nosimulator

package tpm

import (
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
)

// simSeed fixes the simulator's hierarchy seeds so that key files made with
// device=sim load again after the process restarts. The simulator is for
// demos and tests only: its keys are not secret.
const simSeed = 0x626f6f74

func openSim() (transport.TPMCloser, error) {
	s, err := simulator.GetWithFixedSeedInsecure(simSeed)
	if err != nil {
		return nil, err
	}
	return transport.FromReadWriteCloser(s), nil
}
