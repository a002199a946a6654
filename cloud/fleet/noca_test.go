package fleet_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/fleet"
	"github.com/bootcert/bootcert/cloud/internal/fake"
	"github.com/bootcert/bootcert/cloud/internal/testpki"
	"github.com/bootcert/bootcert/cloud/ports"
)

// errStore answers every Get with err (S3's 403 AccessDenied to a role
// without s3:ListBucket, a timeout, ...).
type errStore struct{ err error }

func (s errStore) Get(context.Context, string, string) (ports.Object, error) {
	return ports.Object{}, s.err
}

// TestNoFactoryCA: a claim-only fleet has no CA object. That is no factory
// CA trusted: an AWS-issued (or any) certificate is revoked by nothing,
// a factory certificate's JITR check fails closed (ErrUntrusted), and a
// read error that is not "missing" stays an error.
func TestNoFactoryCA(t *testing.T) {
	ctx := context.Background()
	st := fake.NewStore()
	s, _ := fleet.FromEnv(func(k string) string { return map[string]string{"BUCKET": "b"}[k] })
	tr := &fleet.Trust{Store: st, Settings: s}
	ca := testpki.NewCA(t, "factory", now)
	d := ca.Issue(t, "gw-1", now)
	// A CRL object left behind revokes nothing without its CA.
	st.Put(ctx, s.CRLKey, ca.CRL(t, now, d.Cert), nil)

	if cas, err := tr.CAs(ctx); err != nil || len(cas) != 0 {
		t.Fatalf("ok/no-ca-object: CAs %v %v, want none and no error", cas, err)
	}
	if rv, err := tr.Revoked(ctx, d.Cert); err != nil || rv {
		t.Fatalf("ok/nothing-revoked: %v %v", rv, err)
	}
	err := tr.VerifyBootstrap(ctx, d.Cert, now)
	if !errors.Is(err, fleet.ErrUntrusted) || !strings.Contains(err.Error(), "no factory CA is trusted") {
		t.Fatalf("fail/jitr-without-ca: %v, want ErrUntrusted naming the missing CA object", err)
	}

	// The CA uploaded later is picked up; removed again, trust ends (no
	// stale cache).
	st.Put(ctx, s.CAKey, ca.PEM, nil)
	if err := tr.VerifyBootstrap(ctx, d.Cert, now); err != nil {
		t.Fatalf("ok/ca-added: %v", err)
	}
	if rv, err := tr.Revoked(ctx, d.Cert); err != nil || !rv {
		t.Fatalf("ok/ca-added-crl-applies: %v %v", rv, err)
	}
	st.Delete(ctx, s.CAKey)
	if err := tr.VerifyBootstrap(ctx, d.Cert, now); !errors.Is(err, fleet.ErrUntrusted) {
		t.Fatalf("fail/ca-removed: %v", err)
	}

	// Access denied is not "missing": fail closed with the error.
	denied := &fleet.Trust{Store: errStore{errors.New("api error AccessDenied: Access Denied")}, Settings: s}
	if _, err := denied.Revoked(ctx, d.Cert); err == nil {
		t.Fatal("fail/access-denied: Revoked answered without reading the CA object")
	}
	if _, err := denied.CAs(ctx); err == nil {
		t.Fatal("fail/access-denied: CAs answered")
	}
}
