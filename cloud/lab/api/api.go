// Package api serves the lab's AWS IoT control plane over HTTPS, in the
// REST-JSON protocol exactly as aws-sdk-go-v2 service/iot (v1.75.0)
// serializes and decodes it: the paths, query parameters and headers of its
// serializers.go, epoch-second timestamps, and errors as the X-Amzn-ErrorType
// header plus {"message": ...} that its deserializers.go turn into typed
// errors (*types.ResourceNotFoundException, ...). It also serves the IoT
// data-plane Publish call (POST /topics/{topic}?qos=N) through an injected
// Publisher, and lab-only routes under /lab/ (GET /lab/state; the assembly
// adds more with HandleLab).
//
// Requests must carry a SigV4 Authorization header. By default any
// well-formed one is accepted (like a lab with any credentials); with
// Config.Credentials the signature is verified against that one key pair.
// A request signed by one of Config.Principals (the template functions'
// roles, the --credentials key pair with a policy) is verified with its
// secret and authorized with its IAM policies (iam.go).
// Per-operation quotas come from cloud/lab/limits: beyond them the answer is
// ThrottlingException, which the SDK's retryer retries.
package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/bootcert/bootcert/cloud/lab/iam"
	"github.com/bootcert/bootcert/cloud/lab/limits"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/internal/clock"
)

// Publisher delivers a data-plane Publish to the broker.
type Publisher interface {
	Publish(topic string, payload []byte, qos byte) error
}

// Config configures a Server.
type Config struct {
	Registry *registry.Registry
	// Limiter enforces per-operation TPS; nil means no limits.
	Limiter *limits.Limiter
	// Credentials, when set, is the one key pair whose signatures are
	// accepted; nil accepts any well-formed SigV4 Authorization header.
	Credentials *Credentials
	// Principals are key pairs verified with their own secret whatever
	// Credentials says (the functions' execution roles).
	Principals *iam.Keyring
	// Publisher receives data-plane publishes; nil answers
	// ServiceUnavailableException.
	Publisher Publisher
	// Endpoints answers DescribeEndpoint by endpoint type
	// ("iot:Data-ATS", "iot:Data", "iot:CredentialProvider", "iot:Jobs");
	// missing types get the request's Host. AWS returns a bare host name
	// (the port is implied: 8883/443); the lab returns host:port, because
	// its listeners are on ephemeral ports.
	Endpoints map[string]string
	Logger    *slog.Logger
	Clock     clock.Clock
	// NoClockSkew turns the SigV4 X-Amz-Date skew check off: the lab sets
	// it on an injected clock (a test that advances time by years; the
	// SDKs sign with the wall clock). docs/cloud.md lists it.
	NoClockSkew bool
}

// MaxBody bounds request bodies (the largest AWS input here is a job
// document of 32 KB or a PEM of 64 KB; data-plane payloads are at most
// 128 KB).
const MaxBody = 256 << 10

// Server is the REST API handler.
type Server struct {
	cfg    Config
	reg    *registry.Registry
	log    *slog.Logger
	clock  clock.Clock
	routes []route

	mu       sync.Mutex
	lab      *http.ServeMux
	sections map[string]func() any
}

// New returns a Server.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, reg: cfg.Registry, log: cfg.Logger, clock: cfg.Clock, lab: http.NewServeMux(), sections: map[string]func() any{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.clock == nil {
		s.clock = clock.Real{}
	}
	s.routes = s.table()
	s.lab.HandleFunc("GET /lab/state", s.serveState)
	return s
}

// HandleLab registers a lab-only handler; pattern is a net/http ServeMux
// pattern whose path starts with /lab/ (e.g. "POST /lab/functions/{id}/invoke").
// Lab routes need no signature.
func (s *Server) HandleLab(pattern string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lab.Handle(pattern, h)
}

// AddStateSection adds a top-level section to GET /lab/state, computed by fn
// at each request (e.g. the broker's sessions).
func (s *Server) AddStateSection(name string, fn func() any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sections[name] = fn
}

