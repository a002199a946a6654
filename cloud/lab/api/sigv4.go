package api

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/iam"
)

// Credentials is the one key pair the lab accepts with --credentials FILE.
// File format: {"accessKeyId": "...", "secretAccessKey": "..."}.
type Credentials struct {
	AccessKeyID     string `json:"accessKeyId"`
	SecretAccessKey string `json:"secretAccessKey"`
	// Policy, optional, is an IAM identity policy document: the lab's S3
	// and IoT API authorize the key pair's requests with it (package iam).
	// Without it the key pair may do everything.
	Policy json.RawMessage `json:"policy,omitempty"`
}

// LoadCredentials reads a credentials file; unknown keys and missing values
// are errors. The secret never appears in an error.
func LoadCredentials(path string) (*Credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading lab credentials: %w", err)
	}
	var c Credentials
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("lab credentials file %s: want {\"accessKeyId\": ..., \"secretAccessKey\": ...}: %v", path, err)
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return nil, fmt.Errorf("lab credentials file %s: accessKeyId and secretAccessKey are both required", path)
	}
	return &c, nil
}

// MaxClockSkew is how far X-Amz-Date may be from the lab's clock (AWS: 15
// minutes, "Signature expired" beyond;
// https://docs.aws.amazon.com/IAM/latest/UserGuide/signing-elements.html).
const MaxClockSkew = 15 * time.Minute

func authErr(typ, msg string) error {
	return &apiError{Type: typ, Status: 403, Message: msg}
}

// sigV4Auth is a parsed Authorization header.
type sigV4Auth struct {
	accessKey, date, region, service string
	signedHeaders                    []string
	signature                        string
}

func parseAuthorization(h string) (*sigV4Auth, error) {
	const alg = "AWS4-HMAC-SHA256"
	if h == "" {
		return nil, authErr("MissingAuthenticationTokenException", "Missing Authentication Token: sign requests with SigV4 (AWS4-HMAC-SHA256)")
	}
	if !strings.HasPrefix(h, alg+" ") {
		return nil, authErr("IncompleteSignatureException", "Authorization header must use "+alg)
	}
	a := &sigV4Auth{}
	for _, part := range strings.Split(strings.TrimPrefix(h, alg+" "), ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, authErr("IncompleteSignatureException", "malformed Authorization header")
		}
		switch k {
		case "Credential":
			f := strings.Split(v, "/")
			if len(f) != 5 || f[4] != "aws4_request" || f[0] == "" {
				return nil, authErr("IncompleteSignatureException", "Credential must be AKID/date/region/service/aws4_request")
			}
			a.accessKey, a.date, a.region, a.service = f[0], f[1], f[2], f[3]
		case "SignedHeaders":
			a.signedHeaders = strings.Split(v, ";")
		case "Signature":
			a.signature = v
		}
	}
	if a.accessKey == "" || len(a.signedHeaders) == 0 || a.signature == "" {
		return nil, authErr("IncompleteSignatureException", "Authorization header needs Credential, SignedHeaders and Signature")
	}
	return a, nil
}

// Signing names the lab accepts in a credential scope. The control plane:
// "iot", as aws-sdk-go-v2 service/iot signs, and "execute-api", the
// credential scope of the iot endpoints in the SDKs' older endpoints.json.
// The data plane: "iotdata", the SigV4 name of the SDKs' IoT data service
// model, and "iotdevicegateway", the name AWS's IoT data-plane API
// reference gives ("The service name used by AWS Signature Version 4 to
// sign requests is: iotdevicegateway",
// https://docs.aws.amazon.com/iot/latest/apireference/API_Operations_AWS_IoT_Data_Plane.html);
// AWS accepts both.
var (
	ControlPlaneServices = []string{"iot", "execute-api"}
	DataPlaneServices    = []string{"iotdata", "iotdevicegateway"}
)

// CheckScope checks a request's SigV4 credential scope against the lab's
// region and the service names allowed for the endpoint, the scope's date
// against X-Amz-Date, and that the host header is signed, whatever the
// credentials: AWS refuses a request scoped to another region or service
// before it looks at the key ("Credential should be scoped to a valid
// region", "Credential should be scoped to correct service";
// https://docs.aws.amazon.com/IAM/latest/UserGuide/signature-v4-troubleshooting.html).
// An unsigned request passes (the caller decides whether it needs one).
func CheckScope(r *http.Request, region string, services []string) *AuthError {
	q := r.URL.Query()
	var a *sigV4Auth
	var amzDate string
	if q.Has("X-Amz-Signature") {
		var err error
		a, err = parseAuthorization("AWS4-HMAC-SHA256 Credential=" + q.Get("X-Amz-Credential") +
			", SignedHeaders=" + q.Get("X-Amz-SignedHeaders") + ", Signature=" + q.Get("X-Amz-Signature"))
		if err != nil {
			return toAuthError(err).(*AuthError)
		}
		amzDate = q.Get("X-Amz-Date")
	} else {
		h := r.Header.Get("Authorization")
		if h == "" {
			return nil
		}
		var err error
		if a, err = parseAuthorization(h); err != nil {
			return toAuthError(err).(*AuthError)
		}
		amzDate = r.Header.Get("X-Amz-Date")
	}
	if a.region != region {
		return &AuthError{Code: "InvalidSignatureException", Scope: "region", Message: fmt.Sprintf("Credential should be scoped to a valid region, not '%s'. ", a.region)}
	}
	if !slices.Contains(services, a.service) {
		return &AuthError{Code: "InvalidSignatureException", Scope: "service", Message: fmt.Sprintf("Credential should be scoped to correct service: '%s'. ", services[0])}
	}
	if len(amzDate) < 8 || a.date != amzDate[:8] {
		return &AuthError{Code: "InvalidSignatureException", Scope: "date", Message: "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '" + a.date + "' != '" + amzDate + "'"}
	}
	if !slices.Contains(a.signedHeaders, "host") {
		return &AuthError{Code: "InvalidSignatureException", Message: "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."}
	}
	return nil
}

