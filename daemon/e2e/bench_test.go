package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
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
// reports p50/p95 of that time, p50/p95/p99 of the rotation time (job start
// to commit) and of the overhead beyond the TPM time inside it (every TPM
// command is timed at the transport and subtracted; goal 50 ms p50, 150 ms
// p99 on loopback), and the TPM commands per rotation by command. Run:
// make bench-daemon (-benchtime=50x).
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
	reportQuantiles(b, "bootstrap-to-operational", total, 0.5, 0.95)
	reportQuantiles(b, "rotation", rot, 0.5, 0.95, 0.99)
	reportQuantiles(b, "overhead", over, 0.5, 0.95, 0.99)
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

// buildVariants are the stripped builds BenchmarkBinarySize compares: as
// built by default, without inlining (-gcflags=all=-l: smaller, same
// behaviour), the release build (the Makefile's RELEASE_* flags, read from
// the Makefile: what make packages ships) and without cgo (no PKCS#11).
var buildVariants = []struct {
	name string
	cgo  string
	args []string
}{
	{"cgo", "1", []string{"-trimpath", "-ldflags=-s -w"}},
	{"cgo-noinline", "1", []string{"-trimpath", "-ldflags=-s -w", "-gcflags=all=-l"}},
	{"release", "", nil}, // releaseFlags()
	{"nocgo-noinline", "0", []string{"-trimpath", "-ldflags=-s -w", "-gcflags=all=-l"}},
}

// releaseFlags reads RELEASE_CGO, RELEASE_FLAGS, RELEASE_GCFLAGS and
// RELEASE_LDFLAGS from the Makefile, so that the benchmarks measure exactly
// the build make packages ships.
func releaseFlags(b *testing.B) (cgo string, args []string) {
	b.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		b.Fatal(err)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":=")
		if k = strings.TrimSpace(k); ok && strings.HasPrefix(k, "RELEASE_") {
			vars[k] = strings.TrimSpace(v)
		}
	}
	for _, k := range []string{"RELEASE_CGO", "RELEASE_FLAGS", "RELEASE_GCFLAGS", "RELEASE_LDFLAGS"} {
		if _, ok := vars[k]; !ok {
			b.Fatalf("Makefile: no %s := line", k)
		}
	}
	args = append(strings.Fields(vars["RELEASE_FLAGS"]), strings.Fields(vars["RELEASE_GCFLAGS"])...)
	if vars["RELEASE_LDFLAGS"] != "" {
		args = append(args, "-ldflags="+vars["RELEASE_LDFLAGS"])
	}
	return vars["RELEASE_CGO"], args
}

func buildVariant(b *testing.B, cgo string, args []string) string {
	b.Helper()
	if cgo == "" && args == nil {
		cgo, args = releaseFlags(b)
	}
	bin := filepath.Join(b.TempDir(), "bootcertd")
	cmd := exec.Command("go", append(append([]string{"build"}, args...), "-o", bin, "github.com/bootcert/bootcert/cmd/bootcertd")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", strings.Join(args, " "), err, o)
	}
	return bin
}

// envDuration reads a duration from the environment (def when unset).
func envDuration(b *testing.B, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		b.Fatalf("%s=%q: not a duration", name, v)
	}
	return d
}

// idleFigures are the samples of one idle measurement, by field (kB).
type idleFigures map[string][]float64

var (
	idleOnce   sync.Once
	idleResult idleFigures
	idleLog    string
)

// idleFields are the figures sampled: /proc/PID/status, then smaps_rollup.
var idleFields = []string{"VmRSS", "RssAnon", "RssFile", "Pss", "Pss_Anon", "Pss_File"}

