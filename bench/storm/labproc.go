package storm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bootcert/bootcert/cloud/lab"
)

// labHandle is the lab the devices talk to: in this process (lab.Start)
// or the bootcert-lab binary (Options.LabBinary), whose CPU and memory are
// then its own.
type labHandle interface {
	Endpoints() lab.Endpoints
	ServerCAPEM() []byte
	Close() error
}

// labProc is a running bootcert-lab serve.
type labProc struct {
	cmd  *exec.Cmd
	ep   lab.Endpoints
	ca   []byte
	done chan struct{}
}

func (p *labProc) Endpoints() lab.Endpoints { return p.ep }
func (p *labProc) ServerCAPEM() []byte      { return p.ca }

func (p *labProc) Close() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// startLabProc starts bin serve and feeds its JSON log to c.
func startLabProc(ctx context.Context, bin, dataDir, tmpl, limitsPath string, c *counter) (*labProc, error) {
	cmd := exec.Command(bin, "serve", "--data", dataDir, "--mqtt", "127.0.0.1:0", "--api", "127.0.0.1:0", "--s3", "127.0.0.1:0",
		"--template", tmpl, "--limits", limitsPath)
	// a harness killed mid-run (SIGKILL, a timeout) takes its lab along:
	// an orphaned lab kept a core busy for the next run
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	p := &labProc{cmd: cmd, done: make(chan struct{})}
	logDone := make(chan struct{})
	var lastErr strings.Builder
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				if lastErr.Len() < 4096 {
					lastErr.Write(sc.Bytes())
					lastErr.WriteByte('\n')
				}
				continue
			}
			msg, _ := rec["msg"].(string)
			t, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["time"]))
			c.observe(msg, t, func(k string) string {
				v, ok := rec[k]
				if !ok {
					return ""
				}
				return fmt.Sprint(v)
			})
		}
	}()
	go func() { <-logDone; cmd.Wait(); close(p.done) }()
	line := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		s, _ := r.ReadString('\n')
		line <- s
		io.Copy(io.Discard, r)
	}()
	select {
	case s := <-line:
		if err := json.Unmarshal([]byte(s), &p.ep); err != nil || p.ep.MQTT == "" {
			p.Close()
			return nil, fmt.Errorf("%s did not print its endpoints (%q): %s", bin, s, lastErr.String())
		}
	case <-time.After(5 * time.Minute):
		p.Close()
		return nil, errors.New("bootcert-lab: not ready after 5 minutes")
	case <-ctx.Done():
		p.Close()
		return nil, ctx.Err()
	}
	if p.ca, err = os.ReadFile(p.ep.ServerCA); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// procStat is a process's CPU (user+system) and memory.
func procStat(pid int) (cpu time.Duration, rss, hwm int64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			if f := strings.Fields(s[i+2:]); len(f) > 12 {
				ut, _ := strconv.ParseInt(f[11], 10, 64)
				st, _ := strconv.ParseInt(f[12], 10, 64)
				cpu = time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			kb := func(rest string) int64 {
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				return n * 1024
			}
			if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				rss = kb(rest)
			} else if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				hwm = kb(rest)
			}
		}
	}
	return
}
