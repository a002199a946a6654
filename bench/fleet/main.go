// Command fleet is the lab's fleet load harness: it starts bootcert-lab (the
// real binary, so that its RSS and CPU are its own), registers a CA and N
// ACTIVE device certificates with a policy through the IoT REST API, opens N
// concurrent TLS MQTT connections at a target connect rate, holds them,
// publishes a sample and prints a table of figures. It is a benchmark, not a
// test: nothing here asserts a speed.
//
//	go run ./bench/fleet -clients 2000 -rate 500
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud/lab"
)

type options struct {
	clients   int
	rate      float64
	hold      time.Duration
	samples   int
	labBin    string
	keepalive time.Duration
	regWorker int
	limits    string
	template  string
	jitr      bool
}

func main() {
	var o options
	flag.IntVar(&o.clients, "clients", 2000, "concurrent MQTT clients")
	flag.Float64Var(&o.rate, "rate", 500, "target connects per second")
	flag.DurationVar(&o.hold, "hold", 10*time.Second, "how long to hold every connection before the sample publish")
	flag.IntVar(&o.samples, "samples", 200, "clients that publish a sample message (and receive it back)")
	flag.StringVar(&o.labBin, "lab", "", "bootcert-lab binary (default: go build ./cmd/bootcert-lab)")
	flag.DurationVar(&o.keepalive, "keepalive", 60*time.Second, "MQTT keepalive")
	flag.IntVar(&o.regWorker, "register-workers", 16, "concurrent registration API calls")
	flag.StringVar(&o.limits, "limits", "", "passed to bootcert-lab --limits")
	flag.StringVar(&o.template, "template", "none", "passed to bootcert-lab --template")
	flag.BoolVar(&o.jitr, "jitr", false, "let JITR register the devices (a first refused connect each), then activate them through the API")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

type device struct {
	id   string
	cert tls.Certificate
	pem  string
}

func run(o options) error {
	if err := raiseNoFile(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bootcert-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	bin := o.labBin
	if bin == "" {
		bin = filepath.Join(dir, "bootcert-lab")
		out, err := exec.Command("go", "build", "-o", bin, "./cmd/bootcert-lab").CombinedOutput()
		if err != nil {
			return fmt.Errorf("building bootcert-lab (run from the repository root, or pass -lab): %v\n%s", err, out)
		}
	}
	args := []string{"serve", "--data", filepath.Join(dir, "lab"), "--mqtt", "127.0.0.1:0", "--api", "127.0.0.1:0", "--s3", "127.0.0.1:0", "--log-level", "error", "--template", o.template}
	if o.limits != "" {
		args = append(args, "--limits", o.limits)
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphaned lab if the harness is killed
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	startLab := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the lab's endpoints line: %w", err)
	}
	ready := time.Since(startLab)
	var ep lab.Endpoints
	if err := json.Unmarshal([]byte(line), &ep); err != nil {
		return fmt.Errorf("lab endpoints %q: %w", line, err)
	}
	caPEM, err := os.ReadFile(ep.ServerCA)
	if err != nil {
		return err
	}
	pid := cmd.Process.Pid
	ctx := context.Background()
	cfg := lab.ClientConfig(caPEM, "us-east-1")
	api := iot.NewFromConfig(cfg, func(o *iot.Options) { o.BaseEndpoint = aws.String(ep.API) })

	// Factory CA, registered with auto-registration like bootcertctl cloud setup.
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet factory CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	caPEMs := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	code, err := api.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil {
		return fmt.Errorf("GetRegistrationCode: %w", err)
	}
	verKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	verDER, _ := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: aws.ToString(code.RegistrationCode)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour)}, caCert, verKey.Public(), caKey)
	if _, err := api.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(caPEMs),
		VerificationCertificate: aws.String(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: verDER}))),
		SetAsActive:             true, AllowAutoRegistration: true}); err != nil {
		return fmt.Errorf("RegisterCACertificate: %w", err)
	}
	policy := `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Certificate.Subject.CommonName}"},
 {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:us-east-1:123456789012:topic/fleet/${iot:ClientId}/*"},
 {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/fleet/${iot:ClientId}/*"}]}`
	if _, err := api.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("fleet"), PolicyDocument: aws.String(policy)}); err != nil {
		return fmt.Errorf("CreatePolicy: %w", err)
	}

	// Devices.
	devs := make([]*device, o.clients)
	for i := range devs {
		id := fmt.Sprintf("fleet-%05d", i)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(int64(i) + 100), Subject: pkix.Name{CommonName: id},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, caCert, key.Public(), caKey)
		if err != nil {
			return err
		}
		devs[i] = &device{id: id, cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
			pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsFor := func(d *device) *tls.Config {
		return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{d.cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	}
	var jitrTime time.Duration
	var jitrRefused atomic.Int64
	if o.jitr {
		// Every device's first connect registers its certificate
		// PENDING_ACTIVATION and is closed.
		jstart := time.Now()
		if err := parallel(64, len(devs), func(i int) error {
			c, err := dial(ep.MQTT, tlsFor(devs[i]), devs[i].id, o.keepalive)
			if err == nil {
				c.close()
				return fmt.Errorf("%s: first connect with an unregistered certificate was accepted", devs[i].id)
			}
			jitrRefused.Add(1)
			return nil
		}); err != nil {
			return err
		}
		jitrTime = time.Since(jstart)
	}
	regStart := time.Now()
	if err := parallel(o.regWorker, len(devs), func(i int) error {
		var arn *string
		if o.jitr {
			id := certID(devs[i].cert.Certificate[0])
			d, err := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(id)})
			if err != nil {
				return fmt.Errorf("DescribeCertificate %s after JITR: %w", devs[i].id, err)
			}
			if d.CertificateDescription.Status != types.CertificateStatusPendingActivation {
				return fmt.Errorf("%s after JITR: %s", devs[i].id, d.CertificateDescription.Status)
			}
			if _, err := api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(id), NewStatus: types.CertificateStatusActive}); err != nil {
				return fmt.Errorf("UpdateCertificate %s: %w", devs[i].id, err)
			}
			arn = d.CertificateDescription.CertificateArn
		} else {
			out, err := api.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(devs[i].pem), CaCertificatePem: aws.String(caPEMs), Status: types.CertificateStatusActive})
			if err != nil {
				return fmt.Errorf("RegisterCertificate %s: %w", devs[i].id, err)
			}
			arn = out.CertificateArn
		}
		if _, err := api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("fleet"), Target: arn}); err != nil {
			return fmt.Errorf("AttachPolicy %s: %w", devs[i].id, err)
		}
		return nil
	}); err != nil {
		return err
	}
	regTime := time.Since(regStart)

	// Connect at the target rate.
	load0 := loadavg()
	clients := make([]*client, len(devs))
	lat := make([]time.Duration, len(devs))
	var failed atomic.Int64
	var firstErr atomic.Value
	cpu0, _ := procCPU(pid)
	self0, _ := procCPU(os.Getpid())
	t0 := time.Now()
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / o.rate)
	for i, d := range devs {
		if wait := time.Until(t0.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		wg.Add(1)
		go func(i int, d *device) {
			defer wg.Done()
			start := time.Now()
			c, err := dial(ep.MQTT, tlsFor(d), d.id, o.keepalive)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v", d.id, err))
				return
			}
			lat[i] = time.Since(start)
			clients[i] = c
		}(i, d)
	}
	wg.Wait()
	connectWall := time.Since(t0)
	cpu1, _ := procCPU(pid)
	self1, _ := procCPU(os.Getpid())
	rssConnected, _ := procRSS(pid)

	connected := 0
	var lats []time.Duration
	for i, c := range clients {
		if c != nil {
			connected++
			lats = append(lats, lat[i])
		}
	}

	// Hold.
	time.Sleep(o.hold)
	cpu2, _ := procCPU(pid)
	alive := 0
	for _, c := range clients {
		if c != nil && c.alive() {
			alive++
		}
	}

	// Sample: subscribe to own topic, publish, receive it back.
	var rtt []time.Duration
	var sampleFail int
	for i := 0; i < len(clients) && len(rtt)+sampleFail < o.samples; i++ {
		c := clients[i]
		if c == nil {
			continue
		}
		topic := "fleet/" + devs[i].id + "/telemetry"
		if err := c.subscribe("fleet/"+devs[i].id+"/#", 10*time.Second); err != nil {
			sampleFail++
			continue
		}
		start := time.Now()
		if err := c.publish(topic, []byte(`{"temp":21.5}`), 10*time.Second); err != nil {
			sampleFail++
			continue
		}
		select {
		case <-c.received:
			rtt = append(rtt, time.Since(start))
		case <-time.After(10 * time.Second):
			sampleFail++
		}
	}
	rssEnd, _ := procRSS(pid)
	for _, c := range clients {
		if c != nil {
			c.close()
		}
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "machine\t%d CPU (GOMAXPROCS %d), %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintf(w, "lab ready after start\t%s\n", ready.Round(time.Millisecond))
	fmt.Fprintf(w, "load average before connects\t%s\n", load0)
	if o.jitr {
		fmt.Fprintf(w, "JITR (refused first connects, 64 at a time)\t%d registered PENDING_ACTIVATION in %s (%.0f/s)\n", jitrRefused.Load(), jitrTime.Round(time.Millisecond), float64(jitrRefused.Load())/jitrTime.Seconds())
		fmt.Fprintf(w, "activation (REST: DescribeCertificate+UpdateCertificate+AttachPolicy)\t%d devices in %s (%.0f devices/s)\n", len(devs), regTime.Round(time.Millisecond), float64(len(devs))/regTime.Seconds())
	} else {
		fmt.Fprintf(w, "registration (REST: RegisterCertificate+AttachPolicy)\t%d devices in %s (%.0f devices/s)\n", len(devs), regTime.Round(time.Millisecond), float64(len(devs))/regTime.Seconds())
	}
	fmt.Fprintf(w, "clients requested\t%d at %.0f connects/s target\n", o.clients, o.rate)
	fmt.Fprintf(w, "clients connected\t%d (failed %d)\n", connected, failed.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Fprintf(w, "first failure\t%s\n", e)
	}
	fmt.Fprintf(w, "connect rate achieved\t%.1f connects/s (%d in %s)\n", float64(connected)/connectWall.Seconds(), connected, connectWall.Round(time.Millisecond))
	fmt.Fprintf(w, "connect latency (TLS+CONNACK)\tp50 %s  p95 %s  p99 %s  max %s\n", pct(lats, 50), pct(lats, 95), pct(lats, 99), pct(lats, 100))
	fmt.Fprintf(w, "still connected after %s hold\t%d\n", o.hold, alive)
	fmt.Fprintf(w, "sample publish round trip (QoS 1, own subscription)\t%d ok, %d failed; p50 %s  p95 %s\n", len(rtt), sampleFail, pct(rtt, 50), pct(rtt, 95))
	fmt.Fprintf(w, "lab CPU during connects\t%.0f%% of one core\n", 100*(cpu1-cpu0)/connectWall.Seconds())
	fmt.Fprintf(w, "harness CPU during connects (client side TLS)\t%.0f%% of one core\n", 100*(self1-self0)/connectWall.Seconds())
	fmt.Fprintf(w, "lab CPU while holding\t%.1f%% of one core\n", 100*(cpu2-cpu1)/o.hold.Seconds())
	fmt.Fprintf(w, "lab RSS\t%.0f MiB with %d connections, %.0f MiB after the sample\n", float64(rssConnected)/(1<<20), connected, float64(rssEnd)/(1<<20))
	w.Flush()
	if connected < o.clients {
		return fmt.Errorf("%d of %d clients failed to connect", o.clients-connected, o.clients)
	}
	if sampleFail > 0 || alive < connected {
		return fmt.Errorf("%d sample round trips failed, %d of %d connections dropped during the hold", sampleFail, connected-alive, connected)
	}
	return nil
}

func parallel(workers, n int, f func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i].Round(100 * time.Microsecond)
}

// raiseNoFile raises the open-files limit to its hard maximum: each client
// is one socket here and one in the lab (which inherits the limit).
func raiseNoFile() error {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return err
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return fmt.Errorf("raising RLIMIT_NOFILE to %d: %w", l.Max, err)
	}
	return nil
}

// procCPU returns the process's user+system CPU seconds.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0, errors.New("bad /proc stat")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

// procRSS returns the process's resident set size in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS")
}

func certID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ") + " (other processes share the CPUs: compare with the CPU count)"
}
