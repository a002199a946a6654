package lab

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	paho "github.com/eclipse/paho.mqtt.golang"
)

type faultLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *faultLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *faultLog) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestFaultRefuseIssuedCertificates: with refuseIssuedCertificates on, a
// real TLS MQTT client presenting a certificate made by
// CreateCertificateFromCsr is refused (and the lab logs why), while one
// from the registered factory CA still connects; turning the fault off lets
// the issued certificate connect again.
func TestFaultRefuseIssuedCertificates(t *testing.T) {
	logs := &faultLog{}
	f := newFixture(t, Config{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	ctx := context.Background()
	boot := f.ca.NewLeaf(t, "dev-f")
	f.registerActive(boot, devicePolicy, "device")

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-f"}}, key)
	out, err := f.api.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{
		CertificateSigningRequest: aws.String(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))), SetAsActive: true})
	if err != nil {
		t.Fatalf("CreateCertificateFromCsr: %v", err)
	}
	if _, err := f.api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("admin-policy"), Target: out.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	issued, err := tls.X509KeyPair([]byte(aws.ToString(out.CertificatePem)), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	bootPair, _ := tls.X509KeyPair(boot.CertPEM, boot.KeyPEM)

	if err := f.tryConnect(issued, "dev-f"); err != nil {
		t.Fatalf("issued certificate refused without a fault: %v", err)
	}
	f.postFaults(t, `{"refuseIssuedCertificates":true}`, http.StatusOK)
	if err := f.tryConnect(issued, "dev-f"); err == nil {
		t.Fatal("issued certificate connected with refuseIssuedCertificates on")
	}
	if err := f.tryConnect(bootPair, "dev-f"); err != nil {
		t.Fatalf("factory-CA certificate refused with refuseIssuedCertificates on: %v", err)
	}
	if !strings.Contains(logs.String(), `"reason":"refused by fault injection"`) || !strings.Contains(logs.String(), aws.ToString(out.CertificateId)) {
		t.Errorf("lab log does not say the refusal was injected:\n%s", logs.String())
	}
	var state struct {
		Faults Faults `json:"faults"`
	}
	f.getJSON(t, "/lab/state?pem=false", &state)
	if !state.Faults.RefuseIssuedCertificates {
		t.Errorf("GET /lab/state faults = %+v", state.Faults)
	}
	f.postFaults(t, `{"refuseIssued":true}`, http.StatusBadRequest)
	f.postFaults(t, `{}`, http.StatusOK)
	var got Faults
	f.getJSON(t, "/lab/faults", &got)
	if got.RefuseIssuedCertificates {
		t.Errorf("GET /lab/faults after {} = %+v", got)
	}
	if err := f.tryConnect(issued, "dev-f"); err != nil {
		t.Fatalf("issued certificate refused after the fault was turned off: %v", err)
	}
}

func TestParseFault(t *testing.T) {
	var f Faults
	if err := ParseFault(&f, "refuse-issued-certificates"); err != nil || !f.RefuseIssuedCertificates {
		t.Fatalf("%v %+v", err, f)
	}
	if err := ParseFault(&f, "nope"); err == nil || !strings.Contains(err.Error(), "refuse-issued-certificates") {
		t.Fatalf("unknown fault: %v", err)
	}
}

// tryConnect makes one MQTT CONNECT over TLS with the pair.
func (f *fixture) tryConnect(pair tls.Certificate, id string) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.lab.ServerCAPEM())
	o := paho.NewClientOptions().AddBroker("tls://" + f.lab.Endpoints().MQTT).SetClientID(id).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20 * time.Second) {
		return io.ErrNoProgress
	}
	if tok.Error() != nil {
		return tok.Error()
	}
	c.Disconnect(50)
	return nil
}

func (f *fixture) labHTTP() *http.Client {
	return ClientConfig(f.lab.ServerCAPEM(), "").HTTPClient.(*http.Client)
}

func (f *fixture) postFaults(t *testing.T, body string, want int) {
	t.Helper()
	resp, err := f.labHTTP().Post(f.lab.Endpoints().API+"/lab/faults", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("POST /lab/faults %s: %d %s, want %d", body, resp.StatusCode, b, want)
	}
}

func (f *fixture) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := f.labHTTP().Get(f.lab.Endpoints().API + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}
