package cloud_test

// Fleet provisioning by claim through the lab with the real template: the
// claim policy, the template bootcert-fleet and the pre-provisioning hook
// built by cloud.Build, over a real MQTT client (paho) and the AWS SDK.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/bootcert/bootcert/cloud/setup"
	"github.com/bootcert/bootcert/manifest"
	"github.com/bootcert/bootcert/protocol"
)

const fleetTemplate = "bootcert-fleet"

type claimRig struct {
	*labRig
	claimDER []byte
	claimKey *ecdsa.PrivateKey
}

func startClaimLab(t *testing.T, allowed ...string) *claimRig {
	r := startLab(t, nil, "")
	var entries []manifest.Entry
	for _, id := range allowed {
		entries = append(entries, manifest.Entry{DeviceID: id})
	}
	r.setup(entries)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bootcert claim batch 1"}}, key)
	res, err := setup.Claim(context.Background(), r.iot, setup.ClaimOptions{CSRPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})})
	if err != nil {
		t.Fatalf("setup.Claim: %v", err)
	}
	return &claimRig{labRig: r, claimDER: leafDER(t, res.CertificatePEM), claimKey: key}
}

// claimConn connects with the claim certificate and subscribes to the
// replies of both operations.
func (r *claimRig) claimConn(t *testing.T, clientID string) *conn {
	t.Helper()
	c, err := r.connect(r.claimDER, r.claimKey, clientID)
	if err != nil {
		t.Fatalf("claim connect as %s: %v", clientID, err)
	}
	for _, f := range []string{protocol.TopicCreateFromCSR + "/+", protocol.ProvisionTopic(fleetTemplate) + "/+"} {
		if code := c.subscribe(t, f); code != 1 && code != 0 {
			t.Fatalf("subscribe %s: SUBACK 0x%x", f, code)
		}
	}
	return c
}

