package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	"github.com/aws/smithy-go"

	"github.com/bootcert/bootcert/cloud/lab/iam"
	"github.com/bootcert/bootcert/cloud/lab/limits"
	"github.com/bootcert/bootcert/cloud/lab/pki"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/internal/clock"
	"github.com/bootcert/bootcert/internal/testenv"
	"github.com/bootcert/bootcert/protocol"
)

type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (p *recorder) Publish(topic string, payload []byte, qos byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, topic+"|"+string(payload)+"|"+string('0'+qos))
	return nil
}

type lab struct {
	dir      string
	pki      *pki.PKI
	reg      *registry.Registry
	srv      *Server
	http     *httptest.Server
	requests atomic.Int64
	pub      *recorder
}

type labOpts struct {
	dir     string
	limiter *limits.Limiter
	creds   *Credentials
	keys    *iam.Keyring
	clock   clock.Clock
	log     *slog.Logger
}

func startLab(t testing.TB, o labOpts) *lab {
	t.Helper()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	p, err := pki.Load(o.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Open(registry.Config{Dir: o.dir, Issuer: p})
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{dir: o.dir, pki: p, reg: reg, pub: &recorder{}}
	l.srv = New(Config{Registry: reg, Limiter: o.limiter, Credentials: o.creds, Principals: o.keys, Publisher: l.pub, Clock: o.clock, Logger: o.log,
		Endpoints: map[string]string{"iot:Data-ATS": "127.0.0.1:8883"}})
	l.http = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.requests.Add(1)
		l.srv.ServeHTTP(w, r)
	}))
	l.http.TLS = p.ServerTLSConfig()
	l.http.StartTLS()
	t.Cleanup(l.http.Close)
	return l
}

// httpClient trusts only DIR/server-ca.pem, as a lab client does.
func (l *lab) httpClient(t testing.TB) *http.Client {
	pemData, err := os.ReadFile(filepath.Join(l.dir, pki.ServerCAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatal("server-ca.pem has no certificate")
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (l *lab) client(t testing.TB, ak, sk string, attempts int) *iot.Client {
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider(ak, sk, ""),
		HTTPClient: l.httpClient(t)}
	return iot.NewFromConfig(cfg, func(o *iot.Options) {
		o.BaseEndpoint = aws.String(l.http.URL)
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = attempts
			so.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
		})
	})
}

var ctx = context.Background()

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func certPEM(t testing.TB, tmpl, parent *x509.Certificate, pub any, signer any) (string, *x509.Certificate) {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), c
}

func leafTmpl(cn string) *x509.Certificate {
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	return &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
}

func mustAs[T error](t *testing.T, err error) {
	t.Helper()
	var target T
	if !errors.As(err, &target) {
		t.Fatalf("error %v (%T) is not a %T", err, err, target)
	}
}

