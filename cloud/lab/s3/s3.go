// Package s3 is the lab's S3: the S3 REST API of
// github.com/johannesboyne/gofakes3 over a bbolt database in the lab's data
// directory (DIR/s3.db), so objects and their user metadata survive a
// restart. It is served on its own listener with path-style addressing
// (https://127.0.0.1:PORT/BUCKET/KEY). The store checks signatures itself
// (gofakes3 ignores them): requests signed by a Config.Principals key are
// verified and authorized with its IAM policies, others with
// Config.Credentials when set; every request must be scoped to the region
// and service s3. Presigned GET URLs from service/s3's
// PresignClient work, and the lab enforces their expiry
// (X-Amz-Date + X-Amz-Expires, like S3:
// https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-presigned-url.html).
package s3

import (
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bootcert/bootcert/cloud/lab/api"
	"github.com/bootcert/bootcert/cloud/lab/iam"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
	bolt "go.etcd.io/bbolt"
)

// FileName is the database file under the data directory.
const FileName = "s3.db"

// Config configures a Store.
type Config struct {
	Dir    string // DIR; the database is DIR/s3.db
	Clock  clock.Clock
	Logger *slog.Logger
	// Buckets are created at start if missing.
	Buckets []string
	// Credentials, when set, is the one key pair whose SigV4 signatures
	// (Authorization header or presigned URL) are accepted; nil accepts
	// every request, signed or not (presigned URLs still expire).
	Credentials *api.Credentials
	// Principals are the identities whose requests are verified with their
	// own secret and authorized with their IAM policies (the functions'
	// roles, the --credentials key pair with its policy), whatever
	// Credentials says.
	Principals *iam.Keyring
	// Region is the region requests must be scoped to (default us-east-1).
	Region string
}

// Store is the lab's S3.
type Store struct {
	db      *bolt.DB
	backend *boltBackend
	fake    *gofakes3.GoFakeS3
	clock   clock.Clock
	log     *slog.Logger
	creds   *api.Credentials
	keys    *iam.Keyring
	region  string
	skew    time.Duration // SigV4 clock skew allowed (0: unchecked, injected clock)
}

type timeSource struct{ c clock.Clock }

func (t timeSource) Now() time.Time                   { return t.c.Now().UTC() }
func (t timeSource) Since(at time.Time) time.Duration { return t.c.Now().Sub(at) }

// Open opens (or creates) DIR/s3.db. Only one process may have it open.
func Open(cfg Config) (*Store, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("lab s3: %w", err)
	}
	path := filepath.Join(cfg.Dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("lab s3: opening %s: %w (is another bootcert-lab using this data directory?)", path, err)
	}
	ts := timeSource{cfg.Clock}
	// SigV4 time skew is checked against the lab's clock when it is the
	// real one. With an injected clock (a test that advances time by
	// years) the clients still sign with the wall clock (the SDK has no
	// clock to inject), so the check is off.
	skew := 15 * time.Minute
	if _, real := cfg.Clock.(clock.Real); !real {
		skew = 0
	}
	backend := &boltBackend{Backend: s3bolt.New(db, s3bolt.WithTimeSource(ts)), db: db}
	s := &Store{db: db, backend: backend, clock: cfg.Clock, log: cfg.Logger, creds: cfg.Credentials, keys: cfg.Principals, region: cfg.Region, skew: skew,
		fake: gofakes3.New(backend, gofakes3.WithTimeSource(ts), gofakes3.WithTimeSkewLimit(skew),
			gofakes3.WithLogger(gofakes3.DiscardLog()))}
	for _, b := range cfg.Buckets {
		if err := s.CreateBucket(b); err != nil {
			db.Close()
			return nil, err
		}
	}
	return s, nil
}

// CreateBucket creates a bucket unless it exists.
func (s *Store) CreateBucket(name string) error {
	ok, err := s.backend.BucketExists(name)
	if err != nil {
		return fmt.Errorf("lab s3: bucket %s: %w", name, err)
	}
	if ok {
		return nil
	}
	if err := gofakes3.ValidateBucketName(name); err != nil {
		return fmt.Errorf("lab s3: bucket name %q: %w", name, err)
	}
	if err := s.backend.CreateBucket(name); err != nil {
		return fmt.Errorf("lab s3: creating bucket %s: %w", name, err)
	}
	s.log.Info("s3", "op", "CreateBucket", "resource", name, "outcome", "created")
	return nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Handler serves the S3 API, checking the expiry of presigned requests and
// logging each request (path only: a presigned query string is a secret).
func (s *Store) Handler() http.Handler {
	inner := s.fake.Server()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &statusWriter{ResponseWriter: w, status: 200}
		if code, status, err := s.authorize(r); err != nil {
			rw.Header().Set("Content-Type", "application/xml")
			rw.WriteHeader(status)
			writeS3Error(rw, code, err.Error())
		} else if err := decodeChunked(r); err != nil {
			rw.Header().Set("Content-Type", "application/xml")
			rw.WriteHeader(http.StatusBadRequest)
			writeS3Error(rw, "IncompleteBody", err.Error())
		} else {
			inner.ServeHTTP(rw, r)
		}
		s.log.Info("s3", "op", r.Method, "resource", r.URL.Path, "outcome", rw.status,
			"presigned", r.URL.Query().Has("X-Amz-Signature"))
	})
}

