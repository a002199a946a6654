package tpm

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Counter is a transport.TPM that counts the commands sent through it by
// command code, for tests and benchmarks. It is safe for concurrent use.
//
// Install it on a device with OpenDevice:
//
//	c := tpm.NewCounter()
//	err := tpm.OpenDevice("tcp:127.0.0.1:2321", c.Wrap)
//	... sign ...
//	n := c.Count(tpm2.TPMCCSign)
type Counter struct {
	mu     sync.Mutex
	next   transport.TPM
	counts map[tpm2.TPMCC]int
}

// NewCounter returns a Counter that is not yet wrapping a transport; pass
// its Wrap method to OpenDevice.
func NewCounter() *Counter { return &Counter{counts: map[tpm2.TPMCC]int{}} }

// Wrap makes c send through next and returns c. It has the signature
// OpenDevice expects.
func (c *Counter) Wrap(next transport.TPM) transport.TPM {
	c.mu.Lock()
	c.next = next
	c.mu.Unlock()
	return c
}

// Send counts the command and forwards it.
func (c *Counter) Send(cmd []byte) ([]byte, error) {
	c.mu.Lock()
	if len(cmd) >= 10 {
		c.counts[tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))]++
	} else {
		c.counts[0]++
	}
	next := c.next
	c.mu.Unlock()
	if next == nil {
		return nil, fmt.Errorf("tpm.Counter: no transport (use it through OpenDevice)")
	}
	return next.Send(cmd)
}

// Count is the number of commands sent with code cc.
func (c *Counter) Count(cc tpm2.TPMCC) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[cc]
}

// Total is the number of commands sent.
func (c *Counter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.counts {
		n += v
	}
	return n
}

// Counts is a copy of the counts by command code.
func (c *Counter) Counts() map[tpm2.TPMCC]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[tpm2.TPMCC]int, len(c.counts))
	for k, v := range c.counts {
		m[k] = v
	}
	return m
}

// Reset sets every count to zero.
func (c *Counter) Reset() {
	c.mu.Lock()
	c.counts = map[tpm2.TPMCC]int{}
	c.mu.Unlock()
}

// String lists the counts, e.g. "Load=1 Sign=3".
func (c *Counter) String() string {
	m := c.Counts()
	var parts []string
	for cc, n := range m {
		parts = append(parts, fmt.Sprintf("%s=%d", ccName(cc), n))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

var ccNames = map[tpm2.TPMCC]string{
	tpm2.TPMCCSign:          "Sign",
	tpm2.TPMCCLoad:          "Load",
	tpm2.TPMCCCreate:        "Create",
	tpm2.TPMCCCreatePrimary: "CreatePrimary",
	tpm2.TPMCCFlushContext:  "FlushContext",
	tpm2.TPMCCReadPublic:    "ReadPublic",
	tpm2.TPMCCEvictControl:  "EvictControl",
	tpm2.TPMCCGetCapability: "GetCapability",
}

func ccName(cc tpm2.TPMCC) string {
	if n, ok := ccNames[cc]; ok {
		return n
	}
	return fmt.Sprintf("0x%x", uint32(cc))
}