// BenchmarkIdleRSS measures the release build (the Makefile's RELEASE_*
// flags) of bootcertd the way Greengrass nucleus lite publishes its figures:
// started against the lab with keys in swtpm, let rotate once (bootstrap to
// generation 1) and stay connected, a warm-up (BENCH_IDLE_WARMUP, default
// 5m), then VmRSS, RssAnon, RssFile (/proc/PID/status) and Pss, Pss_Anon,
// Pss_File (/proc/PID/smaps_rollup) sampled every BENCH_IDLE_INTERVAL
// (default 10s) for BENCH_IDLE_DURATION (default 10m); it reports the
// median and p95 of each in MB (10^6 bytes) and logs where the RSS is
// by mapping. The daemon runs with the shipped defaults for keep-alive
// and log level. A quick look:
//
//	BENCH_IDLE_WARMUP=10s BENCH_IDLE_DURATION=30s go test -run '^$' -bench IdleRSS -benchtime 1x ./daemon/e2e
//
// The measurement runs once per process; later calls (b.N > 1) report it
// again. BOOTCERT_SMAPS_DIR=DIR keeps the last /proc/PID/smaps.
func BenchmarkIdleRSS(b *testing.B) {
	idleOnce.Do(func() { idleResult, idleLog = measureIdle(b) })
	if idleResult == nil {
		b.Fatal("the idle measurement failed (see the first run)")
	}
	for _, f := range idleFields {
		v := idleResult[f]
		b.ReportMetric(quantile(v, 0.5)*1024/1e6, f+"-p50-MB")
		b.ReportMetric(quantile(v, 0.95)*1024/1e6, f+"-p95-MB")
	}
	b.Log(idleLog)
}

func measureIdle(b *testing.B) (idleFigures, string) {
	warm := envDuration(b, "BENCH_IDLE_WARMUP", 5*time.Minute)
	dur := envDuration(b, "BENCH_IDLE_DURATION", 10*time.Minute)
	every := envDuration(b, "BENCH_IDLE_INTERVAL", 10*time.Second)
	if every <= 0 {
		b.Fatal("BENCH_IDLE_INTERVAL must be positive")
	}
	c := newCloud(b)
	bin := buildVariant(b, "", nil)
	d := newDevice(b, c, "gw-idle", deviceOpts{kind: onTPM, configure: func(cfg *config.Config) {
		def := config.Defaults()
		cfg.Timeouts.KeepAlive, cfg.Log.Level = def.Timeouts.KeepAlive, def.Log.Level
	}})
	d.binary = bin
	d.start()
	d.waitFor("operational after a rotation", operational(1))
	pid := d.cmd.Process.Pid
	// warm-up and sampling intervals are the measurement, not waits for a state
	time.Sleep(warm)
	fig := idleFigures{}
	n := int(dur/every) + 1
	for i := 0; i < n; i++ {
		if i > 0 {
			time.Sleep(every)
		}
		st, sm := procStatus(b, pid), smapsRollup(b, pid)
		for _, f := range idleFields[:3] {
			fig[f] = append(fig[f], st[f])
		}
		for _, f := range idleFields[3:] {
			fig[f] = append(fig[f], sm[f])
		}
	}
	// still connected on generation 1: an idle daemon, not a reconnecting one
	if st, err := d.status(); err != nil || !operational(1)(st) {
		b.Fatalf("after the idle measurement bootcertd is not connected on generation 1: %+v %v\n%s", st, err, tail(d.Log(), 50))
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		b.Fatal(err)
	}
	if dir := os.Getenv("BOOTCERT_SMAPS_DIR"); dir != "" {
		os.WriteFile(filepath.Join(dir, "release.smaps"), smaps, 0o644)
	}
	d.stop()
	return fig, fmt.Sprintf("idle release build: %d samples every %s after a %s warm-up; resident by mapping (kB, last sample): %s",
		n, every, warm, smapsByMapping(string(smaps), bin))
}

// quantile is the nearest-rank quantile of v (which it sorts).
func quantile(v []float64, q float64) float64 {
	sort.Float64s(v)
	return v[int(q*float64(len(v)-1)+0.5)]
}

