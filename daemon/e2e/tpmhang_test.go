package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bootcert/bootcert/keystore"
)

// swtpmProcess finds the swtpm serving a tcp: key URI (by its command
// port in /proc/PID/cmdline): the harness starts it and keeps no handle.
func swtpmProcess(t *testing.T, keyURI string) *os.Process {
	t.Helper()
	u, err := keystore.ParseURI(keyURI)
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := u.Get("device")
	port := dev[strings.LastIndex(dev, ":")+1:]
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "swtpm" || !strings.Contains(string(b), "type=tcp,port="+port+",") {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		proc, err := os.FindProcess(pid)
		if err != nil {
			t.Fatal(err)
		}
		return proc
	}
	t.Fatalf("no swtpm process for %s", dev)
	return nil
}

// TestHungTPM: the TPM stops answering (swtpm SIGSTOPped) under a running
// bootcertd whose operational credential (generation 1) is committed. When
// the daemon next needs the TPM (here: the broker restarts, the TLS
// handshake needs a signature) it reports within seconds, in status and in
// the log, that the TPM is not answering, and status keeps showing
// generation 1 (it showed generation 0 and an empty state, and the
// watchdog killed the daemon after 60 s with a goroutine dump). SIGTERM
// while the TPM hangs ends the daemon within TimeoutStopSec (20 s); started
// again on the hung TPM it reports the same at once; once swtpm runs again
// (SIGCONT) it connects with generation 1.
func TestHungTPM(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-hang", deviceOpts{kind: onTPM})
	d.start()
	d.waitFor("operational generation 1", operational(1))
	sw := swtpmProcess(t, d.bootKey)
	if err := sw.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			sw.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)

	c.restart() // the session drops; reconnecting needs the TPM to sign
	notAnswering := func(s engineStatus) bool {
		return strings.Contains(s.LastError, "is not answering") && strings.Contains(s.Summary, "not answering")
	}
	reported := time.Now()
	st := d.waitFor("the hung TPM reported", notAnswering)
	t.Logf("reported %s after the broker restart: %q / %q", time.Since(reported).Round(100*time.Millisecond), st.LastError, st.Summary)
	if st.Active.Generation != 1 || !strings.Contains(st.Summary, "generation 1") {
		t.Errorf("while the TPM hangs: generation %d, summary %q; want the committed generation 1", st.Active.Generation, st.Summary)
	}
	if !strings.Contains(st.LastError, "TPM tcp:") || !strings.Contains(st.Advice, "TPM") {
		t.Errorf("error %q advice %q: want the TPM named", st.LastError, st.Advice)
	}
	if !strings.Contains(d.Log(), "key hardware not answering") {
		t.Errorf("no log line says the TPM is not answering:\n%s", tail(d.Log(), 30))
	}

	// stop while the TPM hangs: within the unit's TimeoutStopSec
	stopAt := time.Now()
	d.stop()
	took := time.Since(stopAt)
	t.Logf("stopped %s after SIGTERM with the TPM hung", took.Round(100*time.Millisecond))
	if took > 20*time.Second {
		t.Errorf("SIGTERM took %s with the TPM hung, more than TimeoutStopSec=20s (systemd would SIGKILL)", took)
	}

	// started on the hung TPM: status at once shows generation 1 and,
	// within seconds, the TPM problem
	d.start()
	st = d.waitFor("the hung TPM reported after a start", notAnswering)
	if st.Active.Generation != 1 {
		t.Errorf("started on a hung TPM: generation %d, want 1", st.Active.Generation)
	}

	resume()
	st = d.waitFor("connected with generation 1 once the TPM answers", operational(1))
	if strings.Contains(st.Summary, "not answering") {
		t.Errorf("summary %q after the TPM answered", st.Summary)
	}
	if !strings.Contains(d.Log(), "key hardware answered") && !strings.Contains(d.Log(), "connected") {
		t.Errorf("no recovery in the log:\n%s", tail(d.Log(), 30))
	}
	d.stop()
	if os.Getenv("BOOTCERT_HANG_LOG") != "" {
		t.Log(tail(d.Log(), 80))
	}
}