func TestCertificates(t *testing.T) {
	l := startLab(t, labOpts{})
	c := l.client(t, "AKID", "secret", 1)

	code, err := c.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
	if err != nil || len(aws.ToString(code.RegistrationCode)) != 64 {
		t.Fatalf("GetRegistrationCode: %v %v", code, err)
	}
	caKey := newKey(t)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "factory CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caPEM, ca := certPEM(t, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	k := newKey(t)
	wrongPEM, _ := certPEM(t, leafTmpl("not-the-code"), ca, &k.PublicKey, caKey)
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: &caPEM, VerificationCertificate: &wrongPEM})
	mustAs[*types.RegistrationCodeValidationException](t, err)

	verPEM, _ := certPEM(t, leafTmpl(*code.RegistrationCode), ca, &k.PublicKey, caKey)
	reg, err := c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: &caPEM, VerificationCertificate: &verPEM,
		SetAsActive: true, AllowAutoRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := *reg.CertificateId; got != protocol.CertificateID(ca.Raw) {
		t.Fatalf("CA id %s", got)
	}
	_, err = c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: &caPEM, VerificationCertificate: &verPEM})
	mustAs[*types.ResourceAlreadyExistsException](t, err)

	d, err := c.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: reg.CertificateId})
	if err != nil || d.CertificateDescription.Status != types.CACertificateStatusActive ||
		d.CertificateDescription.AutoRegistrationStatus != types.AutoRegistrationStatusEnable || d.CertificateDescription.CreationDate == nil {
		t.Fatalf("DescribeCACertificate: %+v %v", d, err)
	}
	if _, err := c.UpdateCACertificate(ctx, &iot.UpdateCACertificateInput{CertificateId: reg.CertificateId,
		NewAutoRegistrationStatus: types.AutoRegistrationStatusDisable}); err != nil {
		t.Fatal(err)
	}
	d, _ = c.DescribeCACertificate(ctx, &iot.DescribeCACertificateInput{CertificateId: reg.CertificateId})
	if d.CertificateDescription.AutoRegistrationStatus != types.AutoRegistrationStatusDisable {
		t.Fatal("UpdateCACertificate did not disable auto-registration")
	}

	devPEM, dev := certPEM(t, leafTmpl("gw-1"), ca, &k.PublicKey, caKey)
	rc, err := c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: &devPEM, CaCertificatePem: &caPEM, Status: types.CertificateStatusActive})
	if err != nil || *rc.CertificateId != protocol.CertificateID(dev.Raw) {
		t.Fatalf("RegisterCertificate: %v %v", rc, err)
	}
	selfKey := newKey(t)
	selfTmpl := leafTmpl("self")
	selfPEM, _ := certPEM(t, selfTmpl, selfTmpl, &selfKey.PublicKey, selfKey)
	_, err = c.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: &selfPEM})
	mustAs[*types.CertificateValidationException](t, err)
	nc, err := c.RegisterCertificateWithoutCA(ctx, &iot.RegisterCertificateWithoutCAInput{CertificatePem: &selfPEM})
	if err != nil {
		t.Fatal(err)
	}
	nd, err := c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: nc.CertificateId})
	if err != nil || nd.CertificateDescription.CertificateMode != types.CertificateModeSniOnly || nd.CertificateDescription.Status != types.CertificateStatusInactive {
		t.Fatalf("DescribeCertificate: %+v %v", nd, err)
	}

	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "gw-1"}}, k)
	csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
	cc, err := c.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: &csrPEM, SetAsActive: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(*cc.CertificatePem))
	issued, err := x509.ParseCertificate(b.Bytes)
	if err != nil || protocol.CertificateID(b.Bytes) != *cc.CertificateId || issued.CheckSignatureFrom(l.pki.IssuingCA()) != nil {
		t.Fatalf("issued certificate: %v", err)
	}
	if *cc.CertificateArn != "arn:aws:iot:us-east-1:123456789012:cert/"+*cc.CertificateId {
		t.Fatalf("ARN %s", *cc.CertificateArn)
	}
	bad := "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
	_, err = c.CreateCertificateFromCsr(ctx, &iot.CreateCertificateFromCsrInput{CertificateSigningRequest: &bad})
	mustAs[*types.InvalidRequestException](t, err)

	_, err = c.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: cc.CertificateId})
	mustAs[*types.CertificateStateException](t, err)
	if _, err := c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: cc.CertificateId, NewStatus: types.CertificateStatusRevoked}); err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: cc.CertificateId, NewStatus: types.CertificateStatusActive})
	mustAs[*types.CertificateStateException](t, err)
	if _, err := c.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: cc.CertificateId}); err != nil {
		t.Fatal(err)
	}
	_, err = c.DescribeCertificate(ctx, &iot.DescribeCertificateInput{CertificateId: cc.CertificateId})
	mustAs[*types.ResourceNotFoundException](t, err)
}

