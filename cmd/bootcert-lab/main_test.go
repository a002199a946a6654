package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lab/labtest"
	"github.com/bootcert/bootcert/internal/testca"
)

// The Done-when scenario of the lab, with the real bootcert-lab binary, the
// AWS SDK and mosquitto_pub/mosquitto_sub.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bootcert-lab-test-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "bootcert-lab")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		panic("building bootcert-lab: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type running struct {
	cmd    *exec.Cmd
	ep     map[string]string
	stderr *strings.Builder
	done   chan error
}

// serve runs bootcert-lab serve on free ports and waits for its endpoints
// line; the process is stopped at cleanup.
func serve(t *testing.T, dir string, extra ...string) *running {
	t.Helper()
	args := append([]string{"serve", "--data", dir, "--mqtt", "127.0.0.1:0", "--api", "127.0.0.1:0", "--s3", "127.0.0.1:0", "--template", "none"}, extra...)
	r := &running{cmd: exec.Command(binary, args...), stderr: &strings.Builder{}, done: make(chan error, 1)}
	r.cmd.Stderr = r.stderr
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
	})
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- line
	}()
	select {
	case line := <-lines:
		if err := json.Unmarshal([]byte(line), &r.ep); err != nil {
			t.Fatalf("first stdout line %q is not the endpoints JSON: %v\nstderr:\n%s", line, err, r.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no endpoints line in 30s; stderr:\n%s", r.stderr)
	}
	return r
}

// stop sends SIGTERM and expects a clean exit.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("bootcert-lab did not exit cleanly on SIGTERM: %v\n%s", err, r.stderr)
		}
		r.done <- nil
	case <-time.After(20 * time.Second):
		t.Fatalf("bootcert-lab still running 20s after SIGTERM")
	}
}

