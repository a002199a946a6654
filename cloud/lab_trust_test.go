package cloud_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/manifest"
)

// setupCA runs `bootcert-admin cloud setup` for one factory CA with its CRL
// (made at crlAt, nextUpdate 30 days later).
func (r *labRig) setupCA(ca *testpki.CA, entries []manifest.Entry, crlAt time.Time, revoked ...*testpki.Device) (setup.Result, error) {
	var certs []*x509.Certificate
	for _, d := range revoked {
		certs = append(certs, d.Cert)
	}
	return setup.Run(context.Background(), r.iot, r.s3, setup.Options{Bucket: bucket, CACert: ca.Cert, CASigner: ca.Key,
		AllowList: testpki.AllowList(r.t, entries...), CRL: ca.CRL(r.t, crlAt, certs...)})
}

// TestLabTwoFactoryCAs: two contract manufacturers' CAs are trusted at once,
// each with its own CRL; uploading one CA's CRL keeps the other's.
func TestLabTwoFactoryCAs(t *testing.T) {
	r := startLab(t, nil, "")
	now := time.Now()
	caA, caB := r.ca, testpki.NewCA(t, "contract manufacturer B", now)
	a1, a2 := caA.Issue(t, "gw-a1", now), caA.Issue(t, "gw-a2", now)
	b1, b2 := caB.Issue(t, "gw-b1", now), caB.Issue(t, "gw-b2", now)
	entries := []manifest.Entry{{DeviceID: a1.ID}, {DeviceID: a2.ID}, {DeviceID: b1.ID}, {DeviceID: b2.ID}}
	if _, err := r.setupCA(caA, entries, now, a2); err != nil {
		t.Fatalf("setup CA A: %v", err)
	}
	if _, err := r.setupCA(caB, entries, now, b2); err != nil {
		t.Fatalf("setup CA B: %v", err)
	}
	if n := len(r.bundle(t)); n != 2 {
		t.Fatalf("%d CAs in the trusted bundle, want 2", n)
	}
	for _, tc := range []struct {
		d    *testpki.Device
		want string
	}{{a1, "ACTIVE"}, {b1, "ACTIVE"}, {a2, "REVOKED"}, {b2, "REVOKED"}} {
		if st := r.jitr(tc.d); st != tc.want {
			t.Errorf("%s: %s, want %s (A's CRL must survive B's upload)", tc.d.ID, st, tc.want)
		}
	}
}

// TestLabCARollover: the new CA is added while the old one is still
// trusted (devices of both are admitted), then the old one is retired: AWS
// IoT's CA is INACTIVE with auto-registration off and the functions no
// longer trust it, so a new device of the old CA is not admitted; the
// last CA cannot be retired.
func TestLabCARollover(t *testing.T) {
	r := startLab(t, nil, "")
	now := time.Now()
	oldCA, newCA := r.ca, testpki.NewCA(t, "bootcert factory CA", now) // same name, new key
	o1, o2 := oldCA.Issue(t, "gw-old-1", now), oldCA.Issue(t, "gw-old-2", now)
	n1 := newCA.Issue(t, "gw-new-1", now)
	entries := []manifest.Entry{{DeviceID: o1.ID}, {DeviceID: o2.ID}, {DeviceID: n1.ID}}
	if _, err := r.setupCA(oldCA, entries, now); err != nil {
		t.Fatal(err)
	}
	if st := r.jitr(o1); st != "ACTIVE" {
		t.Fatalf("old-CA device before the rollover: %s", st)
	}
	if _, err := r.setupCA(newCA, entries, now); err != nil {
		t.Fatalf("adding the new CA: %v", err)
	}
	if st := r.jitr(n1); st != "ACTIVE" {
		t.Fatalf("new-CA device during the rollover: %s", st)
	}
	res, err := setup.RetireCA(context.Background(), r.iot, r.s3, bucket, oldCA.Cert)
	if err != nil || !res.Deactivated || res.RemainingCAs != 1 {
		t.Fatalf("RetireCA: %+v %v", res, err)
	}
	if b := r.bundle(t); len(b) != 1 || !b[0].Equal(newCA.Cert) {
		t.Fatalf("bundle after retiring: %d CAs", len(b))
	}
	// A device of the retired CA is refused at the broker (its CA is
	// INACTIVE, no auto-registration): never registered, never admitted.
	if c, err := r.connect(o2.DER, o2.Key, o2.ID); err == nil {
		c.c.Disconnect(0)
		t.Fatal("device of the retired CA connected")
	}
	if st := r.certStatus(o2.CertID); st != "" {
		t.Errorf("device of the retired CA registered: %s", st)
	}
	if _, err := setup.RetireCA(context.Background(), r.iot, r.s3, bucket, newCA.Cert); err == nil || !strings.Contains(err.Error(), "last") {
		t.Errorf("retiring the last CA: %v", err)
	}
}

// TestLabExpiredCRL: setup refuses a CRL past its nextUpdate; a CRL that
// expired in the bucket (past nextUpdate + CRL_GRACE) makes the activator
// fail closed with a clear error: the device stays PENDING_ACTIVATION, not
// admitted and not revoked.
func TestLabExpiredCRL(t *testing.T) {
	r, logs := startLabLogged(t, map[string]string{"CRL_GRACE": "24h"})
	now := time.Now()
	d := r.ca.Issue(t, "gw-crl", now)
	entries := []manifest.Entry{{DeviceID: d.ID}}
	_, err := r.setupCA(r.ca, entries, now.Add(-31*24*time.Hour))
	if !errors.Is(err, fleet.ErrCRLExpired) || !strings.Contains(err.Error(), "nextUpdate") {
		t.Fatalf("setup with an expired CRL: %v", err)
	}
	if _, err := r.setupCA(r.ca, entries, now); err != nil {
		t.Fatal(err)
	}
	// The stored CRL ages: 30 days + 2 days past its thisUpdate (grace 1 day).
	stale := r.ca.CRL(t, now.Add(-32*24*time.Hour))
	if _, err := r.s3.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(fleet.DefaultCRLKey), Body: bytes.NewReader(stale)}); err != nil {
		t.Fatal(err)
	}
	if c, err := r.connect(d.DER, d.Key, d.ID); err == nil {
		c.c.Disconnect(0)
		t.Fatal("first connect accepted")
	}
	waitFor(t, "the activator's refusal", func() bool { return strings.Contains(logs.String(), "factory CRL expired") })
	if st := r.certStatus(d.CertID); st != "PENDING_ACTIVATION" {
		t.Errorf("bootstrap certificate %s with an expired CRL, want PENDING_ACTIVATION (neither admitted nor revoked)", st)
	}
	if !strings.Contains(logs.String(), "upload a fresh CRL") {
		t.Errorf("the error does not say what to do:\n%s", grepLines(logs.String(), "CRL"))
	}
}

// bundle reads the trusted CA bundle from the bucket.
func (r *labRig) bundle(t *testing.T) []*x509.Certificate {
	t.Helper()
	out, err := r.s3.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(fleet.DefaultCAKey)})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(out.Body)
	cas, err := fleet.ParseCABundle(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return cas
}
