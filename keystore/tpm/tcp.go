package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// tcpTimeout bounds one command on a tcp: device; tcpCreateTimeout one that
// makes a key (TPM2_Create, CreatePrimary, CreateLoaded: RSA-3072 keygen on
// a busy swtpm takes seconds). swtpm serves one client at a time: a second
// client's connection is accepted by the kernel and then never answered, and
// a stopped or hung swtpm (SIGSTOP, a wedged VM) answers nothing either, so
// without a deadline a command would hang.
//
// Both stay well inside the systemd watchdog (WatchdogSec=60s in
// systemd/bootcertd.service; bootcertd feeds it only while its engine loop
// ran within 2/3 of it, 40 s): a hung TPM is reported as an error ("no
// answer within ...") and retried, instead of the daemon being killed with
// a goroutine dump. TestTimeoutsInsideWatchdog checks it against the unit.
var (
	tcpTimeout       = 10 * time.Second
	tcpCreateTimeout = 30 * time.Second
)

// commandTimeout is the deadline of one command: the command code is bytes
// 6..10 of the command header (tag, size, code).
func commandTimeout(cmd []byte) time.Duration {
	if len(cmd) >= 10 {
		switch tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) {
		case tpm2.TPMCCCreate, tpm2.TPMCCCreatePrimary, tpm2.TPMCCCreateLoaded:
			return tcpCreateTimeout
		}
	}
	return tcpTimeout
}

// tcpTPM speaks swtpm's TCP command protocol (the TCG reference simulator's
// TPM_SEND_COMMAND) with deadlines and full reads. It is go-tpm's
// transport/tcp minus the platform (control) connection, which bootcert never
// uses, plus the deadline.
type tcpTPM struct {
	addr string
	conn net.Conn
}

func openTCP(addr string) (*tcpTPM, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connecting to swtpm at %s: %w (is swtpm running with --server type=tcp,port=PORT?)", addr, err)
	}
	return &tcpTPM{addr: addr, conn: c}, nil
}

const tpmSendCommand = 8 // TPM_SEND_COMMAND in TpmTcpProtocol.h

func (t *tcpTPM) Send(cmd []byte) ([]byte, error) {
	timeout := commandTimeout(cmd)
	if err := t.conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	msg := make([]byte, 9, 9+len(cmd))
	binary.BigEndian.PutUint32(msg[0:4], tpmSendCommand)
	msg[4] = 0 // locality
	binary.BigEndian.PutUint32(msg[5:9], uint32(len(cmd)))
	msg = append(msg, cmd...)
	if _, err := t.conn.Write(msg); err != nil {
		return nil, t.ioErr("sending a command", timeout, err)
	}
	var n uint32
	if err := binary.Read(t.conn, binary.BigEndian, &n); err != nil {
		return nil, t.ioErr("reading the response length", timeout, err)
	}
	if n == 0 || n > 1<<20 {
		return nil, fmt.Errorf("swtpm at %s: bad response length %d (does it need --flags not-need-init,startup-clear?)", t.addr, n)
	}
	rsp := make([]byte, n)
	if _, err := io.ReadFull(t.conn, rsp); err != nil {
		return nil, t.ioErr("reading the response", timeout, err)
	}
	var trailer uint32
	if err := binary.Read(t.conn, binary.BigEndian, &trailer); err != nil {
		return nil, t.ioErr("reading the response trailer", timeout, err)
	}
	return rsp, nil
}

func (t *tcpTPM) ioErr(what string, timeout time.Duration, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("swtpm at %s: no answer within %v while %s (is swtpm stopped or hung, or is another process, bootcertd or tpm2-tools, connected to it? swtpm serves one client at a time): %w", t.addr, timeout, what, ErrNotAnswering)
	}
	return fmt.Errorf("swtpm at %s: %s: %w", t.addr, what, err)
}

func (t *tcpTPM) Close() error { return t.conn.Close() }
