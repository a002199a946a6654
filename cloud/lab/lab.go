package lab

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/api"
	"github.com/bootcert/bootcert/cloud/lab/broker"
	"github.com/bootcert/bootcert/cloud/lab/iam"
	"github.com/bootcert/bootcert/cloud/lab/limits"
	"github.com/bootcert/bootcert/cloud/lab/pki"
	"github.com/bootcert/bootcert/cloud/lab/provisioning"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/cloud/lab/s3"
	"github.com/bootcert/bootcert/internal/atomicfile"
	"github.com/bootcert/bootcert/internal/clock"
)

// Config configures a lab.
type Config struct {
	DataDir  string // state: registry.json, pki/, s3/, endpoints.json, server-ca.pem (required)
	MQTTAddr string // default 127.0.0.1:8883; port 0 picks a free port
	APIAddr  string // default 127.0.0.1:8443
	S3Addr   string // default 127.0.0.1:0

	TemplatePath    string // AWS SAM template (policies, rules, functions); "" for none
	LimitsPath      string // limits JSON file or "aws-default"; "" for no limits
	CredentialsPath string // JSON {"accessKeyId","secretAccessKey"}; "" accepts any SigV4 credentials

	// Functions are Go handlers by template logical ID; they take
	// precedence over the functions built from the template.
	Functions map[string]Function
	// Parameters override the template's parameters (like
	// --parameter-overrides of a deployment).
	Parameters map[string]string
	// Env overrides environment variables of every template function.
	Env map[string]string
	// NoBuild skips building the template's functions with cloud.Build
	// (only Functions are available).
	NoBuild bool

	Region    string // default us-east-1
	AccountID string // default 123456789012

	// FunctionWorkers is the concurrency of a function without reserved
	// concurrency in the template (ReservedConcurrentExecutions sets the
	// others) and of the republish actions (default 8). Every function
	// has its own queue and workers.
	FunctionWorkers int
	// FunctionQueue bounds the queued asynchronous invocations of each
	// function (default 65536); beyond it an invocation is dropped, so a
	// fleet storm needs room for one event per device (Lambda's own
	// asynchronous queue keeps events up to six hours).
	FunctionQueue int
	// FunctionTimeout bounds one invocation (default 30s).
	FunctionTimeout time.Duration

	// WriteBehind > 0: registry changes are answered before registry.json
	// is written; a background writer saves them at most WriteBehind plus
	// one write later, and Close (SIGTERM for the binary) flushes. Zero:
	// every change is on disk before its answer, which costs a rewrite of
	// the whole file per change (slow with thousands of things).
	// bootcert-lab serve uses registry.DefaultWriteBehindInterval.
	WriteBehind time.Duration

	Logger *slog.Logger
	Clock  clock.Clock
}

// Endpoints are the lab's addresses, as printed and written to
// DIR/endpoints.json.
type Endpoints struct {
	MQTT string `json:"mqtt"` // host:port, MQTT over TLS with client certificates
	API  string `json:"api"`  // https://host:port: IoT REST API, data-plane Publish, /lab/
	S3   string `json:"s3"`   // https://host:port: S3, path-style
	// ServerCA is the path of DIR/server-ca.pem.
	ServerCA string `json:"serverCa"`
	Region   string `json:"region"`
	Account  string `json:"accountId"`
}

