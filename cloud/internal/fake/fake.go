// Package fake has in-memory implementations of the cloud ports for narrow
// unit tests. They follow AWS semantics where the handlers depend on them
// (ResourceAlreadyExists on a differing CreateThing, DeleteCertificate only
// when INACTIVE/REVOKED and detached) and can inject throttling. The same
// handlers are also tested through the real SDK against the lab.
package fake

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/ports"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/protocol"
)

var (
	_ ports.Registry  = (*Registry)(nil)
	_ ports.Store     = (*Store)(nil)
	_ ports.Publisher = (*Publisher)(nil)
)

// ARNPrefix is the fake account's ARN prefix.
const ARNPrefix = "arn:aws:iot:us-east-1:123456789012:"

// Registry is an in-memory ports.Registry.
type Registry struct {
	mu       sync.Mutex
	Certs    map[string]*ports.Certificate
	Things   map[string]*ports.Thing
	Policies map[string]map[string]bool    // target ARN -> policy names
	Princ    map[string]map[string]bool    // thing -> principal ARNs
	Groups   map[string]map[string]bool    // group -> things
	Jobs     map[string]protocol.JobStatus // thing + "/" + job -> status
	// Throttle makes the next N calls fail with ErrThrottled.
	Throttle int
	Calls    int
	// CreatedJobs are the jobs CreateJob made, in order.
	CreatedJobs []ports.JobSpec

	caKey  *ecdsa.PrivateKey
	caCert *x509.Certificate
	Now    func() time.Time
}

// NewRegistry makes an empty registry with an AWS-like issuing CA.
func NewRegistry() *Registry {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake Amazon IoT CA"}, NotBefore: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		panic(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return &Registry{Certs: map[string]*ports.Certificate{}, Things: map[string]*ports.Thing{}, Policies: map[string]map[string]bool{},
		Princ: map[string]map[string]bool{}, Groups: map[string]map[string]bool{}, Jobs: map[string]protocol.JobStatus{}, caKey: k, caCert: ca, Now: time.Now}
}

func (r *Registry) call() error {
	r.Calls++
	if r.Throttle > 0 {
		r.Throttle--
		return fmt.Errorf("fake: %w", ports.ErrThrottled)
	}
	return nil
}

func notFound(what string) error { return fmt.Errorf("fake: %s: %w", what, ports.ErrNotFound) }

// AddCertificate registers a certificate DER with a status; it returns its ID.
func (r *Registry) AddCertificate(der []byte, status string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := protocol.CertificateID(der)
	r.Certs[id] = &ports.Certificate{ID: id, ARN: ARNPrefix + "cert/" + id, Status: status, PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	return id
}

// SetJob sets a job execution status.
func (r *Registry) SetJob(thing, job string, status protocol.JobStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Jobs[thing+"/"+job] = status
}

// InGroup reports group membership.
func (r *Registry) InGroup(group, thing string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Groups[group][thing]
}

// Status returns a certificate's status or "" when it does not exist.
func (r *Registry) Status(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.Certs[id]; c != nil {
		return c.Status
	}
	return ""
}

// Attr returns a thing attribute.
func (r *Registry) Attr(thing, key string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.Things[thing]; t != nil {
		return t.Attributes[key]
	}
	return ""
}

// PoliciesOf returns the policies attached to a certificate ID.
func (r *Registry) PoliciesOf(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.Policies[ARNPrefix+"cert/"+id]))
}

// DescribeCertificate implements ports.Registry.
func (r *Registry) DescribeCertificate(_ context.Context, id string) (ports.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return ports.Certificate{}, err
	}
	c := r.Certs[id]
	if c == nil {
		return ports.Certificate{}, notFound("certificate " + id)
	}
	return *c, nil
}

// UpdateCertificate implements ports.Registry.
func (r *Registry) UpdateCertificate(_ context.Context, id, status string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	c := r.Certs[id]
	if c == nil {
		return notFound("certificate " + id)
	}
	if c.Status == ports.StatusRevoked && status != ports.StatusRevoked {
		return fmt.Errorf("fake: certificate %s is REVOKED", id)
	}
	c.Status = status
	return nil
}

// DeleteCertificate implements ports.Registry.
func (r *Registry) DeleteCertificate(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	c := r.Certs[id]
	if c == nil {
		return notFound("certificate " + id)
	}
	if c.Status == ports.StatusActive {
		return fmt.Errorf("fake: certificate %s is ACTIVE", id)
	}
	if len(r.Policies[c.ARN]) > 0 {
		return fmt.Errorf("fake: certificate %s has policies attached", id)
	}
	for _, p := range r.Princ {
		if p[c.ARN] {
			return fmt.Errorf("fake: certificate %s is attached to a thing", id)
		}
	}
	delete(r.Certs, id)
	return nil
}

