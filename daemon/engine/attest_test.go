package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/bootcert/bootcert/attest"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/keystore"
	"github.com/bootcert/bootcert/protocol"
)

// certifyingKeys is KeystoreKeys plus a hand-written Attester that echoes
// the qualifying data as the attestation (the TPM side is tested on swtpm
// in keystore/tpm and cloud/certvendor).
type certifyingKeys struct {
	KeystoreKeys
	mu    sync.Mutex
	calls []string // key URIs certified
	ak    string
}

func (k *certifyingKeys) Certify(_ context.Context, keyURI, akURI string, qd []byte) (keystore.Certification, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, keyURI)
	k.ak = akURI
	return keystore.Certification{Attest: bytes.Clone(qd), Signature: []byte("sig"), Public: []byte("pub")}, nil
}

func (k *certifyingKeys) EKCertificate(context.Context, string) ([]byte, error) {
	return []byte("ek-cert"), nil
}

func rotateWith(t *testing.T, r *rig, keys Keys) []protocol.GetRequest {
	t.Helper()
	var mu sync.Mutex
	var reqs []protocol.GetRequest
	r.cloud.getReply = func(req protocol.GetRequest, pub any) (string, []byte, bool) {
		mu.Lock()
		reqs = append(reqs, req)
		mu.Unlock()
		cert := r.ca.Issue(t, "gw-1", pub)
		r.cloud.accept(protocol.CertificateID(cert.Raw))
		p, _ := json.Marshal(protocol.GetAccepted{ClientToken: req.ClientToken, CertificateID: protocol.CertificateID(cert.Raw), CertificatePEM: string(testca.PEM(cert))})
		return "accepted", p, true
	}
	eng, err := New(r.cfg, r.cloud, keys, r.fetch, r.clock, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.eng = eng
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan error, 1)
	go func() { r.done <- eng.Run(ctx) }()
	t.Cleanup(r.stop)
	r.cloud.queueJob("rot-1")
	r.waitFor("generation 1", operational(1))
	mu.Lock()
	defer mu.Unlock()
	return reqs
}

// TestGetCarriesAttestation: with an attestation key the CSR goes with
// TPM2_Certify's output for the staged key, bound to the thing, the job,
// the certificate connected with and the request's clientToken.
func TestGetCarriesAttestation(t *testing.T) {
	r := newRig(t)
	r.cfg.AttestationKey = "tpm:blob=/var/lib/bootcert/ak.tpmkey"
	keys := &certifyingKeys{}
	reqs := rotateWith(t, r, keys)
	if len(reqs) == 0 {
		t.Fatal("no certificate request")
	}
	boot := protocol.CertificateID(r.cfg.Bootstrap[0].Raw)
	for _, req := range reqs {
		a := req.Attestation
		if a == nil {
			t.Fatalf("request without attestation: %+v", req)
		}
		want := attest.RotationBinding("gw-1", "rot-1", boot, req.ClientToken).QualifyingData()
		if !bytes.Equal(a.Attest, want) || string(a.Signature) != "sig" || string(a.Public) != "pub" || string(a.EKCert) != "ek-cert" {
			t.Errorf("attestation %+v, want qualifying data %x", a, want)
		}
	}
	keys.mu.Lock()
	defer keys.mu.Unlock()
	if len(keys.calls) == 0 || keys.calls[0] != r.cfg.OperationalFn(1) || keys.ak != r.cfg.AttestationKey {
		t.Errorf("certified %v with %s, want the staged key %s with the AK", keys.calls, keys.ak, r.cfg.OperationalFn(1))
	}
}

// TestGetWithoutAttestationKey: a key that cannot be attested (a file key,
// no AK) sends the CSR alone.
func TestGetWithoutAttestationKey(t *testing.T) {
	r := newRig(t)
	keys := &certifyingKeys{}
	reqs := rotateWith(t, r, keys)
	for _, req := range reqs {
		if req.Attestation != nil || req.CSR == "" {
			t.Errorf("request %+v: want a CSR without attestation", req)
		}
	}
	if len(keys.calls) != 0 {
		t.Errorf("certify called for a file bootstrap key without an AK: %v", keys.calls)
	}
}