// Lab is a running lab.
type Lab struct {
	cfg       Config
	schedules []schedule // the template's Schedule events (schedule.go)
	log       *slog.Logger
	pki       *pki.PKI
	reg       *registry.Registry
	broker    *broker.Server
	api       *api.Server
	s3        *s3.Store
	creds     *api.Credentials // --credentials: the functions sign with them
	keys      *iam.Keyring     // principals by access key: function roles, --credentials
	invoker   *invoker
	prov      *provisioning.Service // fleet provisioning (templates from the SAM template)
	rules     *ruleEngine
	faults    *faults
	endpoints Endpoints
	limits    limits.Limits // the quotas the API and broker enforce

	servers []*http.Server
	stop    context.CancelFunc
	wg      sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start starts a lab and returns when every listener is ready.
func Start(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("lab: DataDir is required (the lab keeps its state there)")
	}
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = "127.0.0.1:8883"
	}
	if cfg.APIAddr == "" {
		cfg.APIAddr = "127.0.0.1:8443"
	}
	if cfg.S3Addr == "" {
		cfg.S3Addr = "127.0.0.1:0"
	}
	if cfg.Region == "" {
		cfg.Region = registry.DefaultRegion
	}
	if cfg.AccountID == "" {
		cfg.AccountID = registry.DefaultAccountID
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.FunctionWorkers <= 0 {
		cfg.FunctionWorkers = 8
	}
	if cfg.FunctionTimeout <= 0 {
		cfg.FunctionTimeout = 30 * time.Second
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("lab: creating data directory %s: %w", cfg.DataDir, err)
	}
	l := &Lab{cfg: cfg, log: cfg.Logger}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()

	l.pki, err = pki.Load(cfg.DataDir, cfg.Clock)
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l.reg, err = registry.Open(registry.Config{Dir: cfg.DataDir, Region: cfg.Region, AccountID: cfg.AccountID, Clock: cfg.Clock, Logger: cfg.Logger.With("component", "registry"), Issuer: l.pki,
		WriteBehind: cfg.WriteBehind > 0, WriteBehindInterval: cfg.WriteBehind})
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	lim, err := limits.Load(cfg.LimitsPath)
	if err != nil {
		return nil, fmt.Errorf("lab: --limits: %w", err)
	}
	limiter := limits.NewLimiter(lim, cfg.Clock)
	l.limits = lim

	// Listeners first, so that the endpoints are known to the functions.
	mqttLn, err := net.Listen("tcp", cfg.MQTTAddr)
	if err != nil {
		return nil, fmt.Errorf("lab: MQTT listener on %s: %w (use port 0 for a free port)", cfg.MQTTAddr, err)
	}
	apiLn, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		mqttLn.Close()
		return nil, fmt.Errorf("lab: API listener on %s: %w (use port 0 for a free port)", cfg.APIAddr, err)
	}
	s3Ln, err := net.Listen("tcp", cfg.S3Addr)
	if err != nil {
		mqttLn.Close()
		apiLn.Close()
		return nil, fmt.Errorf("lab: S3 listener on %s: %w (use port 0 for a free port)", cfg.S3Addr, err)
	}
	l.endpoints = Endpoints{
		MQTT: mqttLn.Addr().String(), API: "https://" + apiLn.Addr().String(), S3: "https://" + s3Ln.Addr().String(),
		ServerCA: filepath.Join(cfg.DataDir, pki.ServerCAFile), Region: cfg.Region, Account: cfg.AccountID,
	}

	queue := cfg.FunctionQueue
	if queue <= 0 {
		queue = 1 << 16
	}
	l.invoker = newInvoker(cfg.Logger, cfg.Clock, cfg.FunctionWorkers, queue, cfg.FunctionTimeout)
	l.rules = &ruleEngine{log: cfg.Logger.With("component", "rules"), inv: l.invoker}

	var limiterForBroker broker.ConnectLimiter
	if lim.ConnectsPerSecond > 0 || lim.ConnectsPerClientPerSecond > 0 {
		limiterForBroker = limiter
	}
	var publishLimiter broker.PublishLimiter
	if lim.PublishesPerConnectionPerSecond > 0 {
		publishLimiter = limiter
	}
	dp := &dataPlane{}
	l.prov = provisioning.New(provisioning.Config{Registry: l.reg, Region: cfg.Region, AccountID: cfg.AccountID, Clock: cfg.Clock, Logger: cfg.Logger,
		Invoke: func(ctx context.Context, id string, ev json.RawMessage) (json.RawMessage, error) {
			return l.invoker.Invoke(ctx, id, ev, "pre-provisioning hook")
		}})
	l.faults = newFaults(cfg.Logger, l.pki.IssuingCA())
	l.broker, err = broker.Start(broker.Config{
		DataPlane: dp,
		Listener:  mqttLn, ServerCert: l.pki.ServerCertificate(),
		Registry: brokerRegistry{l.reg}, Authorizer: newAuthorizer(l.reg, cfg.Logger.With("component", "policy")),
		Jobs: brokerJobs{l.reg}, Provisioning: l.prov, Limiter: limiterForBroker, Publishes: publishLimiter, OnMessage: l.rules.onMessage,
		Region: cfg.Region, AccountID: cfg.AccountID, Clock: cfg.Clock, Logger: cfg.Logger, Fault: l.faults.refuse,
	})
	if err != nil {
		apiLn.Close()
		s3Ln.Close()
		return nil, fmt.Errorf("lab: %w", err)
	}
	l.rules.publish = l.broker.Publish
	l.reg.AddListener(registryEvents(l.reg, l.broker))

	var creds *api.Credentials
	if cfg.CredentialsPath != "" {
		creds, err = api.LoadCredentials(cfg.CredentialsPath)
		l.creds = creds
		if err != nil {
			apiLn.Close()
			s3Ln.Close()
			return nil, fmt.Errorf("lab: --credentials: %w", err)
		}
	}
	l.keys = &iam.Keyring{}
	if creds != nil {
		p := &iam.Principal{Name: "credentials", ARN: "arn:aws:iam::" + cfg.AccountID + ":user/bootcert-lab",
			AccessKeyID: creds.AccessKeyID, SecretAccessKey: creds.SecretAccessKey, Admin: len(creds.Policy) == 0}
		if !p.Admin {
			d, err := iam.Parse(creds.Policy)
			if err != nil {
				apiLn.Close()
				s3Ln.Close()
				return nil, fmt.Errorf("lab: --credentials %s: policy: %w", cfg.CredentialsPath, err)
			}
			p.Policies = []*iam.Document{d}
		}
		l.keys.Add(p)
	}
	var lim2 *limits.Limiter
	if len(lim.API) > 0 {
		lim2 = limiter
	}
	_, realClock := cfg.Clock.(clock.Real)
	l.api = api.New(api.Config{
		Registry: l.reg, Limiter: lim2, Credentials: creds, Principals: l.keys, Publisher: l.broker,
		Endpoints: map[string]string{"iot:Data-ATS": l.endpoints.MQTT, "iot:Data": l.endpoints.MQTT, "iot:Jobs": strings.TrimPrefix(l.endpoints.API, "https://")},
		Logger:    cfg.Logger.With("component", "api"), Clock: cfg.Clock, NoClockSkew: !realClock,
	})
	dp.api.Store(l.api)
	l.api.HandleLab("POST /lab/functions/{id}/invoke", http.HandlerFunc(l.serveInvoke))
	l.faults.register(l.api)
	l.api.AddStateSection("broker", func() any { return l.broker.Stats() })
	l.api.AddStateSection("functions", func() any { return l.invoker.snapshot() })
	l.api.AddStateSection("rules", func() any { return l.rules.snapshot() })
	l.api.AddStateSection("endpoints", func() any { return l.endpoints })

	s3h, err := l.startS3()
	if err != nil {
		apiLn.Close()
		s3Ln.Close()
		return nil, err
	}
	l.serve(apiLn, l.api)
	l.serve(s3Ln, s3h)

	if err := l.loadTemplate(ctx); err != nil {
		return nil, err
	}

	bctx, cancel := context.WithCancel(context.Background())
	l.stop = cancel
	l.wg.Add(1)
	go l.expireLoop(bctx)
	l.runSchedules(bctx)

	if err := atomicfile.WriteFile(filepath.Join(cfg.DataDir, pki.ServerCAFile), l.pki.ServerCAPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	b, _ := json.MarshalIndent(l.endpoints, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(cfg.DataDir, "endpoints.json"), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l.log.Info("lab ready", "mqtt", l.endpoints.MQTT, "api", l.endpoints.API, "s3", l.endpoints.S3, "data", cfg.DataDir, "template", cfg.TemplatePath)
	return l, nil
}

func (l *Lab) serve(ln net.Listener, h http.Handler) {
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{l.pki.ServerCertificate()}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(l.log.Handler(), slog.LevelDebug),
	}
	l.servers = append(l.servers, srv)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.log.Error("HTTPS server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// expireLoop applies job execution timeouts as time passes.
func (l *Lab) expireLoop(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.reg.ExpireTimeouts()
		}
	}
}