// smapsByMapping sums Rss and Pss of a /proc/PID/smaps by what is mapped:
// the binary, each shared library, the heap and anonymous memory, stacks.
func smapsByMapping(smaps, bin string) string {
	type sum struct{ rss, pss float64 }
	by := map[string]*sum{}
	var cur string
	for _, line := range strings.Split(smaps, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if strings.Contains(f[0], "-") && len(f) >= 5 && !strings.HasSuffix(f[0], ":") {
			switch {
			case len(f) < 6:
				cur = "anon"
			case f[5] == bin:
				cur = "bootcertd"
			default:
				cur = filepath.Base(f[5])
			}
			continue
		}
		if len(f) == 3 && f[2] == "kB" && (f[0] == "Rss:" || f[0] == "Pss:") {
			v, _ := strconv.ParseFloat(f[1], 64)
			if by[cur] == nil {
				by[cur] = &sum{}
			}
			if f[0] == "Rss:" {
				by[cur].rss += v
			} else {
				by[cur].pss += v
			}
		}
	}
	var names []string
	for k, v := range by {
		if v.rss > 0 {
			names = append(names, k)
		}
	}
	sort.Slice(names, func(i, j int) bool { return by[names[i]].rss > by[names[j]].rss })
	var sb strings.Builder
	for _, k := range names {
		fmt.Fprintf(&sb, " %s rss=%.0f pss=%.0f;", k, by[k].rss, by[k].pss)
	}
	return sb.String()
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

var (
	sizeOnce sync.Once
	sizes    = map[string]float64{}
)

// BenchmarkBinarySize reports the stripped sizes of the build variants
// (goal for the release build: 7 MiB). `make sizes` gives the same figure
// for the three shipped binaries.
func BenchmarkBinarySize(b *testing.B) {
	sizeOnce.Do(func() {
		for _, v := range buildVariants {
			fi, err := os.Stat(buildVariant(b, v.cgo, v.args))
			if err != nil {
				b.Fatal(err)
			}
			sizes[v.name] = float64(fi.Size()) / (1 << 20)
		}
	})
	for _, v := range buildVariants {
		b.ReportMetric(sizes[v.name], v.name+"-MiB")
	}
}

// BenchmarkStartToReady measures the release build from exec to the
// READY=1 datagram on NOTIFY_SOCKET (what systemd waits for with
// Type=notify): configuration, the files it names, the journal and
// credential sets, the control socket. The device is new each time (keys in
// swtpm, nothing rotated yet). Reports p50, p95 and p99 over b.N starts
// (goal: 300 ms).
func BenchmarkStartToReady(b *testing.B) {
	c := newCloud(b)
	bin := buildVariant(b, "", nil)
	sock := filepath.Join(b.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	b.Setenv("NOTIFY_SOCKET", sock)
	var ready []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		d := newDevice(b, c, fmt.Sprintf("gw-ready-%d-%d", b.N, i), deviceOpts{kind: onTPM, configure: func(cfg *config.Config) {
			cfg.Log.Level = config.Defaults().Log.Level
		}})
		d.binary = bin
		b.StartTimer()
		start := time.Now()
		d.start()
		conn.SetReadDeadline(time.Now().Add(30 * time.Second)) // a hang guard
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				b.Fatalf("no READY=1 from bootcertd: %v\n%s", err, d.Log())
			}
			if strings.Contains(string(buf[:n]), "READY=1") {
				break
			}
		}
		ready = append(ready, time.Since(start))
		b.StopTimer()
		d.stop()
		b.StartTimer()
	}
	b.StopTimer()
	reportQuantiles(b, "start-to-ready", ready, 0.5, 0.95, 0.99)
}

// reportQuantiles reports nearest-rank quantiles of ds in ms.
func reportQuantiles(b *testing.B, name string, ds []time.Duration, qs ...float64) {
	v := make([]float64, len(ds))
	for i, d := range ds {
		v[i] = float64(d.Microseconds()) / 1000
	}
	for _, q := range qs {
		b.ReportMetric(quantile(v, q), fmt.Sprintf("%s-p%d-ms", name, int(q*100+0.5)))
	}
}

var _ = journal.Idle
var _ = testenv.CI