// createFromCSR runs CreateCertificateFromCsr for a new key with subject CN.
func createFromCSR(t *testing.T, c *conn, cn string, keys ...*ecdsa.PrivateKey) (protocol.CreateCertificateFromCSRResponse, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if len(keys) > 0 {
		key = keys[0]
	}
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	c.publish(t, protocol.TopicCreateFromCSR, protocol.CreateCertificateFromCSRRequest{CertificateSigningRequest: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	topic, payload := c.wait(t, protocol.TopicCreateFromCSR+"/accepted", protocol.TopicCreateFromCSR+"/rejected")
	if !strings.HasSuffix(topic, "/accepted") {
		t.Fatalf("CreateCertificateFromCsr rejected: %s", payload)
	}
	var out protocol.CreateCertificateFromCSRResponse
	if err := json.Unmarshal(payload, &out); err != nil || out.CertificateOwnershipToken == "" || out.CertificateID == "" {
		t.Fatalf("CreateCertificateFromCsr reply %s: %v", payload, err)
	}
	return out, key
}

// register runs RegisterThing; it returns the accepted reply or the
// rejection.
func register(t *testing.T, c *conn, token, serial string) (*protocol.RegisterThingResponse, *protocol.ProvisioningError) {
	t.Helper()
	topic := protocol.ProvisionTopic(fleetTemplate)
	c.publish(t, topic, protocol.RegisterThingRequest{CertificateOwnershipToken: token, Parameters: map[string]string{protocol.ParamSerialNumber: serial}})
	got, payload := c.wait(t, topic+"/accepted", topic+"/rejected")
	if strings.HasSuffix(got, "/rejected") {
		var e protocol.ProvisioningError
		if err := json.Unmarshal(payload, &e); err != nil {
			t.Fatalf("rejection %s: %v", payload, err)
		}
		return nil, &e
	}
	var out protocol.RegisterThingResponse
	if err := json.Unmarshal(payload, &out); err != nil {
		t.Fatalf("RegisterThing reply %s: %v", payload, err)
	}
	return &out, nil
}

func (r *claimRig) thingExists(name string) bool {
	_, err := r.iot.DescribeThing(context.Background(), &iot.DescribeThingInput{ThingName: aws.String(name)})
	return err == nil
}

func TestLabFleetProvisioning(t *testing.T) {
	r := startClaimLab(t, "gw-fp-1", "gw-fp-2", "gw-fp-3", "gw-fp-denied")
	ctx := context.Background()
	deny := "# denied devices\ngw-fp-denied\n"
	if _, err := r.s3.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("trust/deny-list.txt"), Body: strings.NewReader(deny)}); err != nil {
		t.Fatal(err)
	}
	c := r.claimConn(t, "bootcert-provision-gw-fp-1")
	// A second claim holder listening on the same reply topics.
	spy := r.claimConn(t, "bootcert-provision-spy")

	created, key := createFromCSR(t, c, "gw-fp-1")
	if st := r.certStatus(created.CertificateID); st != "PENDING_ACTIVATION" {
		t.Fatalf("new certificate is %q, want PENDING_ACTIVATION", st)
	}
	reply, rej := register(t, c, created.CertificateOwnershipToken, "gw-fp-1")
	if rej != nil {
		out, err := r.lab.Invoke(ctx, "ProvisionHookFunction", hookEvent(t, r, created, "gw-fp-1"))
		t.Fatalf("RegisterThing gw-fp-1 rejected: %+v (the hook says %s %v)", rej, out, err)
	}
	if reply.ThingName != "gw-fp-1" || reply.DeviceConfiguration["rotationGroup"] != "bootcert-rotation" {
		t.Fatalf("RegisterThing reply %+v", reply)
	}
	if st := r.certStatus(created.CertificateID); st != "ACTIVE" {
		t.Fatalf("provisioned certificate is %q, want ACTIVE", st)
	}
	th, err := r.iot.DescribeThing(ctx, &iot.DescribeThingInput{ThingName: aws.String("gw-fp-1")})
	if err != nil || aws.ToString(th.ThingTypeName) != "bootcert-gateway" || th.Attributes["operationalCert"] != created.CertificateID || len(th.Attributes["keySha256"]) != 64 {
		t.Fatalf("thing gw-fp-1: %+v %v", th, err)
	}
	groups, err := r.iot.ListThingGroupsForThing(ctx, &iot.ListThingGroupsForThingInput{ThingName: aws.String("gw-fp-1")})
	if err != nil || len(groups.ThingGroups) != 1 || aws.ToString(groups.ThingGroups[0].GroupName) != "bootcert-rotation" {
		t.Fatalf("groups of gw-fp-1: %+v %v", groups, err)
	}
	// The replies went to the requesting connection only.
	spy.mu.Lock()
	leaked := len(spy.msgs)
	spy.mu.Unlock()
	if leaked != 0 {
		t.Fatalf("another claim holder received %d fleet provisioning replies", leaked)
	}
	// The device connects with its new certificate under the operational
	// policy and gets the rotation job like a JITR device.
	dev, err := r.connect(leafDER(t, created.CertificatePEM), key, "gw-fp-1")
	if err != nil {
		t.Fatalf("connect with the provisioned certificate: %v", err)
	}
	dev.c.Disconnect(0)
	waitFor(t, "the rotation job for gw-fp-1", func() bool { return r.jobStatus("gw-fp-1") == protocol.JobQueued })

	// The token is single-use.
	if _, rej := register(t, c, created.CertificateOwnershipToken, "gw-fp-1"); rej == nil || rej.ErrorCode != protocol.ProvisioningInvalidToken || rej.StatusCode != 400 {
		t.Fatalf("second use of a token: %+v", rej)
	}

	// gw-fp-2 onboards; then tries gw-fp-3's name with its own key.
	created2, key2 := createFromCSR(t, c, "gw-fp-2")
	if _, rej := register(t, c, created2.CertificateOwnershipToken, "gw-fp-2"); rej != nil {
		t.Fatalf("RegisterThing gw-fp-2: %+v", rej)
	}
	// The same device retrying with its key (a new certificate, e.g. after
	// a crash lost the first one) is the same device: allowed.
	retry, _ := createFromCSR(t, c, "gw-fp-2", key2)
	if _, rej := register(t, c, retry.CertificateOwnershipToken, "gw-fp-2"); rej != nil {
		t.Fatalf("RegisterThing gw-fp-2 again with its own key: %+v", rej)
	}

	firstCert := created.CertificateID
	for _, tc := range []struct {
		name, cn, serial, why string
		key                   *ecdsa.PrivateKey
	}{
		{"fail/not-allowed", "gw-fp-stranger", "gw-fp-stranger", "not on the allow list", nil},
		{"fail/denied", "gw-fp-denied", "gw-fp-denied", "deny list", nil},
		{"fail/others-name", "gw-fp-3", "gw-fp-3", "registers its own name only", key2},
		{"fail/replayed-serial", "gw-fp-1", "gw-fp-1", "replayed serial number", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var keys []*ecdsa.PrivateKey
			if tc.key != nil {
				keys = append(keys, tc.key)
			}
			created, _ := createFromCSR(t, c, tc.cn, keys...)
			before := r.thingExists(tc.serial)
			registryBefore := r.registrySnapshot(t)
			if !strings.Contains(registryBefore["thing/gw-fp-1"], firstCert) || registryBefore["cert/"+firstCert] != "ACTIVE" {
				t.Fatalf("registry snapshot %v does not show gw-fp-1 with its certificate %s", registryBefore, firstCert)
			}
			_, rej := register(t, c, created.CertificateOwnershipToken, tc.serial)
			if rej == nil {
				t.Fatalf("RegisterThing %s with CN %s accepted", tc.serial, tc.cn)
			}
			// AWS's shape: statusCode, errorCode, errorMessage; a hook
			// refusal is ACCESS_DENIED.
			if rej.StatusCode != 403 || rej.ErrorCode != protocol.ProvisioningAccessDenied || rej.ErrorMessage == "" {
				t.Fatalf("rejection %+v", rej)
			}
			if st := r.certStatus(created.CertificateID); st != "PENDING_ACTIVATION" {
				t.Errorf("refused certificate is %q, want PENDING_ACTIVATION (untouched)", st)
			}
			if r.thingExists(tc.serial) != before {
				t.Errorf("thing %s created by a refused registration", tc.serial)
			}
			principals, err := r.iot.ListPrincipalThings(ctx, &iot.ListPrincipalThingsInput{Principal: aws.String("arn:aws:iot:us-east-1:123456789012:cert/" + created.CertificateID)})
			if err == nil && len(principals.Things) != 0 {
				t.Errorf("refused certificate attached to %v", principals.Things)
			}
			// Nothing else changed either: no certificate activated, no
			// thing created or changed (attributes, type, principals,
			// groups) — e.g. the replayed serial's thing still names its
			// first certificate.
			if after := r.registrySnapshot(t); !reflect.DeepEqual(after, registryBefore) {
				t.Errorf("the registry changed on a refused registration:\nbefore %v\nafter  %v", registryBefore, after)
			}
			// The hook's reason is in the lab's record of the invocation
			// (the device only sees ACCESS_DENIED, as on AWS).
			out, err := r.lab.Invoke(ctx, "ProvisionHookFunction", hookEvent(t, r, created, tc.serial))
			if err != nil || !strings.Contains(string(out), tc.why) || !strings.Contains(string(out), `"allowProvisioning":false`) {
				t.Errorf("hook result %s (%v), want a refusal mentioning %q", out, err, tc.why)
			}
		})
	}
}