// Endpoints returns the lab's addresses.
func (l *Lab) Endpoints() Endpoints { return l.endpoints }

// ServerCAPEM is the CA certificate of the lab's TLS server certificate.
func (l *Lab) ServerCAPEM() []byte { return l.pki.ServerCAPEM() }

// Registry gives tests direct access to the lab's state.
func (l *Lab) Registry() *registry.Registry { return l.reg }

// Broker gives tests and the fleet harness access to the broker.
func (l *Lab) Broker() *broker.Server { return l.broker }

// Invoke runs a function synchronously, like POST /lab/functions/{id}/invoke.
func (l *Lab) Invoke(ctx context.Context, logicalID string, event json.RawMessage) (json.RawMessage, error) {
	return l.invoker.Invoke(ctx, logicalID, event, "Invoke")
}

// Close stops every listener and worker. Safe to call twice.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		if l.stop != nil {
			l.stop()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range l.servers {
			if err := s.Shutdown(ctx); err != nil {
				s.Close()
			}
		}
		if l.broker != nil {
			l.closeErr = l.broker.Close()
		}
		if l.invoker != nil {
			l.invoker.close()
		}
		l.wg.Wait()
		if l.s3 != nil {
			l.s3.Close()
		}
		// After every listener and worker stopped: nothing changes the
		// registry any more; write what write-behind still holds.
		if l.reg != nil {
			if err := l.reg.Close(); err != nil {
				l.log.Error("saving the registry", "err", err)
				l.closeErr = errors.Join(l.closeErr, err)
			}
		}
		l.log.Info("lab stopped")
	})
	return l.closeErr
}

