package tpm

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/bootcert/bootcert/keystore"
)

// watchdogSec reads WatchdogSec= from the shipped unit.
func watchdogSec(t *testing.T) time.Duration {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "systemd", "bootcertd.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "WatchdogSec="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("WatchdogSec=%s: %v", v, err)
			}
			return d
		}
	}
	t.Fatal("no WatchdogSec= in systemd/bootcertd.service")
	return 0
}

// TestTimeoutsInsideWatchdog: a TPM command that gets no answer ends with
// an error well before the systemd watchdog would kill bootcertd (it feeds
// the watchdog while its engine loop ran within 2/3 of WatchdogSec). Before,
// the timeout was 90 s against WatchdogSec=60s: a hung TPM ended in SIGABRT
// and a goroutine dump instead of a reported error.
func TestTimeoutsInsideWatchdog(t *testing.T) {
	feed := watchdogSec(t) * 2 / 3
	for name, d := range map[string]time.Duration{"tcpTimeout": tcpTimeout, "tcpCreateTimeout": tcpCreateTimeout} {
		if d >= feed {
			t.Errorf("%s = %s, want well below %s (2/3 of WatchdogSec)", name, d, feed)
		}
	}
	// an ordinary command is bounded tighter than a key creation
	cmd := func(cc tpm2.TPMCC) []byte {
		b := make([]byte, 10)
		binary.BigEndian.PutUint32(b[6:], uint32(cc))
		return b
	}
	for cc, want := range map[tpm2.TPMCC]time.Duration{
		tpm2.TPMCCSign: tcpTimeout, tpm2.TPMCCLoad: tcpTimeout, tpm2.TPMCCGetCapability: tcpTimeout,
		tpm2.TPMCCCreate: tcpCreateTimeout, tpm2.TPMCCCreatePrimary: tcpCreateTimeout, tpm2.TPMCCCreateLoaded: tcpCreateTimeout,
	} {
		if got := commandTimeout(cmd(cc)); got != want {
			t.Errorf("command %v: timeout %s, want %s", cc, got, want)
		}
	}
}

// A TPM that takes commands and never answers (a stopped swtpm: the kernel
// accepts the connection and the bytes) gives ErrNotAnswering, which is
// also ErrDevice, within the command timeout, saying so.
func TestNotAnswering(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing
		}
	}()
	old := tcpTimeout
	tcpTimeout = 200 * time.Millisecond
	t.Cleanup(func() { tcpTimeout = old })
	dev := "tcp:" + l.Addr().String()
	t.Cleanup(func() { CloseDevice(dev) })
	b, _ := newBackend()
	_, err = b.Generate(context.Background(), mustURI(t, "tpm:device="+dev+";blob="+filepath.Join(t.TempDir(), "k.tpmkey")), keystore.ECDSAP256)
	if err == nil {
		t.Fatal("made a key on a TPM that never answers")
	}
	if !errors.Is(err, ErrNotAnswering) || !errors.Is(err, ErrDevice) || !strings.Contains(err.Error(), "not answering") {
		t.Fatalf("err = %v, want ErrNotAnswering saying the TPM is not answering", err)
	}
}
