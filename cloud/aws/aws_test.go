package cloudaws

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/smithy-go"

	"github.com/bootcert/bootcert/cloud/ports"
)

func TestMapErr(t *testing.T) {
	for code, want := range map[string]error{
		"ResourceNotFoundException":      ports.ErrNotFound,
		"ResourceAlreadyExistsException": ports.ErrExists,
		"ThrottlingException":            ports.ErrThrottled,
		"NoSuchKey":                      ports.ErrNotFound,
	} {
		err := mapErr("Op", "x", &smithy.GenericAPIError{Code: code, Message: "m"})
		if !errors.Is(err, want) {
			t.Errorf("%s: %v", code, err)
		}
		var api smithy.APIError
		if !errors.As(err, &api) {
			t.Errorf("%s: original error lost", code)
		}
	}
	if err := mapErr("Op", "x", errors.New("other")); errors.Is(err, ports.ErrNotFound) || errors.Is(err, ports.ErrThrottled) {
		t.Errorf("plain error mapped: %v", err)
	}
}

// TestPublisherSignsForTheDataPlane checks the request the data-plane
// Publish sends: POST /topics/{escaped topic}?qos=1, SigV4 for the service
// iotdata (as the SDKs sign the IoT data plane), body unchanged, 429 mapped to ErrThrottled.
func TestPublisherSignsForTheDataPlane(t *testing.T) {
	var got *http.Request
	var body []byte
	status := http.StatusOK
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		body, _ = io.ReadAll(r.Body)
		w.WriteHeader(status)
	}))
	defer srv.Close()
	cfg := aws.Config{Region: "eu-west-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""), HTTPClient: srv.Client()}
	p := &Publisher{Config: cfg, Endpoint: srv.URL, Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }}
	if err := p.Publish(context.Background(), "certificates/gw-1/get/accepted", []byte(`{"a":1}`)); err != nil {
		t.Fatal(err)
	}
	if got.Method != "POST" || got.URL.EscapedPath() != "/topics/certificates%2Fgw-1%2Fget%2Faccepted" || got.URL.RawQuery != "qos=1" {
		t.Errorf("request %s %s?%s", got.Method, got.URL.EscapedPath(), got.URL.RawQuery)
	}
	auth := got.Header.Get("Authorization")
	if !strings.Contains(auth, "Credential=AKIDEXAMPLE/20260102/eu-west-1/iotdata/aws4_request") {
		t.Errorf("Authorization %q", auth)
	}
	if string(body) != `{"a":1}` {
		t.Errorf("body %q", body)
	}
	status = http.StatusTooManyRequests
	if err := p.Publish(context.Background(), "t", nil); !errors.Is(err, ports.ErrThrottled) {
		t.Errorf("429: %v", err)
	}
	p.Endpoint, p.Resolve = "", func(context.Context) (string, error) { return "", errors.New("no endpoint") }
	if err := p.Publish(context.Background(), "t", nil); err == nil {
		t.Errorf("no error without an endpoint")
	}
}