// authenticate checks the SigV4 signature of r for operation op. It
// returns the principal whose key signed it when that is one of
// Config.Principals (its policies then decide the request), else nil.
func (s *Server) authenticate(r *http.Request, body []byte, op string) (*iam.Principal, error) {
	services := ControlPlaneServices
	if op == "Publish" {
		services = DataPlaneServices
	}
	if ae := CheckScope(r, s.reg.Region(), services); ae != nil {
		return nil, authErr(ae.Code, ae.Message)
	}
	if a, err := parseAuthorization(r.Header.Get("Authorization")); err == nil {
		if p, ok := s.cfg.Principals.Lookup(a.accessKey); ok {
			return p, s.verify(r, body, Credentials{AccessKeyID: p.AccessKeyID, SecretAccessKey: p.SecretAccessKey})
		}
	}
	if s.cfg.Credentials == nil {
		// Any well-formed Authorization header.
		if _, err := parseAuthorization(r.Header.Get("Authorization")); err != nil {
			return nil, err
		}
		return nil, nil
	}
	return nil, s.verify(r, body, *s.cfg.Credentials)
}

func (s *Server) verify(r *http.Request, body []byte, creds Credentials) error {
	if err := VerifySigV4(r, body, creds, s.clock.Now(), s.skew(), false); err != nil {
		var ae *AuthError
		if errors.As(err, &ae) {
			return authErr(ae.Code, ae.Message)
		}
		return err
	}
	return nil
}

// AuthError is a SigV4 verification failure. Code is the AWS JSON-protocol
// exception name (MissingAuthenticationTokenException,
// IncompleteSignatureException, UnrecognizedClientException,
// InvalidSignatureException); Expired marks a presigned URL past its expiry.
type AuthError struct {
	Code    string
	Message string
	Expired bool
	// Scope names the credential scope part that is wrong (region,
	// service, date), for services that answer it with their own code.
	Scope string
}

func (e *AuthError) Error() string { return e.Code + ": " + e.Message }

// MaxPresignExpiry is the longest X-Amz-Expires AWS accepts (7 days).
const MaxPresignExpiry = 7 * 24 * time.Hour