const policyDoc = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}`

func TestThingsGroupsPolicies(t *testing.T) {
	l := startLab(t, labOpts{})
	c := l.client(t, "AKID", "secret", 1)
	k := newKey(t)
	tmpl := leafTmpl("gw-1")
	p, _ := certPEM(t, tmpl, tmpl, &k.PublicKey, k)
	cert, err := c.RegisterCertificateWithoutCA(ctx, &iot.RegisterCertificateWithoutCAInput{CertificatePem: &p, Status: types.CertificateStatusActive})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateThingType(ctx, &iot.CreateThingTypeInput{ThingTypeName: aws.String("bootcert-gateway"),
		ThingTypeProperties: &types.ThingTypeProperties{ThingTypeDescription: aws.String("gateways")}}); err != nil {
		t.Fatal(err)
	}
	ct, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1"), ThingTypeName: aws.String("bootcert-gateway"),
		AttributePayload: &types.AttributePayload{Attributes: map[string]string{"model": "m1"}}})
	if err != nil || *ct.ThingArn != "arn:aws:iot:us-east-1:123456789012:thing/gw-1" {
		t.Fatalf("CreateThing: %v %v", ct, err)
	}
	_, err = c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")})
	mustAs[*types.ResourceAlreadyExistsException](t, err)
	_, err = c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("bad name!")})
	mustAs[*types.InvalidRequestException](t, err)
	_, err = c.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("nope")})
	mustAs[*types.ResourceNotFoundException](t, err)

	if _, err := c.UpdateThing(ctx, &iot.UpdateThingInput{ThingName: aws.String("gw-1"), ExpectedVersion: aws.Int64(1),
		AttributePayload: &types.AttributePayload{Attributes: map[string]string{"fw": "2"}, Merge: true}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.UpdateThing(ctx, &iot.UpdateThingInput{ThingName: aws.String("gw-1"), ExpectedVersion: aws.Int64(1)})
	mustAs[*types.VersionConflictException](t, err)
	dt, err := c.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")})
	if err != nil || dt.Version != 2 || dt.Attributes["fw"] != "2" || dt.Attributes["model"] != "m1" || *dt.ThingTypeName != "bootcert-gateway" {
		t.Fatalf("DescribeThing: %+v %v", dt, err)
	}

	if _, err := c.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: cert.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	_, err = c.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: aws.String("arn:aws:iot:us-east-1:123456789012:cert/00")})
	mustAs[*types.ResourceNotFoundException](t, err)
	tp, err := c.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("gw-1")})
	if err != nil || len(tp.Principals) != 1 || tp.Principals[0] != *cert.CertificateArn {
		t.Fatalf("ListThingPrincipals: %v %v", tp, err)
	}
	pt, err := c.ListPrincipalThings(ctx, &iot.ListPrincipalThingsInput{Principal: cert.CertificateArn})
	if err != nil || len(pt.Things) != 1 || pt.Things[0] != "gw-1" {
		t.Fatalf("ListPrincipalThings: %v %v", pt, err)
	}

	cp, err := c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("bootcert-bootstrap"), PolicyDocument: aws.String(policyDoc)})
	if err != nil || *cp.PolicyVersionId != "1" {
		t.Fatalf("CreatePolicy: %v %v", cp, err)
	}
	_, err = c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("broken"), PolicyDocument: aws.String("{")})
	mustAs[*types.MalformedPolicyException](t, err)
	gp, err := c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("bootcert-bootstrap")})
	if err != nil || *gp.PolicyDocument != policyDoc {
		t.Fatalf("GetPolicy: %v %v", gp, err)
	}
	if _, err := c.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String("bootcert-bootstrap"), Target: cert.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	ap, err := c.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: cert.CertificateArn})
	if err != nil || len(ap.Policies) != 1 || *ap.Policies[0].PolicyName != "bootcert-bootstrap" {
		t.Fatalf("ListAttachedPolicies: %v %v", ap, err)
	}
	if got := l.reg.EffectivePolicies(*cert.CertificateId, "gw-1"); len(got) != 1 {
		t.Fatalf("EffectivePolicies = %v", got)
	}
	if _, err := c.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String("bootcert-bootstrap"), Target: cert.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	ap, _ = c.ListAttachedPolicies(ctx, &iot.ListAttachedPoliciesInput{Target: cert.CertificateArn})
	if len(ap.Policies) != 0 {
		t.Fatal("policy still attached after DetachPolicy")
	}

	if _, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("bootcert-rotation"),
		ThingGroupProperties: &types.ThingGroupProperties{ThingGroupDescription: aws.String("rotate")}}); err != nil {
		t.Fatal(err)
	}
	dg, err := c.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String("bootcert-rotation")})
	if err != nil || *dg.ThingGroupProperties.ThingGroupDescription != "rotate" || dg.Version != 1 {
		t.Fatalf("DescribeThingGroup: %+v %v", dg, err)
	}
	if _, err := c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("bootcert-rotation"), ThingName: aws.String("gw-1")}); err != nil {
		t.Fatal(err)
	}
	_, err = c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("nope"), ThingName: aws.String("gw-1")})
	mustAs[*types.ResourceNotFoundException](t, err)
	gs, err := c.ListThingGroupsForThing(ctx, &iot.ListThingGroupsForThingInput{ThingName: aws.String("gw-1")})
	if err != nil || len(gs.ThingGroups) != 1 || *gs.ThingGroups[0].GroupName != "bootcert-rotation" {
		t.Fatalf("ListThingGroupsForThing: %v %v", gs, err)
	}
	ts, err := c.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String("bootcert-rotation")})
	if err != nil || len(ts.Things) != 1 || ts.Things[0] != "gw-1" {
		t.Fatalf("ListThingsInThingGroup: %v %v", ts, err)
	}
	if _, err := c.RemoveThingFromThingGroup(ctx, &iot.RemoveThingFromThingGroupInput{ThingGroupArn: dg.ThingGroupArn, ThingArn: ct.ThingArn}); err != nil {
		t.Fatal(err)
	}
	ts, _ = c.ListThingsInThingGroup(ctx, &iot.ListThingsInThingGroupInput{ThingGroupName: aws.String("bootcert-rotation")})
	if len(ts.Things) != 0 {
		t.Fatal("thing still in group")
	}

	_, err = c.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-1")})
	mustAs[*types.InvalidRequestException](t, err) // principal still attached
	if _, err := c.DetachThingPrincipal(ctx, &iot.DetachThingPrincipalInput{ThingName: aws.String("gw-1"), Principal: cert.CertificateArn}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteThing(ctx, &iot.DeleteThingInput{ThingName: aws.String("gw-1"), ExpectedVersion: aws.Int64(2)}); err != nil {
		t.Fatal(err)
	}
	_, err = c.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-1")})
	mustAs[*types.ResourceNotFoundException](t, err)
}

func TestJobsAndPersistence(t *testing.T) {
	dir := t.TempDir()
	l := startLab(t, labOpts{dir: dir})
	c := l.client(t, "AKID", "secret", 1)
	for _, g := range []string{"bootcert-rotation"} {
		if _, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String(g)}); err != nil {
			t.Fatal(err)
		}
	}
	doc := `{"operation":"bootcert.rotate","version":"1"}`
	cj, err := c.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bootcert-rotation"), Document: aws.String(doc),
		TargetSelection: types.TargetSelectionContinuous, Targets: []string{l.reg.ThingGroupARN("bootcert-rotation")}})
	if err != nil || *cj.JobArn != "arn:aws:iot:us-east-1:123456789012:job/bootcert-rotation" {
		t.Fatalf("CreateJob: %v %v", cj, err)
	}
	_, err = c.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("bootcert-rotation"), Document: aws.String(doc), Targets: []string{l.reg.ThingGroupARN("bootcert-rotation")}})
	mustAs[*types.ResourceAlreadyExistsException](t, err)
	_, err = c.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("j2"), Document: aws.String("not json"), Targets: []string{l.reg.ThingGroupARN("bootcert-rotation")}})
	mustAs[*types.InvalidRequestException](t, err)

	for _, th := range []string{"gw-1", "gw-2"} {
		if _, err := c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("bootcert-rotation"), ThingName: aws.String(th)}); err != nil {
			t.Fatal(err)
		}
	}
	de, err := c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String("gw-1")})
	if err != nil || de.Execution.Status != types.JobExecutionStatusQueued || de.Execution.VersionNumber != 1 || aws.ToInt64(de.Execution.ExecutionNumber) != 1 {
		t.Fatalf("DescribeJobExecution: %+v %v", de, err)
	}
	// The device side (the broker's Jobs topics) moves gw-1 forward.
	e, _, ok, err := l.reg.StartNextPendingJobExecution("gw-1", map[string]string{"progress": "started"}, nil)
	if err != nil || !ok {
		t.Fatal(err)
	}
	stale := e.VersionNumber - 1
	_, _, err = l.reg.UpdateJobExecution(registry.UpdateJobExecutionInput{ThingName: "gw-1", JobID: "bootcert-rotation", Status: protocol.JobSucceeded, ExpectedVersion: &stale})
	if name, _ := registry.RESTException(err); name != "VersionConflictException" || registry.JobsCode(err) != "VersionMismatch" {
		t.Fatalf("stale update: %v", err)
	}
	de, _ = c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String("gw-1")})
	if de.Execution.Status != types.JobExecutionStatusInProgress || de.Execution.StatusDetails.DetailsMap["progress"] != "started" {
		t.Fatalf("after start-next: %+v", de.Execution)
	}
	le, err := c.ListJobExecutionsForThing(ctx, &iot.ListJobExecutionsForThingInput{ThingName: aws.String("gw-1")})
	if err != nil || len(le.ExecutionSummaries) != 1 || le.ExecutionSummaries[0].JobExecutionSummary.Status != types.JobExecutionStatusInProgress {
		t.Fatalf("ListJobExecutionsForThing: %+v %v", le, err)
	}
	_, err = c.CancelJobExecution(ctx, &iot.CancelJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String("gw-1")})
	mustAs[*types.InvalidStateTransitionException](t, err)
	if _, err := c.CancelJobExecution(ctx, &iot.CancelJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String("gw-2"),
		ExpectedVersion: aws.Int64(1)}); err != nil {
		t.Fatal(err)
	}
	dj, err := c.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("bootcert-rotation")})
	if err != nil || dj.Job.JobProcessDetails.NumberOfInProgressThings == nil || *dj.Job.JobProcessDetails.NumberOfInProgressThings != 1 ||
		*dj.Job.JobProcessDetails.NumberOfCanceledThings != 1 || dj.Job.TargetSelection != types.TargetSelectionContinuous {
		t.Fatalf("DescribeJob: %+v %v", dj.Job, err)
	}
	ep, err := c.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{EndpointType: aws.String("iot:Data-ATS")})
	if err != nil || *ep.EndpointAddress != "127.0.0.1:8883" {
		t.Fatalf("DescribeEndpoint: %v %v", ep, err)
	}

	// Restart: a new registry and server from the same directory.
	l.http.Close()
	l2 := startLab(t, labOpts{dir: dir})
	c2 := l2.client(t, "AKID", "secret", 1)
	de, err = c2.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String("gw-1")})
	if err != nil || de.Execution.Status != types.JobExecutionStatusInProgress {
		t.Fatalf("after restart: %+v %v", de, err)
	}
	if _, err := c2.DescribeThingGroup(ctx, &iot.DescribeThingGroupInput{ThingGroupName: aws.String("bootcert-rotation")}); err != nil {
		t.Fatal(err)
	}
	// A thing joining after the restart still gets the continuous job.
	if _, err := c2.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-3")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("bootcert-rotation"), ThingName: aws.String("gw-3")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("bootcert-rotation"), ThingName: aws.String("gw-3")}); err != nil {
		t.Fatal(err)
	}
}

func TestThrottling(t *testing.T) {
	clk := clock.NewFake(time.Now()) // frozen: no tokens come back
	lim := limits.NewLimiter(limits.Limits{API: map[string]float64{"DescribeEndpoint": 1}}, clk)
	l := startLab(t, labOpts{limiter: lim})
	c := l.client(t, "AKID", "secret", 3)
	if _, err := c.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{}); err != nil {
		t.Fatal(err)
	}
	before := l.requests.Load()
	_, err := c.DescribeEndpoint(ctx, &iot.DescribeEndpointInput{})
	mustAs[*types.ThrottlingException](t, err)
	if n := l.requests.Load() - before; n != 3 {
		t.Fatalf("the SDK sent %d attempts, want 3 (its retryer retries ThrottlingException)", n)
	}
	// Other operations are not limited.
	if _, err := c.GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{}); err != nil {
		t.Fatal(err)
	}
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func TestCredentials(t *testing.T) {
	creds := &Credentials{AccessKeyID: "AKIALAB", SecretAccessKey: "lab-secret"}
	l := startLab(t, labOpts{creds: creds})
	for _, tc := range []struct {
		name, ak, sk, code string
	}{
		{"ok/right-secret", "AKIALAB", "lab-secret", ""},
		{"fail/bad-secret", "AKIALAB", "wrong", "InvalidSignatureException"},
		{"fail/unknown-key", "AKIAOTHER", "lab-secret", "UnrecognizedClientException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := l.client(t, tc.ak, tc.sk, 1)
			_, err := c.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String("a:b_c-d")})
			if tc.code == "" {
				mustAs[*types.ResourceNotFoundException](t, err) // authenticated, then not found
				return
			}
			if got := apiCode(err); got != tc.code {
				t.Fatalf("error %v, code %q, want %q", err, got, tc.code)
			}
			if strings.Contains(err.Error(), "lab-secret") {
				t.Fatal("secret in error")
			}
		})
	}
	t.Run("fail/expired", func(t *testing.T) {
		// The lab's clock is 20 minutes ahead of the client's.
		l2 := startLab(t, labOpts{creds: creds, clock: clock.NewFake(time.Now().Add(20 * time.Minute))})
		_, err := l2.client(t, "AKIALAB", "lab-secret", 1).GetRegistrationCode(ctx, &iot.GetRegistrationCodeInput{})
		if got := apiCode(err); got != "InvalidSignatureException" || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("error %v, code %q", err, got)
		}
	})
	t.Run("fail/unsigned", func(t *testing.T) {
		resp, err := l.httpClient(t).Get(l.http.URL + "/things/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.Header.Get("X-Amzn-ErrorType") != "MissingAuthenticationTokenException" {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"))
		}
	})
	t.Run("ok/lab-routes-unsigned", func(t *testing.T) {
		resp, err := l.httpClient(t).Get(l.http.URL + "/lab/state")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st map[string]json.RawMessage
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st["registry"] == nil {
			t.Fatalf("GET /lab/state: %v %v", st, err)
		}
	})
}

func TestCurlSigV4(t *testing.T) {
	curl := testenv.Require(t, "curl")[0]
	creds := &Credentials{AccessKeyID: "AKIALAB", SecretAccessKey: "lab-secret"}
	l := startLab(t, labOpts{creds: creds})
	if _, err := l.reg.CreateThing("x", "", nil); err != nil {
		t.Fatal(err)
	}
	run := func(user string) (string, error) {
		out, err := exec.Command(curl, "-sS", "--fail-with-body", "--aws-sigv4", "aws:amz:us-east-1:iot", "--user", user,
			"--cacert", filepath.Join(l.dir, pki.ServerCAFile), l.http.URL+"/things/x").CombinedOutput()
		return string(out), err
	}
	out, err := run("AKIALAB:lab-secret")
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	var thing struct{ ThingName, ThingArn string }
	if err := json.Unmarshal([]byte(out), &thing); err != nil || thing.ThingName != "x" {
		t.Fatalf("curl output %q: %v", out, err)
	}
	if out, err := run("AKIALAB:wrong"); err == nil || !strings.Contains(out, "signature") {
		t.Fatalf("curl with a bad secret: %v %s", err, out)
	}
}

func TestPublishAndState(t *testing.T) {
	l := startLab(t, labOpts{creds: &Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"}})
	l.srv.AddStateSection("broker", func() any { return map[string]int{"sessions": 2} })
	body := `{"hello":1}`
	req, _ := http.NewRequest("POST", l.http.URL+"/topics/certificates%2Fgw-1%2Fget%2Faccepted?qos=1", strings.NewReader(body))
	sum := sha256hex(body)
	if err := v4.NewSigner().SignHTTP(ctx, aws.Credentials{AccessKeyID: "AK", SecretAccessKey: "SK"}, req, sum, "iotdata", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := l.httpClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("publish: %d %s", resp.StatusCode, msg)
	}
	if len(l.pub.msgs) != 1 || l.pub.msgs[0] != "certificates/gw-1/get/accepted|"+body+"|1" {
		t.Fatalf("published %q", l.pub.msgs)
	}
	resp, err = l.httpClient(t).Get(l.http.URL + "/lab/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Broker   map[string]int    `json:"broker"`
		Registry registry.Snapshot `json:"registry"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.Broker["sessions"] != 2 || st.Registry.AccountID != "123456789012" {
		t.Fatalf("state: %+v %v", st, err)
	}
	if _, err := l.reg.RegisterCertificateWithoutCA(selfSignedPEM(t), ""); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"", "?pem=false"} {
		resp, err := l.httpClient(t).Get(l.http.URL + "/lab/state" + q)
		if err != nil {
			t.Fatal(err)
		}
		var st struct{ Registry registry.Snapshot }
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || len(st.Registry.Certificates) != 1 || (st.Registry.Certificates[0].PEM == "") != (q != "") {
			t.Fatalf("state%s: %+v %v", q, st.Registry.Certificates, err)
		}
	}
}

