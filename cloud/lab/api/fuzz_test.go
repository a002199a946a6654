package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/lab/pki"
	"github.com/bootcert/bootcert/cloud/lab/registry"
)

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// FuzzServeHTTP drives the REST decoders (routing, path unescaping, query
// and body decoding) with arbitrary requests: the server must answer every
// one with 200 and JSON, or an error in the SDK's shape, and never panic.
func FuzzServeHTTP(f *testing.F) {
	seeds := []struct{ method, target, body string }{
		{"POST", "/things/gw-1", `{"thingTypeName":"t","attributePayload":{"attributes":{"a":"b"}}}`},
		{"PATCH", "/things/gw-1", `{"expectedVersion":1,"attributePayload":{"attributes":{"a":""},"merge":true}}`},
		{"PUT", "/jobs/j", `{"targets":["arn:aws:iot:us-east-1:123456789012:thinggroup/g"],"document":"{}","targetSelection":"CONTINUOUS"}`},
		{"PUT", "/thing-groups/addThingToThingGroup", `{"thingGroupName":"g","thingName":"gw-1"}`},
		{"POST", "/cacertificate?setAsActive=true&allowAutoRegistration=maybe", `{"caCertificate":"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----"}`},
		{"POST", "/certificates?setAsActive=true", `{"certificateSigningRequest":"x"}`},
		{"POST", "/attached-policies/arn%3Aaws%3Aiot%3Aus-east-1%3A123456789012%3Acert%2Fab?recursive=true", ``},
		{"PUT", "/things/gw-1/jobs/j/cancel?force=true", `{"expectedVersion":3,"statusDetails":{"k":"v"}}`},
		{"GET", "/things/gw-1/principals?maxResults=0&nextToken=-1", ``},
		{"POST", "/topics/a%2Fb?qos=2", `payload`},
		{"POST", "/topics/%zz", ``},
		{"GET", "/endpoint?endpointType=iot:Data-ATS", ``},
		{"POST", "/policies/p", `[1,2]`},
		{"POST", "/policies/p", `{"policyDocument":"{\"Statement\":[]}"} trailing`},
	}
	for _, s := range seeds {
		f.Add(s.method, s.target, s.body)
	}
	p, err := pki.Load(f.TempDir(), nil)
	if err != nil {
		f.Fatal(err)
	}
	reg, err := registry.Open(registry.Config{Issuer: p})
	if err != nil {
		f.Fatal(err)
	}
	srv := New(Config{Registry: reg, Publisher: &recorder{}})
	f.Fuzz(func(t *testing.T, method, target, body string) {
		if !strings.HasPrefix(target, "/") || strings.HasPrefix(target, "/lab/") {
			return
		}
		req, err := http.NewRequest(method, "https://lab"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/iot/aws4_request, SignedHeaders=host, Signature=00")
		req.Header.Set("X-Amzn-Principal", "arn:aws:iot:us-east-1:123456789012:cert/ab")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if w.Code == 200 {
			if w.Body.Len() > 0 && !json.Valid(w.Body.Bytes()) {
				t.Fatalf("200 with non-JSON body %q", w.Body.String())
			}
			return
		}
		if w.Header().Get("X-Amzn-ErrorType") == "" {
			t.Fatalf("%d without X-Amzn-ErrorType", w.Code)
		}
		if w.Code == 500 {
			t.Fatalf("internal error for %s %s %q: %s", method, target, body, w.Body.String())
		}
		var e struct{ Message string }
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Message == "" {
			t.Fatalf("error body %q", w.Body.String())
		}
	})
}

// FuzzParseAuthorization feeds arbitrary Authorization headers to the SigV4
// parser and verifier.
func FuzzParseAuthorization(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/iot/aws4_request, SignedHeaders=host;x-amz-date, Signature=abcd")
	f.Add("AWS4-HMAC-SHA256 Credential=AK/x/y/z/aws4_request,SignedHeaders=,Signature=")
	f.Add("Basic dXNlcjpwYXNz")
	f.Add("AWS4-HMAC-SHA256 ,,,=")
	reg, err := registry.Open(registry.Config{})
	if err != nil {
		f.Fatal(err)
	}
	srv := New(Config{Registry: reg, Credentials: &Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"}})
	f.Fuzz(func(t *testing.T, h string) {
		req := httptest.NewRequest("GET", "https://lab/things/x?b=2&a=1", nil)
		req.Header.Set("Authorization", h)
		req.Header.Set("X-Amz-Date", "20260101T000000Z")
		if _, err := srv.authenticate(req, nil, "DescribeThing"); err == nil {
			t.Fatalf("accepted %q without a valid signature", h)
		}
	})
}
