// Package labtest has test helpers for the lab: a throwaway certificate
// authority and device certificates, and the real mosquitto_pub and
// mosquitto_sub clients driven against a broker with client certificates.
package labtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/protocol"
)

// CA is a test certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte
}

// NewCA makes a self-signed ECDSA P-256 CA.
func NewCA(t testing.TB, cn string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"bootcert test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Leaf is a certificate with its private key.
type Leaf struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
	ID      string // AWS IoT certificate ID: lower-hex SHA-256 of the DER
}

// Options for Issue.
type Options struct {
	DNSNames  []string
	IPs       []net.IP
	Server    bool
	NotBefore time.Time
	NotAfter  time.Time
}

// Issue signs a new P-256 leaf certificate with subject CN cn.
func (ca *CA) Issue(t testing.TB, cn string, opts ...Options) *Leaf {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(24 * time.Hour)
	}
	eku := x509.ExtKeyUsageClientAuth
	if o.Server {
		eku = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pk8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &Leaf{
		Cert: cert, Key: key, ID: protocol.CertificateID(der),
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk8}),
	}
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Files writes the certificate and key into dir and returns their paths.
func (l *Leaf) Files(t testing.TB, dir, name string) (certPath, keyPath string) {
	t.Helper()
	certPath = filepath.Join(dir, name+".crt")
	keyPath = filepath.Join(dir, name+".key")
	if err := os.WriteFile(certPath, l.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, l.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

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
