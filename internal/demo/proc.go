package demo

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// proc is a program the demo started; it is stopped by its PID only.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// startProc starts a program with its output fed line by line to out.
func startProc(name string, out io.Writer, path string, args ...string) (*proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group: a Ctrl-C in the terminal reaches the demo, which
	// stops its programs in order; they die with the demo if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, path, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits up to grace, then SIGKILL. It returns the exit
// code (-1 for a signal).
func (p *proc) stop(sig syscall.Signal, grace time.Duration) int {
	if !p.exited() {
		p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(grace):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	return p.cmd.ProcessState.ExitCode()
}

// lineWriter calls fn with every complete line written to it.
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func(line string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		w.fn(line)
	}
}

// logFile keeps a component's raw log and its tail for the failure report.
type logFile struct {
	mu   sync.Mutex
	f    *os.File
	tail []string
}

func newLogFile(path string) (*logFile, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating log %s: %w", path, err)
	}
	return &logFile{f: f}, nil
}

func (l *logFile) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.f, line)
	l.tail = append(l.tail, line)
	if len(l.tail) > 400 {
		l.tail = l.tail[len(l.tail)-200:]
	}
}

func (l *logFile) last(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.tail) > n {
		return append([]string{}, l.tail[len(l.tail)-n:]...)
	}
	return append([]string{}, l.tail...)
}

func (l *logFile) close() { l.f.Close() }

// freePortPair returns two consecutive free loopback ports (swtpm's
// command and control ports).
func freePortPair() (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p >= 65535 {
			continue
		}
		if l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1)); err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no two consecutive free ports on 127.0.0.1")
}

// waitListening waits until addr accepts TCP connections or p exits.
func waitListening(p *proc, addr string, max time.Duration) error {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited before listening on %s", p.name, addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s did not listen on %s within %s", p.name, addr, max)
}
