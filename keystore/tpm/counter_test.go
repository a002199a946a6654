package tpm

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

type echoTPM struct{}

func (echoTPM) Send(cmd []byte) ([]byte, error) { return cmd, nil }

func TestCounter(t *testing.T) {
	c := NewCounter()
	if _, err := c.Send(cmdOf(tpm2.TPMCCSign)); err == nil {
		t.Fatal("a Counter without a transport must fail")
	}
	c.Reset()
	tpm := c.Wrap(echoTPM{})
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tpm.Send(cmdOf(tpm2.TPMCCSign))
			tpm.Send(cmdOf(tpm2.TPMCCLoad))
		}()
	}
	wg.Wait()
	tpm.Send([]byte{1, 2}) // too short to have a command code
	if c.Count(tpm2.TPMCCSign) != 50 || c.Count(tpm2.TPMCCLoad) != 50 || c.Total() != 101 {
		t.Fatalf("counts %s, total %d", c, c.Total())
	}
	if got := c.String(); got != "0x0=1 Load=50 Sign=50" {
		t.Fatalf("String() = %q", got)
	}
	c.Reset()
	if c.Total() != 0 {
		t.Fatal("Reset did not reset")
	}
}

func cmdOf(cc tpm2.TPMCC) []byte {
	b := make([]byte, 10)
	binary.BigEndian.PutUint16(b, uint16(tpm2.TPMSTNoSessions))
	binary.BigEndian.PutUint32(b[2:], 10)
	binary.BigEndian.PutUint32(b[6:], uint32(cc))
	return b
}
