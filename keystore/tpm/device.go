package tpm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// device is one open TPM. There is one per device string per process,
// shared by every signer on it; mu serialises commands (swtpm serves one
// client, and a TPM without a resource manager has a few object slots that
// this process must account for).
type device struct {
	name   string
	mu     sync.Mutex
	tpm    transport.TPM
	closer io.Closer
	closed bool        // guarded by mu
	broken atomic.Bool // a transport error happened: reopen on next use

	release bool        // let go of the device when idle (tcp: swtpm serves one client)
	uses    uint64      // operations so far; guarded by mu
	idle    *time.Timer // pending idle release; guarded by mu

	loaded map[tpm2.TPMHandle]*Signer   // transient objects this process loaded, and whose; guarded by mu
	pin    []*Signer                    // signers a command in progress needs loaded together (Certify); guarded by mu
	srks   map[tpm2.TPMHandle]*srkState // guarded by mu
}

// srkState caches what is known about a persisted SRK.
type srkState struct {
	name    tpm2.TPM2BName
	checked bool // h2 is known
	h2      bool // it is the TCG H-2 ECC P-256 SRK, recreatable from the owner hierarchy
	unknown bool // could not check (owner hierarchy has a password): try it as if H-2 when loading
}

var registry = struct {
	sync.Mutex
	devs  map[string]*device
	wraps map[string]func(transport.TPM) transport.TPM // from OpenDevice
}{devs: map[string]*device{}, wraps: map[string]func(transport.TPM) transport.TPM{}}

// OpenDevice (re)opens a device with wrap around its transport, so that a
// test or benchmark can count commands (Counter.Wrap) or inject faults. An
// already open device is closed first (its loaded keys are flushed; signers
// load them again on next use). wrap may be nil. The wrapper stays, also
// when the device is reopened after a transport error, until CloseDevice.
func OpenDevice(name string, wrap func(transport.TPM) transport.TPM) error {
	if err := validDevice(name); err != nil {
		return &Error{Op: "open", Device: name, Err: err}
	}
	registry.Lock()
	defer registry.Unlock()
	if old := registry.devs[name]; old != nil {
		delete(registry.devs, name)
		old.close()
	}
	delete(registry.wraps, name)
	d, err := openDevice(name, wrap)
	if err != nil {
		return err
	}
	registry.devs[name] = d
	if wrap != nil {
		registry.wraps[name] = wrap
	}
	return nil
}

// CloseDevice flushes the transient objects this process loaded on the
// device and closes it, so that another client (tpm2-tools, tpm2-openssl)
// can talk to a swtpm. Signers stay usable: they reopen the device and load
// their key again on next use. Closing a device that is not open is a no-op.
func CloseDevice(name string) error {
	registry.Lock()
	d := registry.devs[name]
	delete(registry.devs, name)
	delete(registry.wraps, name)
	registry.Unlock()
	if d == nil {
		return nil
	}
	return d.close()
}

// CloseAll closes every open device.
func CloseAll() error {
	registry.Lock()
	devs := registry.devs
	registry.devs = map[string]*device{}
	registry.wraps = map[string]func(transport.TPM) transport.TPM{}
	registry.Unlock()
	var errs []error
	for _, d := range devs {
		errs = append(errs, d.close())
	}
	return errors.Join(errs...)
}

// getDevice returns the open device, opening it when needed.
func getDevice(name string) (*device, error) {
	registry.Lock()
	defer registry.Unlock()
	if d := registry.devs[name]; d != nil {
		if !d.broken.Load() {
			return d, nil
		}
		slog.Warn("tpm: reopening device after a transport error", "device", name)
		delete(registry.devs, name)
		d.close()
	}
	d, err := openDevice(name, registry.wraps[name])
	if err != nil {
		return nil, err
	}
	registry.devs[name] = d
	return d, nil
}

func openDevice(name string, wrap func(transport.TPM) transport.TPM) (*device, error) {
	var (
		t         transport.TPMCloser
		err       error
		needFlush bool // no resource manager in front of the TPM
		release   bool // release when idle
	)
	switch {
	case name == "sim":
		t, err = openSim()
		needFlush = true
	case strings.HasPrefix(name, "tcp:"):
		var cmd string
		cmd, _, err = tcpAddrs(name)
		if err == nil {
			var c *tcpTPM
			if c, err = openTCP(cmd); err == nil {
				t = c
			}
		}
		needFlush, release = true, TCPIdleRelease > 0
	case strings.HasPrefix(name, "/"):
		t, err = linuxtpm.Open(name)
		if err != nil {
			err = fmt.Errorf("%w (is there a TPM, and may this user open %s? the tss group usually may)", err, name)
		}
		needFlush = !strings.Contains(name, "tpmrm")
	default:
		err = validDevice(name)
	}
	if err != nil {
		return nil, &Error{Op: "open", Device: name, Err: fmt.Errorf("%w: %v", ErrDevice, err)}
	}
	d := &device{
		release: release,
		name:    name,
		tpm:     t,
		closer:  t,
		loaded:  map[tpm2.TPMHandle]*Signer{},
		srks:    map[tpm2.TPMHandle]*srkState{},
	}
	if wrap != nil {
		d.tpm = wrap(t)
	}
	if needFlush {
		if err := d.flushStale(); err != nil {
			t.Close()
			return nil, err
		}
	}
	return d, nil
}