// serveInvoke is POST /lab/functions/{id}/invoke: the request body is the
// event, the response the function's result (502 with {"errorMessage"} when
// it failed, as Lambda's Invoke reports a function error).
func (l *Lab) serveInvoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	body, err := io.ReadAll(io.LimitReader(r.Body, 6<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if len(body) == 0 {
		body = []byte("{}")
	}
	if !json.Valid(body) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"errorType": "InvalidRequestContentException", "errorMessage": "the event is not JSON"})
		return
	}
	if !l.invoker.has(id) {
		writeJSON(w, http.StatusNotFound, map[string]any{"errorType": "ResourceNotFoundException", "errorMessage": "no function " + id, "functions": l.invoker.names()})
		return
	}
	out, err := l.invoker.Invoke(r.Context(), id, body, "POST /lab/functions")
	if err != nil {
		w.Header().Set("X-Amz-Function-Error", "Unhandled")
		writeJSON(w, http.StatusBadGateway, map[string]string{"errorType": "FunctionError", "errorMessage": err.Error()})
		return
	}
	if len(out) == 0 {
		out = []byte("null")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// dataPlane serves the HTTPS data plane (Publish) on the MQTT port, as AWS's
// iot:Data-ATS endpoint does; the control plane stays on the API port.
type dataPlane struct{ api atomic.Pointer[api.Server] }

func (d *dataPlane) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := d.api.Load()
	switch {
	case !strings.HasPrefix(r.URL.EscapedPath(), "/topics/"):
		w.Header().Set("X-Amzn-ErrorType", "ResourceNotFoundException")
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "the data endpoint serves POST /topics/{topic}; the control plane is on the lab's api endpoint"})
	case a == nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"message": "starting"})
	default:
		a.ServeHTTP(w, r)
	}
}