// registrySnapshot is every certificate's status and every thing's type,
// attributes, principals and groups.
func (r *claimRig) registrySnapshot(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	snap := map[string]string{}
	certs := iot.NewListCertificatesPaginator(r.iot, &iot.ListCertificatesInput{})
	for certs.HasMorePages() {
		page, err := certs.NextPage(ctx)
		if err != nil {
			t.Fatalf("ListCertificates: %v", err)
		}
		for _, c := range page.Certificates {
			snap["cert/"+aws.ToString(c.CertificateId)] = string(c.Status)
		}
	}
	things := iot.NewListThingsPaginator(r.iot, &iot.ListThingsInput{})
	for things.HasMorePages() {
		page, err := things.NextPage(ctx)
		if err != nil {
			t.Fatalf("ListThings: %v", err)
		}
		for _, th := range page.Things {
			name := aws.ToString(th.ThingName)
			attrs, _ := json.Marshal(th.Attributes)
			snap["thing/"+name] = aws.ToString(th.ThingTypeName) + " " + string(attrs)
			pr, err := r.iot.ListThingPrincipals(ctx, &iot.ListThingPrincipalsInput{ThingName: aws.String(name)})
			if err != nil {
				t.Fatalf("ListThingPrincipals %s: %v", name, err)
			}
			sort.Strings(pr.Principals)
			snap["principals/"+name] = strings.Join(pr.Principals, ",")
			gr, err := r.iot.ListThingGroupsForThing(ctx, &iot.ListThingGroupsForThingInput{ThingName: aws.String(name)})
			if err != nil {
				t.Fatalf("ListThingGroupsForThing %s: %v", name, err)
			}
			var gs []string
			for _, g := range gr.ThingGroups {
				gs = append(gs, aws.ToString(g.GroupName))
			}
			sort.Strings(gs)
			snap["groups/"+name] = strings.Join(gs, ",")
		}
	}
	return snap
}

func hookEvent(t *testing.T, r *claimRig, c protocol.CreateCertificateFromCSRResponse, serial string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{
		"claimCertificateId": protocolID(r.claimDER), "certificateId": c.CertificateID, "certificatePem": c.CertificatePEM,
		"templateArn": "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/" + fleetTemplate, "clientId": "x",
		"parameters": map[string]string{protocol.ParamSerialNumber: serial},
	})
	return b
}

func protocolID(der []byte) string { return protocol.CertificateID(der) }

// TestLabClaimPolicy: the claim reaches only its template's topics; the
// CreateKeysAndCertificate topic (key made in the cloud) is refused.
func TestLabClaimPolicy(t *testing.T) {
	r := startClaimLab(t, "gw-fp-1")
	if _, err := r.connect(r.claimDER, r.claimKey, "gw-fp-1"); err == nil {
		t.Fatal("claim connected with an operational client ID")
	}
	c := r.claimConn(t, "bootcert-provision-x")
	if code := c.subscribe(t, "$aws/things/gw-fp-1/jobs/notify"); code != 0x80 {
		t.Errorf("claim subscribed to a thing's jobs topic: SUBACK 0x%x", code)
	}
	c.publish(t, protocol.TopicCreateKeys, map[string]string{})
	select {
	case err := <-c.lost:
		if err == nil {
			t.Error("connection lost without an error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("publishing to CreateKeysAndCertificate with the claim did not disconnect it")
	}
}