// flushStale flushes transient objects and sessions left loaded by an
// earlier client that died: without a resource manager they would fill the
// TPM's few slots (TPM_RC_OBJECT_MEMORY).
func (d *device) flushStale() error {
	n := 0
	for _, first := range []tpm2.TPMHandle{0x80000000, 0x02000000, 0x03000000} {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 64}.Execute(d.tpm)
		if err != nil {
			return d.wrapErr("list stale handles", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return d.wrapErr("list stale handles", err)
		}
		for _, h := range hs.Handle {
			if h>>24 != first>>24 {
				continue
			}
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(d.tpm); err != nil {
				return d.wrapErr(fmt.Sprintf("flush stale handle 0x%08x", uint32(h)), err)
			}
			n++
		}
	}
	if n > 0 {
		slog.Info("tpm: flushed stale handles left by an earlier client", "device", d.name, "count", n)
	}
	return nil
}

// close flushes what this process loaded and closes the transport.
func (d *device) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closeLocked()
}

func (d *device) closeLocked() error {
	if d.idle != nil {
		d.idle.Stop()
	}
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if !d.broken.Load() {
		for h := range d.loaded {
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(d.tpm); err != nil {
				errs = append(errs, d.wrapErr(fmt.Sprintf("flush 0x%08x", uint32(h)), err))
			}
		}
	}
	d.loaded = nil
	if err := d.closer.Close(); err != nil {
		errs = append(errs, &Error{Op: "close", Device: d.name, Err: err})
	}
	return errors.Join(errs...)
}

// wrapErr makes an *Error; a failure that is not a TPM response code is a
// transport failure and marks the device for reopening.
func (d *device) wrapErr(op string, err error) error {
	rc := rcOf(err)
	if rc == 0 {
		d.broken.Store(true)
		if !errors.Is(err, ErrDevice) { // a timeout already says ErrNotAnswering
			err = fmt.Errorf("%w: %v", ErrDevice, err)
		}
	}
	return &Error{Op: op, Device: d.name, Code: rc, Err: err}
}

// Retry policy for TPM warnings (TPM_RC_RETRY and friends).
const (
	DefaultRetries = 10
	retryBase      = 2 * time.Millisecond
	retryCap       = 200 * time.Millisecond
)

// run executes cmd with the device locked by the caller, retrying the
// warnings that say "send it again" a bounded number of times with
// exponential backoff and full jitter. Authorization failures and every other
// error return at once.
func run[R any](b *Backend, d *device, op string, cmd tpm2.Command[R, *R], sess ...tpm2.Session) (*R, error) {
	retries := b.retries()
	for attempt := 0; ; attempt++ {
		rsp, err := cmd.Execute(d.tpm, sess...)
		if err == nil {
			if attempt > 0 {
				slog.Debug("tpm: command succeeded after retries", "device", d.name, "op", op, "retries", attempt)
			}
			return rsp, nil
		}
		e := d.wrapErr(op, err).(*Error)
		if !e.Retryable() || attempt >= retries {
			return nil, e
		}
		wait := retryBase << attempt
		if wait > retryCap || wait <= 0 {
			wait = retryCap
		}
		b.sleep(rand.N(wait) + time.Millisecond)
	}
}

// evictOne flushes one key this process loaded, other than keep's, to make
// room on a TPM without a resource manager (swtpm has 3 object slots, and a
// command needs one for the parent). Its signer loads it again on next use.
// Caller holds d.mu.
func (d *device) evictOne(b *Backend, keep *Signer) bool {
	for h, s := range d.loaded {
		if s == keep || slices.Contains(d.pin, s) {
			continue
		}
		delete(d.loaded, h)
		if _, err := run(b, d, fmt.Sprintf("flush 0x%08x to make room", uint32(h)), tpm2.FlushContext{FlushHandle: h}); err != nil {
			slog.Warn("tpm: flushing a key to make room failed", "device", d.name, "err", err)
		}
		return true
	}
	return false
}

// runRoom is run for commands that need object slots (Create, Load,
// CreatePrimary): on TPM_RC_OBJECT_MEMORY it evicts keys this process loaded
// (except keep's) and tries again.
func runRoom[R any](b *Backend, d *device, keep *Signer, op string, cmd tpm2.Command[R, *R]) (*R, error) {
	for {
		rsp, err := run(b, d, op, cmd)
		if isRC(err, tpm2.TPMRCObjectMemory) && d.evictOne(b, keep) {
			continue
		}
		return rsp, err
	}
}

// TCPIdleRelease is how long a tcp: (swtpm) device stays open after its last
// use. swtpm serves one client at a time, so holding it would lock out other
// processes (bootcertctl next to bootcertd, tpm2-tools, tpm2-openssl);
// releasing it flushes this process's loaded keys, which load again on next
// use (a few extra TPM commands). 0 keeps the device open until CloseDevice.
// Device paths and sim are never released.
var TCPIdleRelease = 200 * time.Millisecond

// used records an operation and (re)arms the idle release. Caller holds d.mu.
func (d *device) used() {
	if !d.release || d.closed {
		return
	}
	d.uses++
	n := d.uses
	if d.idle != nil {
		d.idle.Stop()
	}
	d.idle = time.AfterFunc(TCPIdleRelease, func() { d.releaseIfIdle(n) })
}

// releaseIfIdle closes the device when no operation happened since use n.
func (d *device) releaseIfIdle(n uint64) {
	registry.Lock()
	defer registry.Unlock()
	if registry.devs[d.name] != d {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.uses != n || d.closed {
		return
	}
	delete(registry.devs, d.name)
	if err := d.closeLocked(); err != nil {
		slog.Warn("tpm: releasing an idle device", "device", d.name, "err", err)
	}
}
