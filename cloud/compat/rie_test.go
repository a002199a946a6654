package compat_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/bootcert/bootcert/cloud"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lab/template"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/internal/testkit"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// rieModule is the AWS Lambda Runtime Interface Emulator, pinned in
// tools/go.mod (a tool directive) and built from the Go module proxy.
const rieModule = "github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie"

// buildRIE builds aws-lambda-rie with tools/go.mod into dir.
func buildRIE(t *testing.T, dir string) string {
	t.Helper()
	root, gobin := testkit.ModuleRoot(t)
	out := filepath.Join(dir, "aws-lambda-rie")
	cmd := exec.Command(gobin, "build", "-modfile=tools/go.mod", "-o", out, rieModule)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		testenv.Missing(t, fmt.Sprintf("building %s from tools/go.mod (the Go module proxy or cache is needed): %v\n%s", rieModule, err, b))
	}
	return out
}

// buildZips runs scripts/lambdas.sh (make lambdas) and unpacks each
// function's bootstrap for this machine's architecture.
func buildZips(t *testing.T, dir string) map[string]string {
	t.Helper()
	root, _ := testkit.ModuleRoot(t)
	arch := map[string]string{"amd64": "x86_64", "arm64": "arm64"}[runtime.GOARCH]
	if arch == "" {
		t.Skipf("no Lambda architecture for GOARCH %s", runtime.GOARCH)
	}
	zips := filepath.Join(dir, "zips")
	cmd := exec.Command(filepath.Join(root, "scripts", "lambdas.sh"), zips)
	cmd.Dir = root
	// Only this machine's architecture: the emulator runs the bootstrap natively.
	cmd.Env = append(os.Environ(), "LAMBDA_ARCHES="+arch+":"+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/lambdas.sh: %v\n%s", err, b)
	}
	out := map[string]string{}
	for _, name := range []string{"activator", "vendor", "reaper", "activation", "renewal", "provisionhook"} {
		zr, err := zip.OpenReader(filepath.Join(zips, arch, name+".zip"))
		if err != nil {
			t.Fatal(err)
		}
		rc, err := zr.File[0].Open()
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(rc)
		rc.Close()
		zr.Close()
		p := filepath.Join(dir, name, "bootstrap")
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, body, 0o755); err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	return out
}

// rieFunction is one bootstrap running under the emulator.
type rieFunction struct {
	url string
	cmd *exec.Cmd
	mu  sync.Mutex
	log bytes.Buffer
}

func (f *rieFunction) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.log.Write(p)
}

func (f *rieFunction) output() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.log.String()
}

// startRIE runs bootstrap under the emulator on loopback ports with env as
// the function's whole environment (plus PATH).
func startRIE(t *testing.T, rie, bootstrap string, env map[string]string) *rieFunction {
	t.Helper()
	// Two distinct ports: two FreePort calls can return the same one, and
	// the emulator then panics on "address already in use".
	ports := testenv.FreePorts(t, 2)
	port, apiPort := ports[0], ports[1]
	f := &rieFunction{url: fmt.Sprintf("http://127.0.0.1:%d/2015-03-31/functions/function/invocations", port)}
	f.cmd = exec.Command(rie, "--runtime-interface-emulator-address", fmt.Sprintf("127.0.0.1:%d", port),
		"--runtime-api-address", fmt.Sprintf("127.0.0.1:%d", apiPort), bootstrap)
	f.cmd.Dir = filepath.Dir(bootstrap)
	f.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		f.cmd.Env = append(f.cmd.Env, k+"="+v)
	}
	f.cmd.Stdout, f.cmd.Stderr = f, f
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("starting aws-lambda-rie: %v", err)
	}
	t.Cleanup(func() {
		f.cmd.Process.Kill()
		f.cmd.Wait()
		if t.Failed() {
			t.Logf("%s under the emulator:\n%s", filepath.Base(filepath.Dir(bootstrap)), f.output())
		}
	})
	return f
}

// invoke posts an event as Lambda's Invoke does and returns the result.
func (f *rieFunction) invoke(t *testing.T, event any) json.RawMessage {
	t.Helper()
	b, _ := json.Marshal(event)
	var resp *http.Response
	// The emulator's HTTP server comes up a moment after the process.
	testkit.Eventually(t, 20*time.Second, func() bool {
		var err error
		resp, err = http.Post(f.url, "application/json", bytes.NewReader(b))
		return err == nil
	}, "the emulator never answered on %s", f.url)
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("invoke: HTTP %d: %s", resp.StatusCode, out)
	}
	var fnErr struct {
		ErrorMessage string `json:"errorMessage"`
		ErrorType    string `json:"errorType"`
	}
	if json.Unmarshal(out, &fnErr) == nil && fnErr.ErrorType != "" {
		t.Fatalf("function error %s: %s", fnErr.ErrorType, fnErr.ErrorMessage)
	}
	return out
}