// CreateCertificateFromCSR implements ports.Registry.
func (r *Registry) CreateCertificateFromCSR(_ context.Context, csrPEM string, active bool) (ports.Certificate, error) {
	r.mu.Lock()
	if err := r.call(); err != nil {
		r.mu.Unlock()
		return ports.Certificate{}, err
	}
	r.mu.Unlock()
	blk, _ := pem.Decode([]byte(csrPEM))
	if blk == nil {
		return ports.Certificate{}, fmt.Errorf("fake: CSR is not PEM")
	}
	req, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return ports.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	now := r.Now()
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: req.Subject, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(365 * 24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.caCert, req.PublicKey, r.caKey)
	if err != nil {
		return ports.Certificate{}, err
	}
	st := ports.StatusInactive
	if active {
		st = ports.StatusActive
	}
	id := r.AddCertificate(der, st)
	r.mu.Lock()
	defer r.mu.Unlock()
	return *r.Certs[id], nil
}

// CreateThing implements ports.Registry.
func (r *Registry) CreateThing(_ context.Context, name, thingType string, attrs map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	if t := r.Things[name]; t != nil {
		if t.Type == thingType && maps.Equal(t.Attributes, attrs) {
			return nil
		}
		return fmt.Errorf("fake: thing %s: %w", name, ports.ErrExists)
	}
	a := map[string]string{}
	maps.Copy(a, attrs)
	r.Things[name] = &ports.Thing{Name: name, Type: thingType, Attributes: a, Version: 1}
	return nil
}

// DescribeThing implements ports.Registry.
func (r *Registry) DescribeThing(_ context.Context, name string) (ports.Thing, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return ports.Thing{}, err
	}
	t := r.Things[name]
	if t == nil {
		return ports.Thing{}, notFound("thing " + name)
	}
	c := *t
	c.Attributes = maps.Clone(t.Attributes)
	return c, nil
}

// UpdateThingAttributes implements ports.Registry.
func (r *Registry) UpdateThingAttributes(_ context.Context, name string, attrs map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	t := r.Things[name]
	if t == nil {
		return notFound("thing " + name)
	}
	for k, v := range attrs {
		if v == "" {
			delete(t.Attributes, k)
		} else {
			t.Attributes[k] = v
		}
	}
	t.Version++
	return nil
}

// ListThings implements ports.Registry (pages of 2, to exercise paging).
func (r *Registry) ListThings(_ context.Context, thingType, next string) ([]ports.Thing, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return nil, "", err
	}
	var names []string
	for n, t := range r.Things {
		if thingType == "" || t.Type == thingType {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	i := 0
	if next != "" {
		i = sort.SearchStrings(names, next)
	}
	var out []ports.Thing
	for ; i < len(names) && len(out) < 2; i++ {
		t := *r.Things[names[i]]
		t.Attributes = maps.Clone(t.Attributes)
		out = append(out, t)
	}
	n := ""
	if i < len(names) {
		n = names[i]
	}
	return out, n, nil
}

func (r *Registry) setAttach(m map[string]map[string]bool, key, val string, on bool) {
	if m[key] == nil {
		m[key] = map[string]bool{}
	}
	if on {
		m[key][val] = true
	} else {
		delete(m[key], val)
	}
}

// AttachPolicy implements ports.Registry.
func (r *Registry) AttachPolicy(_ context.Context, policy, target string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	r.setAttach(r.Policies, target, policy, true)
	return nil
}

// DetachPolicy implements ports.Registry.
func (r *Registry) DetachPolicy(_ context.Context, policy, target string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	r.setAttach(r.Policies, target, policy, false)
	return nil
}

// AttachThingPrincipal implements ports.Registry.
func (r *Registry) AttachThingPrincipal(_ context.Context, thing, principal string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	if r.Things[thing] == nil {
		return notFound("thing " + thing)
	}
	if r.Certs[strings.TrimPrefix(principal, ARNPrefix+"cert/")] == nil {
		return notFound("principal " + principal)
	}
	r.setAttach(r.Princ, thing, principal, true)
	return nil
}

// DetachThingPrincipal implements ports.Registry.
func (r *Registry) DetachThingPrincipal(_ context.Context, thing, principal string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	r.setAttach(r.Princ, thing, principal, false)
	return nil
}

// ListThingPrincipals implements ports.Registry.
func (r *Registry) ListThingPrincipals(_ context.Context, thing string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return nil, err
	}
	if r.Things[thing] == nil {
		return nil, notFound("thing " + thing)
	}
	return slices.Sorted(maps.Keys(r.Princ[thing])), nil
}

