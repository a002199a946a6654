package compat_test

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
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

// identityResult is what jsclient/identity.js prints.
type identityResult struct {
	SDKVersion            string                     `json:"sdkVersion"`
	Fatal                 string                     `json:"fatal"`
	Steps                 map[string]jsStep          `json:"steps"`
	ShapeErrors           []string                   `json:"shapeErrors"`
	Rejections            map[string]json.RawMessage `json:"rejections"`
	RefusedCertificateIDs map[string]string          `json:"refusedCertificateIds"`
}

var ownershipToken = regexp.MustCompile(`"certificateOwnershipToken":"[^"]*"`)

// provisioningRejection is AWS's fleet provisioning error response as the
// SDK parsed it (model.ErrorResponse / V2ErrorResponse), or what the script
// got instead.
type provisioningRejection struct {
	StatusCode   int             `json:"statusCode"`
	ErrorCode    string          `json:"errorCode"`
	ErrorMessage string          `json:"errorMessage"`
	ClientError  string          `json:"clientError"`
	Accepted     json.RawMessage `json:"accepted"`
}

func newCSR(t *testing.T, cn string) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// TestJavaScriptIdentitySDK runs fleet provisioning by claim with the
// official AWS IoT Device SDK v2 for JavaScript's identity clients against
// the lab with the real template (claim policy, template bootcert-fleet,
// the pre-provisioning hook): CreateCertificateFromCsr with a CSR this test
// made (the key stays in this process), RegisterThing with the template's
// SerialNumber parameter, every reply parsed by the SDK
// (IotIdentityClientv2; IotIdentityClient's typed rejected-topic parser for
// the deny-list case), and the rejections a device can cause: a reused and
// an unknown ownership token, a malformed CSR, and the four refusals of the
// pre-provisioning hook (not on the allow list, on the deny list, a
// replayed serial number, a key registering another device's name) with
// nothing created or changed in the registry.
//
// The shapes checked are AWS's ("Device provisioning MQTT API",
// https://docs.aws.amazon.com/iot/latest/developerguide/fleet-provision-api.html:
// accepted replies {certificateId, certificatePem, certificateOwnershipToken}
// and {deviceConfiguration, thingName}; rejected {statusCode, errorCode,
// errorMessage}) as the SDK's model (dist/iotidentity/model.d.ts) types
// them; a field the model does not have is a shape error.
func TestJavaScriptIdentitySDK(t *testing.T) {
	npmCI(t)
	r := startLab(t, nil)
	ctx := context.Background()
	const serial, stranger, denied, other = "gw-js-fleet", "gw-js-stranger", "gw-js-denied", "gw-js-other"
	r.runSetup([]manifest.Entry{{DeviceID: serial}, {DeviceID: denied}, {DeviceID: other}})
	if _, err := r.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("trust/deny-list.txt"),
		Body: strings.NewReader("# withdrawn\n" + denied + "\n")}); err != nil {
		t.Fatal(err)
	}
	claimKey, claimCSR := newCSR(t, "bootcert claim batch js")
	claim, err := setup.Claim(ctx, r.iot, setup.ClaimOptions{CSRPEM: []byte(claimCSR)})
	if err != nil {
		t.Fatalf("setup.Claim: %v", err)
	}
	claimPK8, err := x509.MarshalPKCS8PrivateKey(claimKey)
	if err != nil {
		t.Fatal(err)
	}
	devKey, devCSR := newCSR(t, serial)
	_, strangerCSR := newCSR(t, stranger)
	_, deniedCSR := newCSR(t, denied)
	_, replayCSR := newCSR(t, serial)
	// gw-js-fleet's key asking for a certificate again, then registering
	// another device's name (on the allow list, not provisioned).
	othersNameDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: other}}, devKey)
	if err != nil {
		t.Fatal(err)
	}
	othersNameCSR := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: othersNameDER}))
	// Hook refusals through IotIdentityClientv2 (after gw-js-fleet onboarded)
	// and the serial each one must leave without a thing (or unchanged).
	refusals := []struct {
		Name   string `json:"name"`
		CSR    string `json:"csr"`
		Serial string `json:"serial"`
	}{
		{"hookRefusedNotAllowed", strangerCSR, stranger},
		{"hookRefusedReplayedSerial", replayCSR, serial},
		{"hookRefusedOthersName", othersNameCSR, other},
	}

	host, port, _ := net.SplitHostPort(r.lab.Endpoints().MQTT)
	p, _ := strconv.Atoi(port)
	cfg, _ := json.Marshal(map[string]any{
		"host": host, "port": p, "clientId": "bootcert-provision-js", "templateName": "bootcert-fleet",
		"caFile":        r.writeFile("server-ca.pem", r.lab.ServerCAPEM()),
		"claimCertFile": r.writeFile("claim.crt", []byte(claim.CertificatePEM)),
		"claimKeyFile":  r.writeFile("claim.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: claimPK8})),
		"serial":        serial, "csr": devCSR,
		"refusals":     refusals,
		"deniedSerial": denied, "deniedCsr": deniedCSR,
	})
	cfgPath := r.writeFile("identity.json", cfg)

	cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(cctx, "node", "identity.js", cfgPath)
	cmd.Dir = jsDir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	t.Logf("node identity.js ran %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("node identity.js: %v\nstdout: %s\nstderr: %s", err, stdout, stderr.String())
	}
	var res identityResult
	if err := json.Unmarshal(stdout, &res); err != nil {
		t.Fatalf("identity.js printed no JSON: %v\n%s\nstderr: %s", err, stdout, stderr.String())
	}
	if testing.Verbose() { // ownership tokens are credentials: not in the output
		t.Logf("identity.js result: %s", ownershipToken.ReplaceAll(stdout, []byte(`"certificateOwnershipToken":"<redacted>"`)))
	}
	if res.Fatal != "" {
		t.Fatalf("identity.js: %s\nstderr: %s", res.Fatal, stderr.String())
	}
	if res.SDKVersion != "1.28.0" {
		t.Errorf("aws-iot-device-sdk-v2 %s, want the pinned 1.28.0", res.SDKVersion)
	}
	for _, e := range res.ShapeErrors {
		t.Errorf("shape the SDK's model does not allow: %s", e)
	}
	for _, name := range []string{"connect", "createCertificateFromCsr", "registerThing", "createCertificateFromCsr hookRefusedNotAllowed",
		"createCertificateFromCsr hookRefusedReplayedSerial", "createCertificateFromCsr hookRefusedOthersName", "connect v1"} {
		if s, ok := res.Steps[name]; !ok || !s.OK {
			t.Fatalf("%s: %+v (modeled error %s)\nstderr: %s", name, s, s.ModeledError, stderr.String())
		}
	}
	if s, ok := res.Steps["v1CreateCertificateFromCsr"]; ok {
		t.Errorf("v1 CreateCertificateFromCsr: %s", s.Error)
	}

	// CreateCertificateFromCsr: a certificate for this test's key, its ID
	// the SHA-256 of its DER, ACTIVE after RegisterThing.
	var created struct {
		CertificateID, CertificatePEM, CertificateOwnershipToken string
	}
	json.Unmarshal(res.Steps["createCertificateFromCsr"].Value, &created)
	block, _ := pem.Decode([]byte(created.CertificatePEM))
	if block == nil {
		t.Fatalf("certificatePem is not PEM: %q", created.CertificatePEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("certificatePem: %v", err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&devKey.PublicKey) {
		t.Fatal("the certificate is not for the key of the test's CSR")
	}
	if id := protocol.CertificateID(block.Bytes); id != created.CertificateID {
		t.Errorf("certificateId %s, want the certificate's SHA-256 %s", created.CertificateID, id)
	}
	if st := r.certStatus(created.CertificateID); st != "ACTIVE" {
		t.Errorf("provisioned certificate %s, want ACTIVE", st)
	}

	// RegisterThing: the thing of the template, named by the parameter.
	var reg struct {
		ThingName           string            `json:"thingName"`
		DeviceConfiguration map[string]string `json:"deviceConfiguration"`
	}
	json.Unmarshal(res.Steps["registerThing"].Value, &reg)
	if reg.ThingName != serial || reg.DeviceConfiguration["rotationGroup"] != "bootcert-rotation" {
		t.Errorf("RegisterThing reply %+v, want thing %s and rotationGroup bootcert-rotation", reg, serial)
	}
	th, err := r.iot.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(serial)})
	if err != nil || aws.ToString(th.ThingTypeName) != "bootcert-gateway" || th.Attributes["operationalCert"] != created.CertificateID {
		t.Fatalf("thing %s: %+v %v", serial, th, err)
	}
	checkPrincipals := func(when string) {
		t.Helper()
		principals, err := r.iot.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String(serial)})
		if err != nil || len(principals.Principals) != 1 || !strings.HasSuffix(principals.Principals[0], "/"+created.CertificateID) {
			t.Errorf("principals of %s %s: %+v %v, want only %s", serial, when, principals, err, created.CertificateID)
		}
	}
	checkPrincipals("after RegisterThing")

	// The device connects with the certificate and the key that never left
	// this process, under the operational policy, and has its rotation job.
	connectOperational(t, r, cert.Raw, devKey, serial)
	eventually(t, "the rotation job for "+serial, func() bool { return r.jobStatus(serial) == string(protocol.JobQueued) })

	// Rejections, as the SDK parsed them.
	for name, want := range map[string]struct {
		status int
		code   string
	}{
		"tokenReused":               {400, protocol.ProvisioningInvalidToken},
		"unknownToken":              {400, protocol.ProvisioningInvalidToken},
		"badCsr":                    {400, protocol.ProvisioningInvalidRequest},
		"hookRefusedNotAllowed":     {403, protocol.ProvisioningAccessDenied},
		"hookRefusedDenied":         {403, protocol.ProvisioningAccessDenied},
		"hookRefusedReplayedSerial": {403, protocol.ProvisioningAccessDenied},
		"hookRefusedOthersName":     {403, protocol.ProvisioningAccessDenied},
	} {
		var rj provisioningRejection
		if err := json.Unmarshal(res.Rejections[name], &rj); err != nil || rj.StatusCode != want.status || rj.ErrorCode != want.code || rj.ErrorMessage == "" {
			t.Errorf("%s: the SDK got %s, want statusCode %d errorCode %s and a message", name, res.Rejections[name], want.status, want.code)
		}
	}

	// The hook's refusals created nothing: no thing (gw-js-fleet, the
	// replayed serial, still has its one certificate), the new certificates
	// still PENDING_ACTIVATION and attached to no thing.
	for name, thing := range map[string]string{"hookRefusedNotAllowed": stranger, "hookRefusedDenied": denied, "hookRefusedOthersName": other, "hookRefusedReplayedSerial": ""} {
		if thing != "" {
			if _, err := r.iot.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(thing)}); err == nil {
				t.Errorf("%s: thing %s exists after the hook refused it", name, thing)
			}
		}
		id := res.RefusedCertificateIDs[name]
		if id == "" {
			t.Errorf("%s: no certificate ID recorded", name)
			continue
		}
		if st := r.certStatus(id); st != "PENDING_ACTIVATION" {
			t.Errorf("%s: refused certificate %s, want PENDING_ACTIVATION", name, st)
		}
		pt, err := r.iot.ListPrincipalThings(ctx, &iot.ListPrincipalThingsInput{Principal: aws.String("arn:aws:iot:us-east-1:123456789012:cert/" + id)})
		if err == nil && len(pt.Things) != 0 {
			t.Errorf("%s: refused certificate attached to %v", name, pt.Things)
		}
	}
	checkPrincipals("after the refusals")
	if th, err := r.iot.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String(serial)}); err != nil || th.Attributes["operationalCert"] != created.CertificateID {
		t.Errorf("thing %s after the refusals: %+v %v, want operationalCert %s", serial, th, err, created.CertificateID)
	}
}

// connectOperational connects to the lab's broker with the provisioned
// certificate and key (MQTT 3.1.1 over TLS) and disconnects.
func connectOperational(t *testing.T, r *rig, certDER []byte, key *ecdsa.PrivateKey, clientID string) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.lab.ServerCAPEM())
	o := paho.NewClientOptions().AddBroker("tls://" + r.lab.Endpoints().MQTT).SetClientID(clientID).
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{Certificate: [][]byte{certDER}, PrivateKey: key}}}).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect as %s with the provisioned certificate: %v", clientID, tok.Error())
	}
	c.Disconnect(50)
}