// TestLambdaZipsUnderRIE runs each function's bootstrap from scripts/lambdas.sh
// under the AWS Lambda Runtime Interface Emulator, configured only by the
// template's Environment.Variables plus the AWS SDK's standard endpoint
// overrides (AWS_ENDPOINT_URL_IOT, AWS_ENDPOINT_URL_S3), AWS_CA_BUNDLE and
// the key pair of the function's role in the lab (so its S3 calls are
// authorized with the template's role policies), and sends representative
// events. The lab's own
// in-process functions are off (NoBuild), so every change comes from the zips.
func TestLambdaZipsUnderRIE(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	rie := buildRIE(t, dir)
	t.Logf("aws-lambda-rie built in %v", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	boot := buildZips(t, dir)
	t.Logf("scripts/lambdas.sh (6 functions, this architecture) ran %v", time.Since(start).Round(time.Millisecond))

	r := startLab(t, func(c *lab.Config) { c.NoBuild = true })
	const thing = "gw-rie"
	dev := r.ca.Issue(t, thing, time.Now())
	r.runSetup([]manifest.Entry{{DeviceID: thing}})

	tmpl, err := template.Load(templatePath, template.Options{})
	if err != nil {
		t.Fatal(err)
	}
	eps := r.lab.Endpoints()
	sdkEnv := map[string]string{
		"AWS_REGION":           "us-east-1",
		"AWS_ENDPOINT_URL_IOT": eps.API, "AWS_ENDPOINT_URL_S3": eps.S3, "AWS_CA_BUNDLE": eps.ServerCA,
		"AWS_EC2_METADATA_DISABLED": "true",
	}
	fns := map[string]*rieFunction{}
	for _, f := range tmpl.Functions {
		name := strings.ToLower(strings.TrimSuffix(f.LogicalID, "Function"))
		if boot[name] == "" {
			t.Fatalf("template function %s has no zip %s", f.LogicalID, name)
		}
		env := map[string]string{}
		for k, v := range f.Env {
			env[k] = v
		}
		for k, v := range sdkEnv {
			env[k] = v
		}
		// Each zip signs with its template role's key pair: the lab
		// authorizes its S3 calls with the role's policies.
		ak, sk, ok := r.lab.FunctionCredentials(f.LogicalID)
		if !ok {
			t.Fatalf("the lab has no role for %s", f.LogicalID)
		}
		env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = ak, sk
		env["AWS_LAMBDA_FUNCTION_NAME"] = f.Name
		env["AWS_LAMBDA_FUNCTION_TIMEOUT"] = fmt.Sprint(f.Timeout)
		fns[f.LogicalID] = startRIE(t, rie, boot[name], env)
	}
	if len(fns) != len(cloud.LogicalIDs) {
		t.Fatalf("template has %d functions, cloud.Build knows %v", len(fns), cloud.LogicalIDs)
	}

	// JITR: the device's first connect registers its certificate
	// PENDING_ACTIVATION (the lab's own activator is off).
	jitrConnect(t, r, dev)
	eventually(t, "certificate registered", func() bool { return r.certStatus(dev.CertID) == "PENDING_ACTIVATION" })

	t.Run("activator/jitr-event", func(t *testing.T) {
		out := fns[cloud.Activator].invoke(t, map[string]any{
			"certificateId": dev.CertID, "caCertificateId": r.setup.CACertificateID, "timestamp": time.Now().UnixMilli(),
			"certificateStatus": "PENDING_ACTIVATION", "awsAccountId": "123456789012", "certificateRegistrationTimestamp": fmt.Sprint(time.Now().UnixMilli()),
		})
		t.Logf("activator: %s", out)
		if st := r.certStatus(dev.CertID); st != "ACTIVE" {
			t.Fatalf("certificate %s after the activator, want ACTIVE (result %s)", st, out)
		}
		eventually(t, "the rotation job execution", func() bool { return r.jobStatus(thing) == "QUEUED" })
	})

	t.Run("activation/describe", func(t *testing.T) {
		out := fns[cloud.Activation].invoke(t, map[string]any{
			"version": "2.0", "routeKey": "GET /devices/{deviceId}", "rawPath": "/devices/" + thing,
			"pathParameters": map[string]string{"deviceId": thing},
			"requestContext": map[string]any{"http": map[string]string{"method": "GET", "path": "/devices/" + thing}},
		})
		var resp struct {
			StatusCode int    `json:"statusCode"`
			Body       string `json:"body"`
		}
		json.Unmarshal(out, &resp)
		if resp.StatusCode != 200 || !strings.Contains(resp.Body, thing) {
			t.Fatalf("GET /devices/%s: %s", thing, out)
		}
	})

	var issued string
	t.Run("vendor/get", func(t *testing.T) {
		before := countCerts(t, r)
		csr := testpki.CSR(t, thing, nil)
		out := fns[cloud.Vendor].invoke(t, map[string]any{
			"jobId": "bootcert-rotation", "clientToken": "rie-1", "csr": string(csr),
			"thingName": thing, "operation": "get", "principal": dev.CertID, "clientId": thing, "receivedAt": time.Now().UnixMilli(),
		})
		var reply struct {
			Topic   string               `json:"topic"`
			Payload protocol.GetAccepted `json:"payload"`
		}
		if err := json.Unmarshal(out, &reply); err != nil || reply.Topic != "certificates/"+thing+"/get/accepted" {
			t.Fatalf("vendor reply %s", out)
		}
		if after := countCerts(t, r); after != before+1 {
			t.Errorf("certificates %d -> %d, want one issued", before, after)
		}
		if reply.Payload.CertificateID == "" || r.certStatus(reply.Payload.CertificateID) == "" {
			t.Errorf("the reply names certificate %q, which the lab does not have", reply.Payload.CertificateID)
		}
		issued = reply.Payload.CertificateID
	})

	t.Run("renewal/schedule", func(t *testing.T) {
		out := fns[cloud.Renewal].invoke(t, map[string]any{
			"version": "0", "id": "rie", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
			"time": time.Now().UTC().Format(time.RFC3339), "region": "us-east-1", "resources": []string{"arn:aws:events:us-east-1:123456789012:rule/bootcert-renewal"}, "detail": map[string]any{},
		})
		t.Logf("renewal: %s", out)
		var res struct {
			Scanned int `json:"scanned"`
		}
		if err := json.Unmarshal(out, &res); err != nil || res.Scanned != 1 {
			t.Fatalf("renewal result %s, want the one thing scanned", out)
		}
	})

	t.Run("reaper/job-failed", func(t *testing.T) {
		// The device fails its rotation: the reaper takes the thing out of
		// the rotation group and removes the certificate the vendor issued
		// but nobody acknowledged.
		out := fns[cloud.Reaper].invoke(t, map[string]any{
			"eventType": "JOB_EXECUTION", "eventId": "rie-1", "timestamp": time.Now().Unix(), "operation": "update",
			"jobId": "bootcert-rotation", "thingArn": "arn:aws:iot:us-east-1:123456789012:thing/" + thing, "status": "FAILED",
		})
		t.Logf("reaper: %s", out)
		var res struct {
			Thing string `json:"thing"`
		}
		if err := json.Unmarshal(out, &res); err != nil || res.Thing != thing {
			t.Fatalf("reaper result %s, want one about %s", out, thing)
		}
		if st := r.certStatus(issued); issued == "" || st == "ACTIVE" {
			t.Errorf("the unacknowledged certificate %q is %q after the reaper, want retired", issued, st)
		}
		if st := r.certStatus(dev.CertID); st != "ACTIVE" {
			t.Errorf("the bootstrap certificate is %s after a failed rotation, want ACTIVE", st)
		}
	})
}

func countCerts(t *testing.T, r *rig) int {
	t.Helper()
	out, err := r.iot.ListCertificates(context.Background(), &iot.ListCertificatesInput{PageSize: aws.Int32(250)})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Certificates)
}

// jitrConnect makes the device's first MQTT connection, which AWS IoT
// refuses while it registers the certificate (JITR).
func jitrConnect(t *testing.T, r *rig, d *testpki.Device) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.lab.ServerCAPEM())
	o := paho.NewClientOptions().AddBroker("tls://" + r.lab.Endpoints().MQTT).SetClientID(d.ID).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{d.DER}, PrivateKey: d.Key}}}).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	tok.WaitTimeout(15 * time.Second)
	if tok.Error() == nil {
		c.Disconnect(0)
		t.Fatalf("%s: the first connect with an unregistered certificate was accepted", d.ID)
	}
}
