package tpm

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/bootcert/bootcert/keystore"
	"github.com/google/go-tpm/tpm2"
)

// URI attributes understood by the tpm scheme.
const (
	attrDevice = "device"
	attrBlob   = "blob"
	attrHandle = "handle"
	attrSRK    = "srk"
)

// Defaults.
const (
	DefaultDevice = "/dev/tpmrm0"
	// DefaultSRK is the TCG-recommended persistent handle of the storage
	// root key (TCG TPM v2.0 Provisioning Guidance).
	DefaultSRK tpm2.TPMHandle = 0x81000001
)

// Owner-hierarchy persistent handle range (TPM 2.0 Part 2, 7.5: the
// platform range 0x81800000.. is not the owner's to use).
const (
	persistentFirst tpm2.TPMHandle = 0x81000000
	persistentLast  tpm2.TPMHandle = 0x817FFFFF
)

// keySpec is a parsed tpm: URI.
type keySpec struct {
	uri    *keystore.URI
	device string
	blob   string         // TSS2 PEM key file, or ""
	handle tpm2.TPMHandle // persistent key handle, or 0
	srk    tpm2.TPMHandle
}

func (k *keySpec) String() string { return k.uri.Redacted() }

func parseSpec(u *keystore.URI) (*keySpec, error) {
	if u.Scheme != "tpm" {
		return nil, u.Error("scheme", "the tpm backend handles tpm: URIs only")
	}
	if err := u.CheckAttrs([]string{attrDevice, attrBlob, attrHandle, attrSRK}, nil); err != nil {
		return nil, err
	}
	k := &keySpec{uri: u, device: DefaultDevice, srk: DefaultSRK}
	if d, ok := u.Get(attrDevice); ok {
		if err := validDevice(d); err != nil {
			return nil, u.Error("attribute device", err.Error())
		}
		k.device = d
	}
	blob, hasBlob := u.Get(attrBlob)
	hs, hasHandle := u.Get(attrHandle)
	switch {
	case hasBlob && hasHandle:
		return nil, u.Error("attributes blob and handle", "give exactly one: blob=PATH (TSS2 key file) or handle=0x81xxxxxx (persistent key)")
	case !hasBlob && !hasHandle:
		return nil, u.Error("attributes blob and handle", "missing: give blob=PATH (TSS2 key file) or handle=0x81xxxxxx (persistent key)")
	case hasBlob:
		if strings.TrimSpace(blob) == "" {
			return nil, u.Error("attribute blob", "empty path")
		}
		k.blob = blob
	default:
		h, err := parsePersistent(hs)
		if err != nil {
			return nil, u.Error("attribute handle", err.Error())
		}
		k.handle = h
	}
	if s, ok := u.Get(attrSRK); ok {
		h, err := parsePersistent(s)
		if err != nil {
			return nil, u.Error("attribute srk", err.Error())
		}
		k.srk = h
	}
	if k.handle != 0 && k.handle == k.srk {
		return nil, u.Error("attribute handle", fmt.Sprintf("0x%08x is the SRK handle; choose another persistent handle", uint32(k.handle)))
	}
	return k, nil
}

func parsePersistent(s string) (tpm2.TPMHandle, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 32)
	if err != nil || !strings.HasPrefix(strings.ToLower(s), "0x") {
		return 0, fmt.Errorf("%q is not a hex handle like 0x81000101", s)
	}
	h := tpm2.TPMHandle(v)
	if h < persistentFirst || h > persistentLast {
		return 0, fmt.Errorf("0x%08x is outside the owner persistent range 0x81000000-0x817fffff", v)
	}
	return h, nil
}

// validDevice accepts "sim", "tcp:HOST:PORT" (swtpm's command port; swtpm
// puts its control port at PORT+1, so PORT < 65535) and absolute device
// paths.
func validDevice(d string) error {
	switch {
	case d == "sim":
		return nil
	case strings.HasPrefix(d, "tcp:"):
		_, _, err := tcpAddrs(d)
		return err
	case strings.HasPrefix(d, "/"):
		return nil
	}
	return fmt.Errorf("%q is not a TPM device: use a path such as /dev/tpmrm0, tcp:HOST:PORT (swtpm), or sim", d)
}

// tcpAddrs returns the command and platform (control) addresses of a
// tcp:HOST:PORT device.
func tcpAddrs(d string) (cmd, plat string, err error) {
	host, ps, err := net.SplitHostPort(strings.TrimPrefix(d, "tcp:"))
	if err != nil || host == "" {
		return "", "", fmt.Errorf("%q is not tcp:HOST:PORT", d)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65534 {
		return "", "", fmt.Errorf("%q: port must be 1-65534 (PORT+1 is the control port)", d)
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), net.JoinHostPort(host, strconv.Itoa(port+1)), nil
}