func TestServeDoneWhen(t *testing.T) {
	labtest.RequireMosquitto(t)
	dir := t.TempDir()
	cdir := t.TempDir()
	r := serve(t, dir)
	for _, k := range []string{"mqtt", "api", "s3"} {
		if r.ep[k] == "" {
			t.Fatalf("endpoints line has no %q: %v", k, r.ep)
		}
	}
	if !strings.HasPrefix(r.ep["mqtt"], "127.0.0.1:") || !strings.HasPrefix(r.ep["api"], "https://127.0.0.1:") || !strings.HasPrefix(r.ep["s3"], "https://127.0.0.1:") {
		t.Fatalf("endpoints %v", r.ep)
	}
	var file map[string]string
	b, err := os.ReadFile(filepath.Join(dir, "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(b, &file)
	for _, k := range []string{"mqtt", "api", "s3"} {
		if file[k] != r.ep[k] {
			t.Fatalf("endpoints.json %v differs from the printed line %v", file, r.ep)
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "server-ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "server-ca.pem")
	ctx := context.Background()
	api := iot.NewFromConfig(lab.ClientConfig(caPEM, "us-east-1"), func(o *iot.Options) { o.BaseEndpoint = aws.String(r.ep["api"]) })

	// RegisterCACertificate through the SDK.
	factory := testca.New(t, "factory CA")
	code, err := api.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil {
		t.Fatal(err)
	}
	ver := factory.NewLeaf(t, aws.ToString(code.RegistrationCode))
	ca, err := api.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: aws.String(string(factory.PEM)),
		VerificationCertificate: aws.String(string(ver.CertPEM)), SetAsActive: true, AllowAutoRegistration: true})
	if err != nil {
		t.Fatalf("RegisterCACertificate: %v", err)
	}
	caID := aws.ToString(ca.CertificateId)

	// An admin certificate with a permissive policy to watch events.
	admin := factory.NewLeaf(t, "admin")
	reg, err := api.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(admin.CertPEM)), CaCertificatePem: aws.String(string(factory.PEM)), Status: types.CertificateStatusActive})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("admin"), PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("admin"), Target: reg.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	acf, akf := admin.Files(t, cdir, "admin")
	adminClient := labtest.Client{Addr: r.ep["mqtt"], CAFile: caFile, CertFile: acf, KeyFile: akf, ClientID: "admin"}
	events := labtest.StartSub(t, adminClient, "$aws/events/certificates/registered/+")

	// A device certificate signed by that CA: refused, PENDING_ACTIVATION, event delivered.
	dev := factory.NewLeaf(t, "dev-1")
	dcf, dkf := dev.Files(t, cdir, "dev-1")
	devClient := labtest.Client{Addr: r.ep["mqtt"], CAFile: caFile, CertFile: dcf, KeyFile: dkf, ClientID: "dev-1"}
	if out, err := labtest.Pub(t, devClient, "devices/dev-1/telemetry", "first"); err == nil {
		t.Fatalf("mosquitto_pub with an unregistered device certificate succeeded: %s", out)
	}
	d, err := api.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(dev.CertID)})
	if err != nil {
		t.Fatalf("DescribeCertificate: %v", err)
	}
	if d.CertificateDescription.Status != types.CertificateStatusPendingActivation || aws.ToString(d.CertificateDescription.CaCertificateId) != caID {
		t.Fatalf("after JITR: status %s ca %s", d.CertificateDescription.Status, aws.ToString(d.CertificateDescription.CaCertificateId))
	}
	m := events.WaitFor(t, "registered event", labtest.Topic("$aws/events/certificates/registered/"+caID))
	var ev map[string]any
	if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil || ev["certificateId"] != dev.CertID || ev["certificateStatus"] != "PENDING_ACTIVATION" {
		t.Fatalf("registered event %s (%v)", m.Payload, err)
	}

	// UpdateCertificate ACTIVE and an attached policy: allowed topic delivered, another device's not.
	if _, err := api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: aws.String(dev.CertID), NewStatus: types.CertificateStatusActive}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("device"), PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Certificate.Subject.CommonName}"},
 {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/devices/${iot:ClientId}/*"}]}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("device"), Target: d.CertificateDescription.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	watch := labtest.StartSub(t, withID(adminClient, "admin-watch"), "devices/#")
	check := func(watch *labtest.Sub, dev labtest.Client, tag string) {
		t.Helper()
		if out, err := labtest.Pub(t, dev, "devices/dev-2/telemetry", "not-mine-"+tag); err == nil {
			t.Fatalf("publish to another device's topic succeeded: %s", out)
		}
		if out, err := labtest.Pub(t, dev, "devices/dev-1/telemetry", "mine-"+tag); err != nil {
			t.Fatalf("publish to the allowed topic: %v %s", err, out)
		}
		watch.WaitFor(t, "allowed message", labtest.Contains("devices/dev-1/telemetry", "mine-"+tag))
		for _, m := range watch.Messages() {
			if m.Topic == "devices/dev-2/telemetry" {
				t.Fatalf("message to another device's topic delivered: %v", m)
			}
		}
	}
	check(watch, devClient, "1")

	// A restart keeps all of it.
	watch.Stop()
	events.Stop()
	r.stop(t)
	r2 := serve(t, dir)
	api2 := iot.NewFromConfig(lab.ClientConfig(caPEM, "us-east-1"), func(o *iot.Options) { o.BaseEndpoint = aws.String(r2.ep["api"]) })
	d2, err := api2.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: aws.String(dev.CertID)})
	if err != nil || d2.CertificateDescription.Status != types.CertificateStatusActive {
		t.Fatalf("after restart: %v %v", err, d2)
	}
	if c, err := api2.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: aws.String(caID)}); err != nil || c.CertificateDescription.AutoRegistrationStatus != types.AutoRegistrationStatusEnable {
		t.Fatalf("CA after restart: %v", err)
	}
	adminClient.Addr, devClient.Addr = r2.ep["mqtt"], r2.ep["mqtt"]
	watch2 := labtest.StartSub(t, withID(adminClient, "admin-watch"), "devices/#")
	check(watch2, devClient, "2")
	events2 := labtest.StartSub(t, adminClient, "$aws/events/certificates/registered/+")
	dev3 := factory.NewLeaf(t, "dev-3")
	c3, k3 := dev3.Files(t, cdir, "dev-3")
	if _, err := labtest.Pub(t, labtest.Client{Addr: r2.ep["mqtt"], CAFile: caFile, CertFile: c3, KeyFile: k3, ClientID: "dev-3"}, "devices/dev-3/t", "x"); err == nil {
		t.Fatal("unregistered certificate connected after restart")
	}
	events2.WaitFor(t, "registered event after restart", labtest.Contains("$aws/events/certificates/registered/"+caID, dev3.CertID))
	r2.stop(t)
}

func withID(c labtest.Client, id string) labtest.Client {
	c.ClientID = id
	return c
}

func TestServeFlags(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"fail/no command", nil, 2, "Usage"},
		{"ok/help", []string{"--help"}, 0, "Usage"},
		{"fail/unknown command", []string{"run"}, 2, "unknown command"},
		{"fail/no data", []string{"serve"}, 2, "--data DIR is required"},
		{"fail/bad parameter", []string{"serve", "--data", t.TempDir(), "--parameter", "novalue"}, 2, "NAME=VALUE"},
		{"fail/unknown template parameter", []string{"serve", "--data", t.TempDir(), "--mqtt", "127.0.0.1:0", "--api", "127.0.0.1:0", "--template", "../../cloud/template.yaml", "--parameter", "NoSuchParameter=1"}, 1, "NoSuchParameter"},
		{"fail/bad limits", []string{"serve", "--data", t.TempDir(), "--mqtt", "127.0.0.1:0", "--api", "127.0.0.1:0", "--template", "none", "--limits", filepath.Join(t.TempDir(), "missing.json")}, 1, "limits"},
		{"fail/busy port", []string{"serve", "--data", t.TempDir(), "--mqtt", "127.0.0.1:0", "--api", busy.Addr().String(), "--template", "none"}, 1, "API listener"},
		// started where there is no cloud/template.yaml (this package's directory): said at WARN
		{"warn/no template", []string{"serve", "--data", t.TempDir(), "--mqtt", "127.0.0.1:0", "--api", busy.Addr().String()}, 1, `"level":"WARN","msg":"no template`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb strings.Builder
			code := run(tc.args, &out, &errb)
			if code != tc.code || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errb.String(), tc.code, tc.want)
			}
		})
	}
}
