package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/lab/api"
	"github.com/bootcert/bootcert/cloud/lab/pki"
	"github.com/bootcert/bootcert/internal/clock"
)

type env struct {
	dir    string
	pki    *pki.PKI
	store  *Store
	srv    *httptest.Server
	client *awss3.Client
	http   *http.Client
}

func start(t *testing.T, dir string, clk clock.Clock) *env {
	return startWith(t, dir, clk, nil, "AK", "SK")
}

func startWith(t *testing.T, dir string, clk clock.Clock, creds *api.Credentials, ak, sk string) *env {
	return startLogged(t, dir, clk, creds, ak, sk, nil)
}

func startLogged(t *testing.T, dir string, clk clock.Clock, creds *api.Credentials, ak, sk string, log *slog.Logger) *env {
	t.Helper()
	p, err := pki.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(Config{Dir: dir, Clock: clk, Buckets: []string{"bootcert-certs"}, Credentials: creds, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(st.Handler())
	srv.TLS = p.ServerTLSConfig()
	srv.StartTLS()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.ServerCAPool()}}}
	c := awss3.NewFromConfig(aws.Config{Region: "us-east-1", HTTPClient: hc,
		Credentials: credentials.NewStaticCredentialsProvider(ak, sk, "")}, func(o *awss3.Options) {
		o.BaseEndpoint = aws.String(srv.URL)
		o.UsePathStyle = true
	})
	e := &env{dir: dir, pki: p, store: st, srv: srv, client: c, http: hc}
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	e.srv.Close()
	e.store.Close()
}

func TestPutGetHeadPresignRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clk := clock.NewFake(time.Now())
	e := start(t, dir, clk)
	body := []byte(`{"certificatePem":"..."}`)
	_, err := e.client.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("gw-1/package.json"),
		Body: bytes.NewReader(body), Metadata: map[string]string{"certificateid": "abc123"}, ContentType: aws.String("application/json")})
	if err != nil {
		t.Fatal(err)
	}
	h, err := e.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("gw-1/package.json")})
	if err != nil || h.Metadata["certificateid"] != "abc123" || aws.ToInt64(h.ContentLength) != int64(len(body)) {
		t.Fatalf("HeadObject: %+v %v", h, err)
	}
	g, err := e.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("gw-1/package.json")})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(g.Body)
	g.Body.Close()
	if !bytes.Equal(got, body) || g.Metadata["certificateid"] != "abc123" {
		t.Fatalf("GetObject: %q %v", got, g.Metadata)
	}
	_, err = e.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("missing")})
	if err == nil || !strings.Contains(err.Error(), "NoSuchKey") {
		t.Fatalf("missing key: %v", err)
	}

	ps, err := awss3.NewPresignClient(e.client).PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"),
		Key: aws.String("gw-1/package.json")}, awss3.WithPresignExpires(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	fetch := func() (int, []byte) {
		resp, err := e.http.Get(ps.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := fetch(); code != 200 || !bytes.Equal(b, body) {
		t.Fatalf("presigned GET: %d %q", code, b)
	}
	clk.Advance(11 * time.Minute)
	if code, b := fetch(); code != 403 || !strings.Contains(string(b), "expired") {
		t.Fatalf("expired presigned GET: %d %q", code, b)
	}

	// Restart from the same directory keeps the object and its metadata.
	e.close()
	e2 := start(t, dir, clk)
	h, err = e2.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("gw-1/package.json")})
	if err != nil || h.Metadata["certificateid"] != "abc123" {
		t.Fatalf("after restart: %+v %v", h, err)
	}
}

func TestBadBucketName(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateBucket("Bad_Bucket"); err == nil {
		t.Fatal("invalid bucket name accepted")
	}
}

// TestCredentials: with a key pair configured, the SDK's header-signed
// requests (including the chunked, checksummed PutObject) and presigned URLs
// pass with the right secret and fail with a wrong one.
func TestCredentials(t *testing.T) {
	ctx := context.Background()
	creds := &api.Credentials{AccessKeyID: "AKIALAB", SecretAccessKey: "lab-secret"}
	clk := clock.NewFake(time.Now())
	dir := t.TempDir()
	good := startWith(t, dir, clk, creds, "AKIALAB", "lab-secret")
	put := func(e *env) error {
		_, err := e.client.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("k"),
			Body: strings.NewReader("v"), Metadata: map[string]string{"certificateid": "x"}})
		return err
	}
	if err := put(good); err != nil {
		t.Fatalf("signed PutObject: %v", err)
	}
	ps, err := awss3.NewPresignClient(good.client).PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("k")},
		awss3.WithPresignExpires(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	get := func(u string) int {
		resp, err := good.http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(ps.URL); code != 200 {
		t.Fatalf("presigned GET: %d", code)
	}
	if code := get(strings.Replace(ps.URL, "X-Amz-Signature=", "X-Amz-Signature=0", 1)); code != 403 {
		t.Fatalf("tampered presigned GET: %d", code)
	}
	if code := get(good.srv.URL + "/bootcert-certs/k"); code != 403 {
		t.Fatalf("unsigned GET: %d", code)
	}
	good.close()
	bad := startWith(t, dir, clk, creds, "AKIALAB", "wrong")
	if err := put(bad); err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("PutObject with a wrong secret: %v", err)
	}
}

// TestNoSecretsInLogs: the log of a presigned GET names the object but not
// the presigned query string (a bearer credential).
func TestNoSecretsInLogs(t *testing.T) {
	ctx := context.Background()
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewJSONHandler(&lockedWriter{w: &buf, mu: &mu}, nil))
	e := startLogged(t, t.TempDir(), clock.NewFake(time.Now()), &api.Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"}, "AK", "SK", log)
	if _, err := e.client.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("pkg"), Body: strings.NewReader("x")}); err != nil {
		t.Fatal(err)
	}
	ps, err := awss3.NewPresignClient(e.client).PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("bootcert-certs"), Key: aws.String("pkg")})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.http.Get(ps.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	logs := buf.String()
	mu.Unlock()
	if !strings.Contains(logs, "/bootcert-certs/pkg") {
		t.Fatalf("the request is not logged: %s", logs)
	}
	for _, secret := range []string{"X-Amz-Signature", "X-Amz-Credential", "Signature="} {
		if strings.Contains(logs, secret) {
			t.Fatalf("log contains %s: %s", secret, logs)
		}
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
