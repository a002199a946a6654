package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// tcpTimeout bounds one command on a tcp: device. swtpm serves one client
// at a time: a second client's connection is accepted by the kernel and then
// never answered, so without a deadline it would hang. RSA-3072 keygen on a
// busy swtpm takes seconds, far below this.
var tcpTimeout = 90 * time.Second

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
	if err := t.conn.SetDeadline(time.Now().Add(tcpTimeout)); err != nil {
		return nil, err
	}
	msg := make([]byte, 9, 9+len(cmd))
	binary.BigEndian.PutUint32(msg[0:4], tpmSendCommand)
	msg[4] = 0 // locality
	binary.BigEndian.PutUint32(msg[5:9], uint32(len(cmd)))
	msg = append(msg, cmd...)
	if _, err := t.conn.Write(msg); err != nil {
		return nil, t.ioErr("sending a command", err)
	}
	var n uint32
	if err := binary.Read(t.conn, binary.BigEndian, &n); err != nil {
		return nil, t.ioErr("reading the response length", err)
	}
	if n == 0 || n > 1<<20 {
		return nil, fmt.Errorf("swtpm at %s: bad response length %d (does it need --flags not-need-init,startup-clear?)", t.addr, n)
	}
	rsp := make([]byte, n)
	if _, err := io.ReadFull(t.conn, rsp); err != nil {
		return nil, t.ioErr("reading the response", err)
	}
	var trailer uint32
	if err := binary.Read(t.conn, binary.BigEndian, &trailer); err != nil {
		return nil, t.ioErr("reading the response trailer", err)
	}
	return rsp, nil
}

func (t *tcpTPM) ioErr(what string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("swtpm at %s: no answer within %v while %s: swtpm serves one client at a time; is another process (bootcertd, tpm2-tools) connected to it?", t.addr, tcpTimeout, what)
	}
	return fmt.Errorf("swtpm at %s: %s: %w", t.addr, what, err)
}

func (t *tcpTPM) Close() error { return t.conn.Close() }