// VerifySigV4 verifies r's AWS Signature Version 4 against creds: the
// Authorization header, or the query string of a presigned URL. body is the
// request body when there is no X-Amz-Content-Sha256 header (ignored
// otherwise). s3 selects S3's canonical URI (the path is not escaped a
// second time); otherwise both forms are accepted, because the SDKs
// double-escape and curl does not. skew is how far X-Amz-Date may be from
// now (MaxClockSkew; 0: not checked, for a lab on an injected clock, since
// the SDKs sign with the wall clock); a presigned URL's expiry is always
// checked against now.
// (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html)
func VerifySigV4(r *http.Request, body []byte, creds Credentials, now time.Time, skew time.Duration, s3 bool) error {
	q := r.URL.Query()
	var a *sigV4Auth
	var amzDate, payloadHash string
	presigned := q.Has("X-Amz-Signature")
	if presigned {
		if q.Get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" {
			return &AuthError{Code: "IncompleteSignatureException", Message: "X-Amz-Algorithm must be AWS4-HMAC-SHA256"}
		}
		var err error
		a, err = parseAuthorization("AWS4-HMAC-SHA256 Credential=" + q.Get("X-Amz-Credential") +
			", SignedHeaders=" + q.Get("X-Amz-SignedHeaders") + ", Signature=" + q.Get("X-Amz-Signature"))
		if err != nil {
			return toAuthError(err)
		}
		amzDate = q.Get("X-Amz-Date")
		t, err := time.Parse("20060102T150405Z", amzDate)
		if err != nil {
			return &AuthError{Code: "IncompleteSignatureException", Message: "X-Amz-Date missing or malformed"}
		}
		exp, err := strconv.Atoi(q.Get("X-Amz-Expires"))
		if err != nil || exp < 1 || time.Duration(exp)*time.Second > MaxPresignExpiry {
			return &AuthError{Code: "IncompleteSignatureException", Message: "X-Amz-Expires must be 1 to 604800 seconds"}
		}
		if now.After(t.Add(time.Duration(exp) * time.Second)) {
			return &AuthError{Code: "InvalidSignatureException", Message: "Request has expired", Expired: true}
		}
		if skew > 0 && now.Before(t.Add(-skew)) {
			return &AuthError{Code: "InvalidSignatureException", Message: "Request is not yet valid"}
		}
		payloadHash = q.Get("X-Amz-Content-Sha256")
		if payloadHash == "" {
			payloadHash = "UNSIGNED-PAYLOAD"
		}
		q.Del("X-Amz-Signature")
	} else {
		var err error
		a, err = parseAuthorization(r.Header.Get("Authorization"))
		if err != nil {
			return toAuthError(err)
		}
		amzDate = r.Header.Get("X-Amz-Date")
		t, err := time.Parse("20060102T150405Z", amzDate)
		if err != nil {
			return &AuthError{Code: "IncompleteSignatureException", Message: "X-Amz-Date header missing or malformed"}
		}
		if d := now.Sub(t); skew > 0 && (d > skew || d < -skew) {
			return &AuthError{Code: "InvalidSignatureException", Message: "Signature expired: X-Amz-Date is more than 15 minutes from the lab's time", Expired: true}
		}
		payloadHash = r.Header.Get("X-Amz-Content-Sha256")
		if payloadHash == "" {
			if s3 {
				return &AuthError{Code: "IncompleteSignatureException", Message: "S3 requests need an X-Amz-Content-Sha256 header"}
			}
			sum := sha256.Sum256(body)
			payloadHash = hex.EncodeToString(sum[:])
		}
	}
	if a.accessKey != creds.AccessKeyID {
		return &AuthError{Code: "UnrecognizedClientException", Message: "The security token included in the request is invalid (unknown access key)"}
	}
	if a.date != amzDate[:8] {
		return &AuthError{Code: "InvalidSignatureException", Message: "credential scope date does not match X-Amz-Date"}
	}
	key := signingKey(creds.SecretAccessKey, a.date, a.region, a.service)
	scope := strings.Join([]string{a.date, a.region, a.service, "aws4_request"}, "/")
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	uris := []string{escapePath(path), path}
	if s3 {
		uris = []string{path}
	}
	for _, uri := range uris {
		creq := canonicalRequest(r, uri, q, a.signedHeaders, payloadHash)
		sum := sha256.Sum256([]byte(creq))
		sts := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
		sig := hex.EncodeToString(hmacSHA256(key, sts))
		if hmac.Equal([]byte(sig), []byte(a.signature)) {
			return nil
		}
	}
	return &AuthError{Code: "InvalidSignatureException", Message: "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."}
}

func toAuthError(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return &AuthError{Code: ae.Type, Message: ae.Message}
	}
	return err
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

func signingKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), date)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	return hmacSHA256(k, "aws4_request")
}

func canonicalRequest(r *http.Request, uri string, query url.Values, signed []string, payloadHash string) string {
	var b strings.Builder
	b.WriteString(r.Method + "\n" + uri + "\n" + canonicalQuery(query) + "\n")
	for _, h := range signed {
		var v string
		switch h {
		case "host":
			v = r.Host
		case "content-length":
			v = r.Header.Get("Content-Length")
			if v == "" && r.ContentLength >= 0 {
				v = fmt.Sprint(r.ContentLength)
			}
		default:
			vals := r.Header.Values(h)
			for i := range vals {
				vals[i] = strings.Join(strings.Fields(vals[i]), " ")
			}
			v = strings.Join(vals, ",")
		}
		b.WriteString(h + ":" + v + "\n")
	}
	b.WriteString("\n" + strings.Join(signed, ";") + "\n" + payloadHash)
	return b.String()
}

func canonicalQuery(q url.Values) string {
	type kv struct{ k, v string }
	var pairs []kv
	for k, vs := range q {
		for _, v := range vs {
			pairs = append(pairs, kv{uriEncode(k), uriEncode(v)})
		}
	}
	sort.Slice(pairs, func(i, j int) bool {
		if pairs[i].k != pairs[j].k {
			return pairs[i].k < pairs[j].k
		}
		return pairs[i].v < pairs[j].v
	})
	parts := make([]string, len(pairs))
	for i, p := range pairs {
		parts[i] = p.k + "=" + p.v
	}
	return strings.Join(parts, "&")
}

// uriEncode escapes everything but RFC 3986 unreserved characters.
func uriEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// escapePath escapes a path like uriEncode but keeps the slashes.
func escapePath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = uriEncode(s)
	}
	return strings.Join(segs, "/")
}

// skew is the SigV4 clock skew the server allows (0: unchecked).
func (s *Server) skew() time.Duration {
	if s.cfg.NoClockSkew {
		return 0
	}
	return MaxClockSkew
}