// TestMoreOperations covers the operations other parts of bootcert call
// besides the list in the issue: policy versions (the e2e tests deny by a
// new default version), ListThings (renewal), ListCACertificates,
// GetJobDocument, event configurations (cloud setup).
func TestMoreOperations(t *testing.T) {
	l := startLab(t, labOpts{})
	c := l.client(t, "AKID", "secret", 1)
	if _, err := c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(policyDoc)}); err != nil {
		t.Fatal(err)
	}
	deny := strings.Replace(policyDoc, "Allow", "Deny", 1)
	v, err := c.CreatePolicyVersion(ctx, &iot.CreatePolicyVersionInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(deny), SetAsDefault: true})
	if err != nil || *v.PolicyVersionId != "2" || !v.IsDefaultVersion {
		t.Fatalf("CreatePolicyVersion: %+v %v", v, err)
	}
	gp, _ := c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("p")})
	if *gp.PolicyDocument != deny || *gp.DefaultVersionId != "2" {
		t.Fatalf("default version not applied: %+v", gp)
	}
	for range 3 {
		if _, err := c.CreatePolicyVersion(ctx, &iot.CreatePolicyVersionInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(policyDoc)}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.CreatePolicyVersion(ctx, &iot.CreatePolicyVersionInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(policyDoc)})
	mustAs[*types.VersionsLimitExceededException](t, err)
	if _, err := c.SetDefaultPolicyVersion(ctx, &iot.SetDefaultPolicyVersionInput{PolicyName: aws.String("p"), PolicyVersionId: aws.String("1")}); err != nil {
		t.Fatal(err)
	}
	gp, _ = c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("p")})
	if *gp.PolicyDocument != policyDoc {
		t.Fatal("SetDefaultPolicyVersion did not restore version 1")
	}

	if _, err := c.CreateThingType(ctx, &iot.CreateThingTypeInput{ThingTypeName: aws.String("gw")}); err != nil {
		t.Fatal(err)
	}
	for i, tt := range []string{"gw", "", "gw"} {
		in := &iot.CreateThingInput{ThingName: aws.String(fmt.Sprintf("t-%d", i))}
		if tt != "" {
			in.ThingTypeName = aws.String(tt)
		}
		if _, err := c.CreateThing(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	pager := iot.NewListThingsPaginator(c, &iot.ListThingsInput{ThingTypeName: aws.String("gw"), MaxResults: aws.Int32(1)})
	for pager.HasMorePages() {
		pg, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, th := range pg.Things {
			names = append(names, *th.ThingName)
		}
	}
	if strings.Join(names, ",") != "t-0,t-2" {
		t.Fatalf("ListThings by type, paged: %v", names)
	}

	dtt, err := c.DescribeThingType(ctx, &iot.DescribeThingTypeInput{ThingTypeName: aws.String("gw")})
	if err != nil || *dtt.ThingTypeArn != "arn:aws:iot:us-east-1:123456789012:thingtype/gw" {
		t.Fatalf("DescribeThingType: %+v %v", dtt, err)
	}

	caKey := newKey(t)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "sni CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caPEM, _ := certPEM(t, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	rc, err := c.RegisterCACertificate(ctx, &iot.RegisterCACertificateInput{CaCertificate: &caPEM, CertificateMode: types.CertificateModeSniOnly, SetAsActive: true})
	if err != nil {
		t.Fatal(err)
	}
	cas, err := c.ListCACertificates(ctx, &iot.ListCACertificatesInput{})
	if err != nil || len(cas.Certificates) != 1 || *cas.Certificates[0].CertificateId != *rc.CertificateId {
		t.Fatalf("ListCACertificates: %+v %v", cas, err)
	}
	_, err = c.DeleteCACertificate(ctx, &iot.DeleteCACertificateInput{CertificateId: rc.CertificateId})
	mustAs[*types.CertificateStateException](t, err)
	if _, err := c.UpdateCACertificate(ctx, &iot.UpdateCACertificateInput{CertificateId: rc.CertificateId, NewStatus: types.CACertificateStatusInactive}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteCACertificate(ctx, &iot.DeleteCACertificateInput{CertificateId: rc.CertificateId}); err != nil {
		t.Fatal(err)
	}

	if _, err := c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("g")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("j"), Document: aws.String(`{"a":1}`), Targets: []string{l.reg.ThingGroupARN("g")}}); err != nil {
		t.Fatal(err)
	}
	jd, err := c.GetJobDocument(ctx, &iot.GetJobDocumentInput{JobId: aws.String("j")})
	if err != nil || *jd.Document != `{"a":1}` {
		t.Fatalf("GetJobDocument: %v %v", jd, err)
	}

	ev, err := c.DescribeEventConfigurations(ctx, &iot.DescribeEventConfigurationsInput{})
	if err != nil || ev.EventConfigurations["JOB_EXECUTION"].Enabled {
		t.Fatalf("events before: %+v %v", ev, err)
	}
	if _, err := c.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"JOB_EXECUTION": {Enabled: true}}}); err != nil {
		t.Fatal(err)
	}
	if !l.reg.EventEnabled("JOB_EXECUTION") || l.reg.EventEnabled("THING") {
		t.Fatal("event configuration not stored")
	}
	_, err = c.UpdateEventConfigurations(ctx, &iot.UpdateEventConfigurationsInput{EventConfigurations: map[string]types.Configuration{"NOPE": {Enabled: true}}})
	mustAs[*types.InvalidRequestException](t, err)
}