// ErrExpired is returned for presigned requests past their expiry.
//
//lint:ignore ST1005 S3's own message, verbatim
var ErrExpired = errors.New("Request has expired")

// authorize verifies the request's signature when the store has
// credentials, and the expiry of presigned URLs always; it returns the S3
// error code and HTTP status of a refusal
// (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
func (s *Store) authorize(r *http.Request) (string, int, error) {
	// A request scoped to another region or service is refused whatever
	// the credentials, with S3's code
	// (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
	if ae := api.CheckScope(r, s.region, []string{"s3"}); ae != nil {
		switch ae.Scope {
		case "region":
			//lint:ignore ST1005 S3's own message
			return "AuthorizationHeaderMalformed", http.StatusBadRequest, fmt.Errorf("The authorization header is malformed; the region is wrong; expecting '%s'", s.region)
		case "service":
			//lint:ignore ST1005 S3's own message
			return "AuthorizationHeaderMalformed", http.StatusBadRequest, errors.New("The authorization header is malformed; incorrect service. This endpoint belongs to \"s3\".")
		}
		return authFailure(ae)
	}
	if p, ok := s.keys.Lookup(accessKeyOf(r)); ok {
		err := api.VerifySigV4(r, nil, api.Credentials{AccessKeyID: p.AccessKeyID, SecretAccessKey: p.SecretAccessKey}, s.clock.Now(), s.skew, true)
		if err != nil {
			return authFailure(err)
		}
		if ok, why := s.authorizeIAM(r, p); !ok {
			s.log.Info("s3 access denied", "principal", p.Name, "method", r.Method, "resource", r.URL.Path, "reason", why)
			return "AccessDenied", http.StatusForbidden, ErrAccessDenied
		}
		return "", 0, nil
	}
	if s.creds == nil {
		if err := s.checkPresigned(r); err != nil {
			return "AccessDenied", http.StatusForbidden, err
		}
		return "", 0, nil
	}
	err := api.VerifySigV4(r, nil, *s.creds, s.clock.Now(), s.skew, true)
	if err == nil {
		return "", 0, nil
	}
	return authFailure(err)
}

// ErrAccessDenied is S3's answer to a request IAM refuses.
//
//lint:ignore ST1005 S3's own message, verbatim
var ErrAccessDenied = errors.New("Access Denied")

// accessKeyOf is the access key ID a request is signed with, if any.
func accessKeyOf(r *http.Request) string {
	c := r.URL.Query().Get("X-Amz-Credential")
	if c == "" {
		h := r.Header.Get("Authorization")
		if i := strings.Index(h, "Credential="); i >= 0 {
			c = h[i+len("Credential="):]
		}
	}
	ak, _, _ := strings.Cut(c, "/")
	return ak
}

// authFailure maps a SigV4 verification error to S3's error code and
// status.
func authFailure(err error) (string, int, error) {
	var ae *api.AuthError
	if !errors.As(err, &ae) {
		return "InternalError", http.StatusInternalServerError, err
	}
	switch {
	case ae.Expired:
		return "AccessDenied", http.StatusForbidden, ErrExpired
	case ae.Code == "UnrecognizedClientException":
		//lint:ignore ST1005 S3's own message, verbatim
		return "InvalidAccessKeyId", http.StatusForbidden, errors.New("The AWS Access Key Id you provided does not exist in our records.")
	case ae.Code == "InvalidSignatureException":
		//lint:ignore ST1005 S3's own message, verbatim
		return "SignatureDoesNotMatch", http.StatusForbidden, errors.New("The request signature we calculated does not match the signature you provided.")
	case ae.Code == "MissingAuthenticationTokenException":
		//lint:ignore ST1005 S3's own message, verbatim
		return "AccessDenied", http.StatusForbidden, errors.New("Access Denied: the lab's S3 needs signed requests")
	default:
		return "AuthorizationHeaderMalformed", http.StatusBadRequest, errors.New(ae.Message)
	}
}

func (s *Store) checkPresigned(r *http.Request) error {
	q := r.URL.Query()
	if !q.Has("X-Amz-Signature") {
		return nil
	}
	at, err := time.Parse("20060102T150405Z", q.Get("X-Amz-Date"))
	if err != nil {
		return errors.New("presigned URL: X-Amz-Date missing or malformed")
	}
	exp, err := strconv.Atoi(q.Get("X-Amz-Expires"))
	// S3 allows at most 7 days (604800 s).
	if err != nil || exp < 1 || exp > 604800 {
		return errors.New("presigned URL: X-Amz-Expires must be 1 to 604800 seconds")
	}
	if s.clock.Now().After(at.Add(time.Duration(exp) * time.Second)) {
		return ErrExpired
	}
	return nil
}

func writeS3Error(w http.ResponseWriter, code, msg string) {
	type s3err struct {
		XMLName xml.Name `xml:"Error"`
		Code    string   `xml:"Code"`
		Message string   `xml:"Message"`
	}
	out, _ := xml.Marshal(s3err{Code: code, Message: msg})
	_, _ = w.Write(append([]byte(xml.Header), out...))
}

type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
