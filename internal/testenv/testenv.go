// Package testenv starts the real components tests need (swtpm, SoftHSM2)
// on loopback and in temporary directories, and decides what happens when one
// is missing: under CI=true the test fails, elsewhere it is skipped with the
// command that installs it.
package testenv

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/bootcert/bootcert/internal/testkit"
)

// CI reports whether the tests run under CI=true, where every component
// `make test` installs must be present.
func CI() bool { return os.Getenv("CI") == "true" }

// Require fails (CI) or skips (elsewhere) the test when a program is missing.
// It returns the programs' paths.
func Require(t testing.TB, programs ...string) []string {
	t.Helper()
	var paths []string
	for _, p := range programs {
		path, err := exec.LookPath(p)
		if err != nil {
			Missing(t, fmt.Sprintf("%s not found in PATH (run `make deps`)", p))
		}
		paths = append(paths, path)
	}
	return paths
}

// RequireFile is Require for a file such as a PKCS#11 module.
func RequireFile(t testing.TB, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Missing(t, fmt.Sprintf("%s not found (run `make deps`)", path))
	}
}

// Missing fails under CI and skips elsewhere.
func Missing(t testing.TB, why string) {
	t.Helper()
	if CI() {
		t.Fatalf("required component missing under CI=true: %s", why)
	}
	t.Skipf("skipping: %s", why)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreePorts returns n distinct free loopback ports: every listener stays
// open until all are chosen, so (unlike n calls of FreePort, which may hand
// the same just-released port out twice) no two are equal.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// FreePortPair returns two consecutive free ports (swtpm's command and
// control ports).
func FreePortPair(t testing.TB) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		p := FreePort(t)
		if p >= 65535 {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatalf("no pair of consecutive free ports")
	return 0
}

// SWTPM is a running software TPM.
type SWTPM struct {
	Port     int // command port; control port is Port+1
	StateDir string
	cmd      *exec.Cmd
	stderr   *bytes.Buffer
}

// Addr is the command address, host:port.
func (s *SWTPM) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// Device is the keystore device string for it: tcp:127.0.0.1:PORT.
func (s *SWTPM) Device() string { return "tcp:" + s.Addr() }

// TCTI is the tpm2-tools / tpm2-openssl TCTI string for it.
func (s *SWTPM) TCTI() string {
	return fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", s.Port)
}

// StartSWTPM runs swtpm in the foreground on free loopback ports with state in
// a temporary directory; it is stopped when the test ends.
func StartSWTPM(t testing.TB) *SWTPM {
	t.Helper()
	Require(t, "swtpm")
	return StartSWTPMState(t, t.TempDir())
}

// StartSWTPMState is StartSWTPM with a given state directory, so that a test
// can stop and restart the same TPM.
func StartSWTPMState(t testing.TB, state string) *SWTPM {
	t.Helper()
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		s, err := startSWTPM(t, state)
		if err == nil {
			t.Cleanup(s.Stop)
			return s
		}
		last = err
	}
	t.Fatalf("starting swtpm: %v", last)
	return nil
}

func startSWTPM(t testing.TB, state string) (*SWTPM, error) {
	port := FreePortPair(t)
	s := &SWTPM{Port: port, StateDir: state, stderr: &bytes.Buffer{}}
	s.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--tpmstate", "dir="+state,
		"--flags", "not-need-init,startup-clear")
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	// Poll, not a fixed sleep: swtpm is another process.
	if testkit.Poll(5*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", s.Addr(), 100*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}) {
		return s, nil
	}
	s.Stop()
	return nil, fmt.Errorf("swtpm did not listen on %s: %s", s.Addr(), s.stderr.String())
}

// Stop kills swtpm and waits for it. Safe to call twice.
func (s *SWTPM) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// SoftHSM is a private SoftHSM2 configuration with one initialised token.
type SoftHSM struct {
	Module string // path of libsofthsm2.so
	Conf   string // SOFTHSM2_CONF
	Token  string
	PIN    string
	SOPIN  string
}

// SoftHSMModule is Debian's SoftHSM2 PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

// SetupSoftHSM writes a private SoftHSM2 config under dir, points
// SOFTHSM2_CONF at it (process-wide: call it before the first C_Initialize,
// typically from TestMain) and initialises a token.
func SetupSoftHSM(dir, token, pin, soPIN string) (*SoftHSM, error) {
	if _, err := os.Stat(SoftHSMModule); err != nil {
		return nil, fmt.Errorf("%s not found (run `make deps`)", SoftHSMModule)
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return nil, fmt.Errorf("softhsm2-util not found (run `make deps`)")
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", token, "--pin", pin, "--so-pin", soPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return &SoftHSM{Module: SoftHSMModule, Conf: conf, Token: token, PIN: pin, SOPIN: soPIN}, nil
}