// serveState answers GET /lab/state: the registry snapshot plus the
// sections the assembly added. ?pem=false leaves out certificate PEMs (large
// fleets).
func (s *Server) serveState(w http.ResponseWriter, r *http.Request) {
	snap := s.reg.Snapshot()
	if r.URL.Query().Get("pem") == "false" {
		for i := range snap.Certificates {
			snap.Certificates[i].PEM = ""
		}
		for i := range snap.CACertificates {
			snap.CACertificates[i].PEM = ""
		}
	}
	out := map[string]any{"registry": snap}
	s.mu.Lock()
	names := make([]string, 0, len(s.sections))
	for n := range s.sections {
		names = append(names, n)
	}
	sort.Strings(names)
	fns := make([]func() any, len(names))
	for i, n := range names {
		fns[i] = s.sections[n]
	}
	s.mu.Unlock()
	for i, n := range names {
		out[n] = fns[i]()
	}
	if s.cfg.Limiter != nil {
		out["limits"] = s.cfg.Limiter.Limits()
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

// apiError is an error answered in the SDK's shape.
type apiError struct {
	Type    string
	Status  int
	Message string
	Extra   map[string]any
}

func (e *apiError) Error() string { return e.Type + ": " + e.Message }

func errInvalid(format string, args ...any) error {
	return &apiError{Type: "InvalidRequestException", Status: 400, Message: fmt.Sprintf(format, args...)}
}

// ServeHTTP routes a request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Amzn-RequestId", requestID())
	if strings.HasPrefix(r.URL.Path, "/lab/") {
		s.mu.Lock()
		lab := s.lab
		s.mu.Unlock()
		lab.ServeHTTP(w, r)
		return
	}
	segs, err := splitPath(r.URL.EscapedPath())
	if err != nil {
		s.fail(w, r, "", "", errInvalid("bad path: %v", err))
		return
	}
	rt, vars := s.match(r.Method, segs)
	if rt == nil {
		s.fail(w, r, "", "", &apiError{Type: "UnknownOperationException", Status: 404, Message: "no AWS IoT operation " + r.Method + " " + r.URL.Path + " in the lab"})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		s.fail(w, r, rt.op, "", errInvalid("reading body: %v", err))
		return
	}
	if len(body) > MaxBody {
		s.fail(w, r, rt.op, "", &apiError{Type: "InvalidRequestException", Status: 413, Message: fmt.Sprintf("body larger than %d bytes", MaxBody)})
		return
	}
	principal, err := s.authenticate(r, body, rt.op)
	if err != nil {
		s.fail(w, r, rt.op, "", err)
		return
	}
	req := &request{http: r, vars: vars, query: r.URL.Query(), body: body}
	if principal != nil {
		if err := s.authorize(principal, rt.op, req); err != nil {
			s.fail(w, r, rt.op, "", err)
			return
		}
	}
	if s.cfg.Limiter != nil && !s.cfg.Limiter.AllowAPI(rt.op) {
		// AWS IoT answers ThrottlingException ("The rate exceeds the
		// limit.") with HTTP status 400, e.g.
		// https://docs.aws.amazon.com/iot/latest/apireference/API_CreateKeysAndCertificate.html
		// (Errors); the SDK retries it by its error code.
		s.fail(w, r, rt.op, "", &apiError{Type: "ThrottlingException", Status: 400, Message: "Rate exceeded for " + rt.op})
		return
	}
	out, err := rt.h(req)
	if err != nil {
		s.fail(w, r, rt.op, req.resource(), err)
		return
	}
	s.log.Info("api", "op", rt.op, "resource", req.resource(), "outcome", "ok")
	if raw, ok := out.(rawResponse); ok {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(raw)
		return
	}
	if out == nil {
		out = struct{}{}
	}
	data, err := json.Marshal(out)
	if err != nil {
		s.fail(w, r, rt.op, req.resource(), fmt.Errorf("encoding response: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

type rawResponse []byte

func requestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// fail answers err as X-Amzn-ErrorType + {"message"}.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, op, resource string, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		typ, status := registry.RESTException(err)
		ae = &apiError{Type: typ, Status: status, Message: err.Error()}
		if typ == "InternalFailureException" {
			s.log.Error("api internal error", "op", op, "err", err)
		}
	}
	s.log.Info("api", "op", op, "resource", resource, "outcome", ae.Type, "status", ae.Status, "message", ae.Message)
	body := map[string]any{"message": ae.Message}
	for k, v := range ae.Extra {
		body[k] = v
	}
	data, _ := json.Marshal(body)
	w.Header().Set("X-Amzn-ErrorType", ae.Type)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.Status)
	_, _ = w.Write(data)
}

// splitPath splits an escaped path into unescaped segments.
func splitPath(escaped string) ([]string, error) {
	escaped = strings.TrimPrefix(escaped, "/")
	if escaped == "" {
		return nil, nil
	}
	parts := strings.Split(escaped, "/")
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil {
			return nil, err
		}
		parts[i] = u
	}
	return parts, nil
}

type route struct {
	method string
	segs   []string // literal or {name}; a last "{name+}" takes the rest
	op     string
	h      func(*request) (any, error)
}

func (s *Server) match(method string, segs []string) (*route, map[string]string) {
	for i := range s.routes {
		rt := &s.routes[i]
		if rt.method != method {
			continue
		}
		if vars, ok := matchSegs(rt.segs, segs); ok {
			return rt, vars
		}
	}
	return nil, nil
}

func matchSegs(pattern, segs []string) (map[string]string, bool) {
	vars := map[string]string{}
	for j, p := range pattern {
		if j >= len(segs) {
			return nil, false
		}
		switch {
		case strings.HasSuffix(p, "+}"):
			rest := strings.Join(segs[j:], "/")
			if rest == "" {
				return nil, false
			}
			vars[p[1:len(p)-2]] = rest
			return vars, true
		case strings.HasPrefix(p, "{"):
			if segs[j] == "" {
				return nil, false
			}
			vars[p[1:len(p)-1]] = segs[j]
		case p != segs[j]:
			return nil, false
		}
	}
	return vars, len(segs) == len(pattern)
}

func r(method, path, op string, h func(*request) (any, error)) route {
	return route{method: method, segs: strings.Split(strings.TrimPrefix(path, "/"), "/"), op: op, h: h}
}
