package lab

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/bootcert/bootcert/cloud/lab/api"
)

// Faults are the failures the lab can be told to inject, to show and test
// what devices do when AWS IoT Core misbehaves. The zero value injects
// nothing. GET /lab/faults shows them, POST /lab/faults replaces them (a
// JSON object like this one), bootcert-lab serve --fault NAME turns one on
// at start.
type Faults struct {
	// RefuseIssuedCertificates refuses the MQTT CONNECT of every
	// certificate issued by the lab's own issuing CA (the ones
	// CreateCertificateFromCsr makes, i.e. the operational certificates of
	// a rotation), as if IoT Core rejected the new certificate. Bootstrap
	// certificates (issued by a registered factory CA) still connect. The
	// broker logs "connect refused" with reason "refused by fault
	// injection".
	RefuseIssuedCertificates bool `json:"refuseIssuedCertificates"`
}

// FaultNames are the names bootcert-lab serve --fault accepts.
var FaultNames = map[string]func(*Faults){
	"refuse-issued-certificates": func(f *Faults) { f.RefuseIssuedCertificates = true },
}

// ParseFault turns a --fault name on in f.
func ParseFault(f *Faults, name string) error {
	set, ok := FaultNames[name]
	if !ok {
		return fmt.Errorf("unknown fault %q (known: %s)", name, strings.Join(slices.Sorted(maps.Keys(FaultNames)), ", "))
	}
	set(f)
	return nil
}

// faults holds the current Faults of a lab.
type faults struct {
	log    *slog.Logger
	issuer *x509.Certificate // the lab's issuing CA (CreateCertificateFromCsr)

	mu sync.Mutex
	f  Faults
}

func newFaults(log *slog.Logger, issuer *x509.Certificate) *faults {
	return &faults{log: log.With("component", "faults"), issuer: issuer}
}

func (f *faults) get() Faults {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.f
}

func (f *faults) set(v Faults) {
	f.mu.Lock()
	f.f = v
	f.mu.Unlock()
	f.log.Info("faults set", "refuseIssuedCertificates", v.RefuseIssuedCertificates)
}

// refuse is the broker's FaultFunc.
func (f *faults) refuse(leaf *x509.Certificate) (string, bool) {
	if !f.get().RefuseIssuedCertificates || f.issuer == nil {
		return "", false
	}
	if bytes.Equal(leaf.RawIssuer, f.issuer.RawSubject) && leaf.CheckSignatureFrom(f.issuer) == nil {
		return "refuseIssuedCertificates: issued by the lab's CreateCertificateFromCsr CA", true
	}
	return "", false
}

// register adds GET and POST /lab/faults and a "faults" section to
// GET /lab/state.
func (f *faults) register(s *api.Server) {
	s.HandleLab("GET /lab/faults", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, f.get())
	}))
	s.HandleLab("POST /lab/faults", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v Faults
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&v); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"errorMessage": "POST /lab/faults: want a JSON object like {\"refuseIssuedCertificates\":true}: " + err.Error()})
			return
		}
		f.set(v)
		writeJSON(w, http.StatusOK, v)
	}))
	s.AddStateSection("faults", func() any { return f.get() })
}

// SetFaults replaces the faults the lab injects (what POST /lab/faults does).
func (l *Lab) SetFaults(v Faults) { l.faults.set(v) }