// AddThingToGroup implements ports.Registry.
func (r *Registry) AddThingToGroup(_ context.Context, group, thing string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	if r.Things[thing] == nil {
		return notFound("thing " + thing)
	}
	r.setAttach(r.Groups, group, thing, true)
	return nil
}

// RemoveThingFromGroup implements ports.Registry.
func (r *Registry) RemoveThingFromGroup(_ context.Context, group, thing string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	r.setAttach(r.Groups, group, thing, false)
	return nil
}

// ListThingGroupsForThing implements ports.Registry.
func (r *Registry) ListThingGroupsForThing(_ context.Context, thing string) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return nil, err
	}
	var out []string
	for g, m := range r.Groups {
		if m[thing] {
			out = append(out, g)
		}
	}
	return out, nil
}

// JobExecutionStatus implements ports.Registry.
func (r *Registry) JobExecutionStatus(_ context.Context, jobID, thing string) (protocol.JobStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return "", err
	}
	st, ok := r.Jobs[thing+"/"+jobID]
	if !ok {
		return "", notFound("job execution " + jobID + " of " + thing)
	}
	return st, nil
}

// Store is an in-memory ports.Store.
type Store struct {
	mu      sync.Mutex
	Objects map[string]ports.Object
	n       int
}

// NewStore makes an empty store.
func NewStore() *Store { return &Store{Objects: map[string]ports.Object{}} }

// Get implements ports.Store.
func (s *Store) Get(_ context.Context, key, ifNoneMatch string) (ports.Object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.Objects[key]
	if !ok {
		return ports.Object{}, notFound("object " + key)
	}
	if ifNoneMatch != "" && ifNoneMatch == o.ETag {
		return ports.Object{}, fmt.Errorf("fake: %w", ports.ErrNotModified)
	}
	return o, nil
}

// Put implements ports.Store.
func (s *Store) Put(_ context.Context, key string, body []byte, metadata map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	s.Objects[key] = ports.Object{Body: slices.Clone(body), ETag: fmt.Sprintf("\"%d\"", s.n), Metadata: maps.Clone(metadata)}
	return nil
}

// PutIfAbsent implements ports.Store.
func (s *Store) PutIfAbsent(ctx context.Context, key string, body []byte, metadata map[string]string) error {
	s.mu.Lock()
	_, ok := s.Objects[key]
	s.mu.Unlock()
	if ok {
		return fmt.Errorf("fake: object %s: %w", key, ports.ErrExists)
	}
	return s.Put(ctx, key, body, metadata)
}

// List implements ports.Store.
func (s *Store) List(_ context.Context, prefix string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.Objects {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Delete implements ports.Store.
func (s *Store) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.Objects, key)
	return nil
}

// Presign implements ports.Store.
func (s *Store) Presign(_ context.Context, key string, ttl time.Duration) (string, error) {
	return fmt.Sprintf("https://bucket.example/%s?X-Amz-Expires=%d&X-Amz-Signature=secret", key, int(ttl.Seconds())), nil
}

// Message is a published message.
type Message struct {
	Topic   string
	Payload []byte
}

// Publisher records messages.
type Publisher struct {
	mu   sync.Mutex
	Msgs []Message
}

// Publish implements ports.Publisher.
func (p *Publisher) Publish(_ context.Context, topic string, payload []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.Msgs = append(p.Msgs, Message{topic, slices.Clone(payload)})
	return nil
}

// DriveClock advances c by step whenever the code under test waits on it (an
// After is pending), until the test ends: a backoff's waits pass at once in
// real time while the fake time moves by what was waited, rounded up to a
// step.
func DriveClock(t testing.TB, c *clock.Fake, step time.Duration) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			default:
			}
			if c.WaitForWaiters(1, 10*time.Millisecond) {
				c.Advance(step)
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		<-stopped
	})
}

// CreateJob implements ports.JobCreator: every thing gets a QUEUED
// execution; the spec is kept in CreatedJobs.
func (r *Registry) CreateJob(_ context.Context, spec ports.JobSpec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.call(); err != nil {
		return err
	}
	for _, j := range r.CreatedJobs {
		if j.ID == spec.ID {
			return fmt.Errorf("fake: job %s: %w", spec.ID, ports.ErrExists)
		}
	}
	for _, t := range spec.Things {
		if r.Things[t] == nil {
			return notFound("thing " + t)
		}
	}
	for _, t := range spec.Things {
		r.Jobs[t+"/"+spec.ID] = protocol.JobQueued
	}
	spec.Things = append([]string(nil), spec.Things...)
	r.CreatedJobs = append(r.CreatedJobs, spec)
	return nil
}
