// Package labtest has test helpers for the lab: the real mosquitto_pub and
// mosquitto_sub clients driven against a broker with client certificates.
// Certificates come from internal/testca.
package labtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testenv"
)

// Client is what mosquitto_pub/mosquitto_sub need to connect.
type Client struct {
	Addr     string // host:port
	CAFile   string // the broker's server CA
	CertFile string
	KeyFile  string
	ClientID string
}

func (c Client) args() []string {
	host, port, _ := net.SplitHostPort(c.Addr)
	a := []string{"-h", host, "-p", port, "--cafile", c.CAFile, "-V", "mqttv311"}
	if c.CertFile != "" {
		a = append(a, "--cert", c.CertFile, "--key", c.KeyFile)
	}
	if c.ClientID != "" {
		a = append(a, "-i", c.ClientID)
	}
	return a
}

// RequireMosquitto fails (CI) or skips when the mosquitto clients are missing.
func RequireMosquitto(t testing.TB) {
	t.Helper()
	testenv.Require(t, "mosquitto_pub", "mosquitto_sub")
}

// Pub runs mosquitto_pub with QoS 1 and returns its combined output and
// error (non-nil when the broker refused or dropped the connection).
func Pub(t testing.TB, c Client, topic, message string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append(c.args(), "-q", "1", "-t", topic, "-m", message)
	out, err := exec.CommandContext(ctx, "mosquitto_pub", args...).CombinedOutput()
	return string(out), err
}

// PubArgs runs mosquitto_pub with the client's connection options and
// args, killing it after timeout (mosquitto_pub waits for a PUBACK forever).
func PubArgs(t testing.TB, c Client, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "mosquitto_pub", append(c.args(), args...)...).CombinedOutput()
	return string(out), err
}

// Sub is a running mosquitto_sub.
type Sub struct {
	cmd      *exec.Cmd
	mu       sync.Mutex
	messages []Msg
	granted  []int
	lines    []string
	suback   chan struct{}
	msgCh    chan struct{}
	done     chan struct{}
	waitErr  error
	subOnce  sync.Once
	stopOnce sync.Once
}

// Msg is one received message.
type Msg struct {
	Topic   string
	Payload string
}

const msgPrefix = "=MSG= "

// StartSub runs mosquitto_sub -d on the topics (QoS 1) and returns when its
// SUBACK arrived (or the process ended). It is stopped at test cleanup.
func StartSub(t testing.TB, c Client, topics ...string) *Sub {
	t.Helper()
	return StartSubArgs(t, c, nil, topics...)
}

// StartSubArgs is StartSub with extra mosquitto_sub arguments (e.g. a will).
func StartSubArgs(t testing.TB, c Client, extra []string, topics ...string) *Sub {
	t.Helper()
	args := append(append(c.args(), extra...), "-d", "-q", "1", "-F", msgPrefix+"%t %p")
	for _, tp := range topics {
		args = append(args, "-t", tp)
	}
	// stdbuf: mosquitto_sub's debug lines are block-buffered on a pipe.
	s := &Sub{cmd: exec.Command("stdbuf", append([]string{"-oL", "mosquitto_sub"}, args...)...), suback: make(chan struct{}), msgCh: make(chan struct{}, 1), done: make(chan struct{})}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stderr = s.cmd.Stdout
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting mosquitto_sub: %v", err)
	}
	t.Cleanup(s.Stop)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.lines = append(s.lines, line)
			if rest, ok := strings.CutPrefix(line, msgPrefix); ok {
				topic, payload, _ := strings.Cut(rest, " ")
				s.messages = append(s.messages, Msg{Topic: topic, Payload: payload})
				select {
				case s.msgCh <- struct{}{}:
				default:
				}
			} else if rest, ok := strings.CutPrefix(line, "Subscribed (mid: "); ok {
				if _, codes, ok := strings.Cut(rest, "): "); ok {
					for _, f := range strings.Split(codes, ", ") {
						n, _ := strconv.Atoi(strings.TrimSpace(f))
						s.granted = append(s.granted, n)
					}
				}
				s.subOnce.Do(func() { close(s.suback) })
			}
			s.mu.Unlock()
		}
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	select {
	case <-s.suback:
	case <-s.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("mosquitto_sub got no SUBACK in 20s; output:\n%s", s.Output())
	}
	return s
}

// Granted returns the SUBACK return codes (QoS granted, or 128 = failure).
func (s *Sub) Granted() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.granted...)
}

// Exited reports whether mosquitto_sub has ended (e.g. disconnected).
func (s *Sub) Exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Done is closed when mosquitto_sub ends.
func (s *Sub) Done() <-chan struct{} { return s.done }

// Messages returns what arrived so far.
func (s *Sub) Messages() []Msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Msg(nil), s.messages...)
}

// Output is everything mosquitto_sub printed, for failure messages.
func (s *Sub) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// WaitFor waits until a message matching pred arrived and returns it.
func (s *Sub) WaitFor(t testing.TB, what string, pred func(Msg) bool) Msg {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		for _, m := range s.Messages() {
			if pred(m) {
				return m
			}
		}
		select {
		case <-s.msgCh:
		case <-s.done:
			for _, m := range s.Messages() {
				if pred(m) {
					return m
				}
			}
			t.Fatalf("mosquitto_sub ended before %s arrived; output:\n%s", what, s.Output())
		case <-deadline:
			t.Fatalf("%s did not arrive in 20s; mosquitto_sub output:\n%s", what, s.Output())
		}
	}
}

// Kill ends mosquitto_sub without an MQTT DISCONNECT (its will fires).
func (s *Sub) Kill() { s.Stop() }

// Stop ends mosquitto_sub (SIGKILL: no DISCONNECT is sent).
func (s *Sub) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd.Process != nil {
			s.cmd.Process.Kill()
		}
		<-s.done
	})
}

// Topic matches a message by topic.
func Topic(topic string) func(Msg) bool {
	return func(m Msg) bool { return m.Topic == topic }
}

// Contains matches a message by topic and a payload substring.
func Contains(topic, sub string) func(Msg) bool {
	return func(m Msg) bool { return m.Topic == topic && bytes.Contains([]byte(m.Payload), []byte(sub)) }
}

// Describe formats messages for a failure message.
func Describe(ms []Msg) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%s %s\n", m.Topic, m.Payload)
	}
	return b.String()
}