// TestAdminOperations covers listing and deleting (operators' tools).
func TestAdminOperations(t *testing.T) {
	l := startLab(t, labOpts{})
	c := l.client(t, "AKID", "secret", 1)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("parent")}))
	must(c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("child"), ParentGroupName: aws.String("parent")}))
	must(c.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-1")}))
	must(c.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String("child"), ThingName: aws.String("gw-1")}))
	must(c.CreateJob(ctx, &iot.CreateJobInput{JobId: aws.String("rot"), Document: aws.String(`{}`), TargetSelection: types.TargetSelectionContinuous,
		Targets: []string{l.reg.ThingGroupARN("parent")}}))

	lg, err := c.ListThingGroups(ctx, &iot.ListThingGroupsInput{ParentGroup: aws.String("parent")})
	if err != nil || len(lg.ThingGroups) != 1 || *lg.ThingGroups[0].GroupName != "child" {
		t.Fatalf("ListThingGroups: %+v %v", lg, err)
	}
	_, err = c.DeleteThingGroup(ctx, &iot.DeleteThingGroupInput{ThingGroupName: aws.String("parent")})
	mustAs[*types.InvalidRequestException](t, err) // has a child
	must(c.DeleteThingGroup(ctx, &iot.DeleteThingGroupInput{ThingGroupName: aws.String("child")}))
	de, _ := c.DescribeJobExecution(ctx, &iot.DescribeJobExecutionInput{JobId: aws.String("rot"), ThingName: aws.String("gw-1")})
	if de.Execution.Status != types.JobExecutionStatusRemoved {
		t.Fatalf("execution after its group was deleted: %s", de.Execution.Status)
	}

	lj, err := c.ListJobs(ctx, &iot.ListJobsInput{TargetSelection: types.TargetSelectionContinuous})
	if err != nil || len(lj.Jobs) != 1 || *lj.Jobs[0].JobId != "rot" {
		t.Fatalf("ListJobs: %+v %v", lj, err)
	}
	must(c.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("rot"), Comment: aws.String("stop")}))
	_, err = c.CancelJob(ctx, &iot.CancelJobInput{JobId: aws.String("rot")})
	mustAs[*types.InvalidRequestException](t, err) // already canceled
	dj, _ := c.DescribeJob(ctx, &iot.DescribeJobInput{JobId: aws.String("rot")})
	if dj.Job.Status != types.JobStatusCanceled {
		t.Fatalf("job after CancelJob: %s", dj.Job.Status)
	}

	k := newKey(t)
	for _, cn := range []string{"a", "b"} {
		tmpl := leafTmpl(cn)
		p, _ := certPEM(t, tmpl, tmpl, &k.PublicKey, k)
		must(c.RegisterCertificateWithoutCA(ctx, &iot.RegisterCertificateWithoutCAInput{CertificatePem: &p}))
	}
	lc, err := c.ListCertificates(ctx, &iot.ListCertificatesInput{PageSize: aws.Int32(1)})
	if err != nil || len(lc.Certificates) != 1 || lc.NextMarker == nil {
		t.Fatalf("ListCertificates page 1: %+v %v", lc, err)
	}
	lc2, err := c.ListCertificates(ctx, &iot.ListCertificatesInput{PageSize: aws.Int32(1), Marker: lc.NextMarker})
	if err != nil || len(lc2.Certificates) != 1 || lc2.NextMarker != nil || *lc2.Certificates[0].CertificateId == *lc.Certificates[0].CertificateId {
		t.Fatalf("ListCertificates page 2: %+v %v", lc2, err)
	}
	byCA, err := c.ListCertificatesByCA(ctx, &iot.ListCertificatesByCAInput{CaCertificateId: aws.String("00")})
	if err != nil || len(byCA.Certificates) != 0 {
		t.Fatalf("ListCertificatesByCA of an unknown CA: %+v %v", byCA, err)
	}
	_, err = c.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String("orphan"), ParentGroupName: aws.String("nope")})
	mustAs[*types.InvalidRequestException](t, err)

	must(c.CreatePolicy(ctx, &iot.CreatePolicyInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(policyDoc)}))
	must(c.CreatePolicyVersion(ctx, &iot.CreatePolicyVersionInput{PolicyName: aws.String("p"), PolicyDocument: aws.String(policyDoc)}))
	lv, err := c.ListPolicyVersions(ctx, &iot.ListPolicyVersionsInput{PolicyName: aws.String("p")})
	if err != nil || len(lv.PolicyVersions) != 2 || !lv.PolicyVersions[0].IsDefaultVersion {
		t.Fatalf("ListPolicyVersions: %+v %v", lv, err)
	}
	_, err = c.DeletePolicy(ctx, &iot.DeletePolicyInput{PolicyName: aws.String("p")})
	mustAs[*types.DeleteConflictException](t, err) // two versions
	_, err = c.DeletePolicyVersion(ctx, &iot.DeletePolicyVersionInput{PolicyName: aws.String("p"), PolicyVersionId: aws.String("1")})
	mustAs[*types.DeleteConflictException](t, err) // the default
	must(c.DeletePolicyVersion(ctx, &iot.DeletePolicyVersionInput{PolicyName: aws.String("p"), PolicyVersionId: aws.String("2")}))
	lp, err := c.ListPolicies(ctx, &iot.ListPoliciesInput{})
	if err != nil || len(lp.Policies) != 1 {
		t.Fatalf("ListPolicies: %+v %v", lp, err)
	}
	must(c.DeletePolicy(ctx, &iot.DeletePolicyInput{PolicyName: aws.String("p")}))
	_, err = c.GetPolicy(ctx, &iot.GetPolicyInput{PolicyName: aws.String("p")})
	mustAs[*types.ResourceNotFoundException](t, err)
}

func selfSignedPEM(t testing.TB) string {
	k := newKey(t)
	tmpl := leafTmpl("self")
	p, _ := certPEM(t, tmpl, tmpl, &k.PublicKey, k)
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLogs: every request is logged with operation, resource and outcome;
// no signature or secret appears.
func TestLogs(t *testing.T) {
	var buf syncBuffer
	l := startLab(t, labOpts{creds: &Credentials{AccessKeyID: "AKIALAB", SecretAccessKey: "lab-secret"}, log: slog.New(slog.NewJSONHandler(&buf, nil))})
	if _, err := l.client(t, "AKIALAB", "lab-secret", 1).CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String("gw-9")}); err != nil {
		t.Fatal(err)
	}
	_, _ = l.client(t, "AKIALAB", "wrong-secret", 1).DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-9")})
	logs := buf.String()
	for _, want := range []string{`"op":"CreateThing","resource":"gw-9","outcome":"ok"`, `"op":"DescribeThing"`, `"outcome":"InvalidSignatureException"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	for _, secret := range []string{"lab-secret", "wrong-secret", "Signature="} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q", secret)
		}
	}
}
