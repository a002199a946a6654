package tpm

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"strconv"
	"testing"

	"github.com/bootcert/bootcert/keystore"
)

// Benchmarks print latency per backend device (swtpm over TCP, the
// in-process simulator when built with cgo) and TPM commands per operation
// (tpmcmds/op, counted by Counter). Run: make bench, or
//
//	go test -run '^$' -bench . ./keystore/tpm/

type benchDev struct {
	name, device string
	counter      *Counter
}

func benchDevices(b *testing.B) []benchDev {
	sw := startTPM(b)
	devs := []benchDev{{name: "swtpm", device: sw.Device()}}
	if haveSim {
		devs = append(devs, benchDev{name: "sim", device: "sim"})
		b.Cleanup(func() { CloseDevice("sim") })
	}
	for i := range devs {
		devs[i].counter = NewCounter()
		if err := OpenDevice(devs[i].device, devs[i].counter.Wrap); err != nil {
			b.Fatal(err)
		}
	}
	return devs
}

func reportCmds(b *testing.B, c *Counter) {
	b.ReportMetric(float64(c.Total())/float64(b.N), "tpmcmds/op")
}

func benchAlgs(dev string) []keystore.Algorithm {
	if dev == "sim" { // the reference simulator has no RSA-3072
		return []keystore.Algorithm{keystore.ECDSAP256, keystore.ECDSAP384, keystore.RSA2048}
	}
	return keystore.Algorithms
}

// BenchmarkKeygen: Generate of a key file (TPM2_Create under the persisted
// SRK, then TPM2_Load so the signer is ready), steady state: the SRK exists.
func BenchmarkKeygen(b *testing.B) {
	for _, dev := range benchDevices(b) {
		for _, alg := range benchAlgs(dev.name) {
			b.Run(dev.name+"/"+string(alg), func(b *testing.B) {
				be := &Backend{}
				dir := b.TempDir()
				// warm up: SRK created or checked once per process
				w, err := be.Generate(context.Background(), mustURI(b, blobURI(dev.device, dir, "warm")), keystore.ECDSAP256)
				if err != nil {
					b.Fatal(err)
				}
				w.(*Signer).Close()
				dev.counter.Reset()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					s, err := be.Generate(context.Background(), mustURI(b, blobURI(dev.device, dir, strconv.Itoa(i))), alg)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					s.(*Signer).Close()
					dev.counter.Reset()
					b.StartTimer()
				}
				b.StopTimer()
				// Close's FlushContext is not part of keygen: count one
				// Generate alone.
				s, err := be.Generate(context.Background(), mustURI(b, blobURI(dev.device, dir, "count")), alg)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(dev.counter.Total()), "tpmcmds/op")
				s.(*Signer).Close()
			})
		}
	}
}

// BenchmarkSign: Sign with a loaded key (SHA-256 digest; PKCS #1 v1.5 for RSA).
func BenchmarkSign(b *testing.B) {
	for _, dev := range benchDevices(b) {
		for _, alg := range benchAlgs(dev.name) {
			b.Run(dev.name+"/"+string(alg), func(b *testing.B) {
				s := benchKey(b, dev, alg)
				d := sha256.Sum256([]byte("bench"))
				if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil { // swtpm's first TPM_RC_RETRY
					b.Fatal(err)
				}
				dev.counter.Reset()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				reportCmds(b, dev.counter)
			})
		}
	}
}

// BenchmarkCSR: x509.CreateCertificateRequest with a loaded TPM key, as the
// daemon does for each rotation.
func BenchmarkCSR(b *testing.B) {
	for _, dev := range benchDevices(b) {
		for _, alg := range []keystore.Algorithm{keystore.ECDSAP256, keystore.RSA2048} {
			b.Run(dev.name+"/"+string(alg), func(b *testing.B) {
				s := benchKey(b, dev, alg)
				tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gw-0001"}}
				if _, err := x509.CreateCertificateRequest(rand.Reader, tmpl, s); err != nil {
					b.Fatal(err)
				}
				dev.counter.Reset()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := x509.CreateCertificateRequest(rand.Reader, tmpl, s); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				reportCmds(b, dev.counter)
			})
		}
	}
}

// BenchmarkOpen: Open (TPM2_Load of the key file) and Close (FlushContext),
// the cost paid once per process per key.
func BenchmarkOpen(b *testing.B) {
	for _, dev := range benchDevices(b) {
		b.Run(dev.name+"/"+string(keystore.ECDSAP256), func(b *testing.B) {
			s := benchKey(b, dev, keystore.ECDSAP256)
			s.Close()
			u := mustURI(b, s.spec.uri.Raw())
			be := &Backend{}
			dev.counter.Reset()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				o, err := be.Open(context.Background(), u)
				if err != nil {
					b.Fatal(err)
				}
				o.(*Signer).Close()
			}
			b.StopTimer()
			reportCmds(b, dev.counter)
		})
	}
}

func benchKey(b *testing.B, dev benchDev, alg keystore.Algorithm) *Signer {
	b.Helper()
	s, err := (&Backend{}).Generate(context.Background(), mustURI(b, blobURI(dev.device, b.TempDir(), "k")), alg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.(*Signer).Close() })
	return s.(*Signer)
}

// BenchmarkAttestRotation: what key attestation adds to a rotation on the
// device: TPM2_Certify of the staged key under the AK (both key files:
// Load, Load, Certify, FlushContext x2) and the EK certificate read from NV
// (NV_ReadPublic, NV_Read). The simulator has no EK certificate, so its
// figure is Certify alone.
func BenchmarkAttestRotation(b *testing.B) {
	for _, dev := range benchDevices(b) {
		b.Run(dev.name, func(b *testing.B) {
			be := &Backend{}
			ctx := context.Background()
			dir := b.TempDir()
			key := mustURI(b, blobURI(dev.device, dir, "key"))
			s, err := be.Generate(ctx, key, keystore.ECDSAP256)
			if err != nil {
				b.Fatal(err)
			}
			s.(*Signer).Close()
			ak := mustURI(b, blobURI(dev.device, dir, "ak"))
			if _, err := be.CreateAK(ctx, ak); err != nil {
				b.Fatal(err)
			}
			qd := sha256.Sum256([]byte("rotation"))
			dev.counter.Reset()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := be.Certify(ctx, key, ak, qd[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := be.EKCertificate(ctx, key); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportCmds(b, dev.counter)
		})
	}
}
