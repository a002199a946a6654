package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/bootcert/bootcert/daemon"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/keystore/tpm"
)

// timed records when each TPM command ran and how long it took.
type timed struct {
	next transport.TPM
	mu   sync.Mutex
	ops  []span
}

type span struct {
	start, end time.Time
	cc         tpm2.TPMCC
	rc         uint32 // response code: retries (TPM_RC_RETRY) show up here
}

func (t *timed) Send(cmd []byte) ([]byte, error) {
	s := time.Now()
	r, err := t.next.Send(cmd)
	var cc tpm2.TPMCC
	if len(cmd) >= 10 {
		cc = tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	}
	rc := uint32(0)
	if len(r) >= 10 {
		rc = binary.BigEndian.Uint32(r[6:10])
	}
	t.mu.Lock()
	t.ops = append(t.ops, span{s, time.Now(), cc, rc})
	t.mu.Unlock()
	return r, err
}

func (t *timed) within(a, b time.Time, counts map[string]int) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var d time.Duration
	for _, o := range t.ops {
		if !o.start.Before(a) && !o.end.After(b) {
			d += o.end.Sub(o.start)
			name := ccName(o.cc)
			if o.rc != 0 {
				name += fmt.Sprintf("(rc=0x%x)", o.rc)
			}
			counts[name]++
		}
	}
	return d
}

func ccName(cc tpm2.TPMCC) string {
	names := map[tpm2.TPMCC]string{
		tpm2.TPMCCSign: "Sign", tpm2.TPMCCLoad: "Load", tpm2.TPMCCCreate: "Create", tpm2.TPMCCCreatePrimary: "CreatePrimary",
		tpm2.TPMCCFlushContext: "FlushContext", tpm2.TPMCCReadPublic: "ReadPublic", tpm2.TPMCCEvictControl: "EvictControl",
		tpm2.TPMCCGetCapability: "GetCapability", tpm2.TPMCCStartAuthSession: "StartAuthSession", tpm2.TPMCCContextSave: "ContextSave",
		tpm2.TPMCCContextLoad: "ContextLoad", tpm2.TPMCCGetRandom: "GetRandom",
	}
	if n, ok := names[cc]; ok {
		return n
	}
	return fmt.Sprintf("0x%x", uint32(cc))
}

// BenchmarkBootstrapToOperational runs bootcertd's daemon in-process
// against the lab with keys in swtpm: from start to operational (JITR
// refusal and retry, activation, job, key, CSR, swap, ack, commit). It
// reports p50/p95 of that time, the rotation time (job start to commit), the
// TPM time inside the rotation, the overhead beyond it, and the TPM
// commands per rotation by command. Run: make bench (-benchtime=20x).
func BenchmarkBootstrapToOperational(b *testing.B) {
	c := newCloud(b)
	var total, rot, over []time.Duration
	counts := map[string]int{}
	laps := map[string]float64{}
	for i := 0; i < b.N; i++ {
		d := newDevice(b, c, fmt.Sprintf("gw-bench-%d", i), deviceOpts{kind: onTPM})
		cfg, err := config.Load(d.cfgPath)
		if err != nil {
			b.Fatal(err)
		}
		dev := strings.TrimPrefix(strings.Split(cfg.Identity.BootstrapKey, ";")[0], "tpm:device=")
		counter := tpm.NewCounter()
		tm := &timed{}
		if err := tpm.OpenDevice(dev, func(next transport.TPM) transport.TPM { tm.next = counter.Wrap(next); return tm }); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- daemon.Run(ctx, cfg, slog.New(slog.DiscardHandler)) }()
		st := d.waitFor("operational", operational(1))
		elapsed := time.Since(start)
		e := d.journalEntry()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		tpm.CloseDevice(dev)
		_ = st
		total = append(total, elapsed)
		r := e.FinishedAt.Sub(e.StartedAt)
		rot = append(rot, r)
		over = append(over, r-tm.within(e.StartedAt, e.FinishedAt, counts))
		for k, v := range st.LastTimings {
			laps[k] += v
		}
	}
	b.StopTimer()
	report := func(name string, ds []time.Duration) {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		p := func(q float64) time.Duration { return ds[int(q*float64(len(ds)-1)+0.5)] }
		b.ReportMetric(float64(p(0.5).Microseconds())/1000, name+"-p50-ms")
		b.ReportMetric(float64(p(0.95).Microseconds())/1000, name+"-p95-ms")
	}
	report("bootstrap-to-operational", total)
	report("rotation", rot)
	report("overhead", over)
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, " %s=%.1f", k, float64(counts[k])/float64(b.N))
	}
	sb.WriteString("\nwhere a rotation's time goes (mean ms):")
	keys = keys[:0]
	for k := range laps {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&sb, " %s=%.2f", k, laps[k]/float64(b.N))
	}
	device := 0.0
	for k, v := range laps {
		if !strings.HasPrefix(k, "wait-") {
			device += v
		}
	}
	b.ReportMetric(device/float64(b.N), "device-side-ms")
	b.Logf("TPM commands per rotation (job start to commit), by command:%s", sb.String())
}

// buildVariants are the stripped builds measured: as built by default,
// without inlining (-gcflags=all=-l: smaller, same behaviour), the release
// build (the Makefile's RELEASE_* flags: cgo, no inlining, tag nosimulator,
// which leaves out the in-process TPM simulator and libcrypto), and without
// cgo (no PKCS#11).
var buildVariants = []struct {
	name string
	cgo  string
	args []string
}{
	{"cgo", "1", []string{"-ldflags=-s -w"}},
	{"cgo-noinline", "1", []string{"-ldflags=-s -w", "-gcflags=all=-l"}},
	{"release", "1", []string{"-ldflags=-s -w", "-gcflags=all=-l", "-tags=nosimulator"}},
	{"nocgo-noinline", "0", []string{"-ldflags=-s -w", "-gcflags=all=-l"}},
}

func buildVariant(b *testing.B, cgo string, args []string) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "bootcertd")
	cmd := exec.Command("go", append(append([]string{"build", "-trimpath"}, args...), "-o", bin, "github.com/bootcert/bootcert/cmd/bootcertd")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%v\n%s", err, o)
	}
	return bin
}

// BenchmarkIdleRSS starts the real, stripped bootcertd, lets it rotate, and
// reads its VmRSS, RssAnon, RssFile and Pss once idle (goals: VmRSS 9 MB,
// RssAnon 4 MB). RssFile is the binary's pages (nearly all of them are
// mapped: it follows the binary's size) plus, for cgo builds, libc and
// ld.so, which Pss charges only in part since other processes share them.
func BenchmarkIdleRSS(b *testing.B) {
	c := newCloud(b)
	for _, v := range buildVariants {
		b.Run(v.name, func(b *testing.B) {
			bin := buildVariant(b, v.cgo, v.args)
			var rss, anon, file, pss float64
			runs := min(b.N, 3) // idle RSS barely varies; 3 runs are enough
			for i := 0; i < runs; i++ {
				d := newDevice(b, c, fmt.Sprintf("gw-rss-%s-%d-%d", v.name, b.N, i), deviceOpts{kind: onTPM})
				d.binary = bin
				d.start()
				d.waitFor("operational", operational(1))
				time.Sleep(2 * time.Second) // idle: a measurement, not an assertion
				st := procStatus(b, d.cmd.Process.Pid)
				pss += smapsRollup(b, d.cmd.Process.Pid)["Pss"]
				if dir := os.Getenv("BOOTCERT_SMAPS_DIR"); dir != "" && i == 0 {
					// per-mapping detail for where the RSS goes
					if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", d.cmd.Process.Pid)); err == nil {
						os.WriteFile(filepath.Join(dir, v.name+".smaps"), data, 0o644)
					}
				}
				rss += st["VmRSS"]
				anon += st["RssAnon"]
				file += st["RssFile"]
				d.stop()
			}
			b.ReportMetric(rss/float64(runs)/1024, "VmRSS-MB")
			b.ReportMetric(anon/float64(runs)/1024, "RssAnon-MB")
			b.ReportMetric(file/float64(runs)/1024, "RssFile-MB")
			// Pss charges shared pages (libc, ld.so) in proportion
			b.ReportMetric(pss/float64(runs)/1024, "Pss-MB")
		})
	}
}

func procStatus(b *testing.B, pid int) map[string]float64 {
	return procKB(b, fmt.Sprintf("/proc/%d/status", pid))
}

func smapsRollup(b *testing.B, pid int) map[string]float64 {
	return procKB(b, fmt.Sprintf("/proc/%d/smaps_rollup", pid))
}

// procKB reads the "Name: N kB" lines of a /proc file.
func procKB(b *testing.B, path string) map[string]float64 {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 2 && fs[1] == "kB" {
			n, _ := strconv.ParseFloat(fs[0], 64)
			out[k] = n
		}
	}
	return out
}

// BenchmarkBinarySize reports the stripped sizes of the build variants
// (goal: 8 MB).
func BenchmarkBinarySize(b *testing.B) {
	for _, v := range buildVariants {
		bin := buildVariant(b, v.cgo, v.args)
		fi, _ := os.Stat(bin)
		b.ReportMetric(float64(fi.Size())/(1<<20), v.name+"-MiB")
	}
	for i := 0; i < b.N; i++ {
	}
}

var _ = journal.Idle
var _ = testenv.CI
