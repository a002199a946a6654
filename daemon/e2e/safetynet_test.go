package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/daemon/credset"
	"github.com/bootcert/bootcert/internal/testca"
	"github.com/bootcert/bootcert/protocol"
)

// rotateGrant grants a thing its rotation request topic (what the cloud
// side's template grants; attached here to the test's certificates so that
// this test does not depend on that template change).
const rotateGrant = `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/certificates/${iot:Connection.Thing.ThingName}/rotate"},
 {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/certificates/${iot:Connection.Thing.ThingName}/rotate/*"},
 {"Effect":"Allow","Action":"iot:Receive","Resource":"arn:aws:iot:us-east-1:123456789012:topic/certificates/${iot:Connection.Thing.ThingName}/rotate/*"}]}`

// handlerPolicy lets the test's request handler hear every request and
// answer it.
const handlerPolicy = `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/rotate-handler"},
 {"Effect":"Allow","Action":["iot:Subscribe"],"Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/certificates/+/rotate"},
 {"Effect":"Allow","Action":["iot:Receive"],"Resource":"arn:aws:iot:us-east-1:123456789012:topic/certificates/*/rotate"},
 {"Effect":"Allow","Action":["iot:Publish"],"Resource":"arn:aws:iot:us-east-1:123456789012:topic/certificates/*/rotate/*"}]}`

func (c *cloudEnv) register(certPEM []byte, policies ...string) string {
	c.t.Helper()
	ctx := context.Background()
	out, err := c.api.RegisterCertificate(ctx, &iot.RegisterCertificateInput{CertificatePem: aws.String(string(certPEM)), CaCertificatePem: aws.String(string(c.ca.PEM)), Status: types.CertificateStatusActive})
	if err != nil {
		c.t.Fatalf("RegisterCertificate: %v", err)
	}
	for _, p := range policies {
		if _, err := c.api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(p), Target: out.CertificateArn}); err != nil {
			c.t.Fatalf("AttachPolicy %s: %v", p, err)
		}
	}
	return aws.ToString(out.CertificateArn)
}

func (c *cloudEnv) createPolicy(name, doc string) {
	c.t.Helper()
	if _, err := c.api.CreatePolicy(context.Background(), &iot.CreatePolicyInput{PolicyName: aws.String(name), PolicyDocument: aws.String(doc)}); err != nil {
		c.t.Fatalf("CreatePolicy %s: %v", name, err)
	}
}

// TestSafetyNet (issue 10): a device whose operational certificate is
// older than rotation.max_age, with no rotation job, asks for one on
// certificates/{thing}/rotate; a small handler standing in for the cloud's
// answers it and queues the rotation (the thing back in the rotation
// group); the device rotates, and its status shows the request and the
// answer.
func TestSafetyNet(t *testing.T) {
	c := newCloud(t)
	d := newDevice(t, c, "gw-safety", deviceOpts{kind: onFile, configure: func(cfg *config.Config) {
		cfg.Rotation.MaxAge = config.Age(365 * 24 * time.Hour)
	}})
	d.start()
	d.waitFor("generation 1", operational(1))
	d.stop()

	// the generation 1 key gets a certificate issued 400 days ago
	store, err := credset.Open(d.state)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := store.Get(1)
	if err != nil {
		t.Fatal(err)
	}
	old := c.issue(d.name, cur.Leaf().PublicKey, time.Now().Add(-400*24*time.Hour), time.Now().Add(365*24*time.Hour))
	oldPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Raw})
	c.createPolicy("test-rotate-request", rotateGrant)
	arn := c.register(oldPEM, "bootcert-operational", "test-rotate-request")
	if _, err := c.api.AttachThingPrincipal(context.Background(), &iot.AttachThingPrincipalInput{ThingName: aws.String(d.name), Principal: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	meta := cur.Meta
	meta.CertificateID = protocol.CertificateID(old.Raw)
	meta.NotAfter = old.NotAfter
	if err := store.Remove(1); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(&credset.Credential{Generation: 1, KeyURI: cur.KeyURI, Chain: []*x509.Certificate{old}, Meta: meta}); err != nil {
		t.Fatal(err)
	}

	// the handler: answers every request and queues the rotation
	c.createPolicy("test-rotate-handler", handlerPolicy)
	leaf := c.ca.NewLeaf(t, "rotate-handler")
	c.register(leaf.CertPEM, "test-rotate-handler")
	var mu sync.Mutex
	var reqs []protocol.RotateRequest
	h := handlerClient(t, c, leaf)
	tok := h.Subscribe("certificates/+/rotate", 1, func(cl paho.Client, m paho.Message) {
		var r protocol.RotateRequest
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			t.Errorf("request %s: %v", m.Payload(), err)
			return
		}
		mu.Lock()
		reqs = append(reqs, r)
		mu.Unlock()
		thing := strings.Split(m.Topic(), "/")[1]
		c.addToRotation(thing)
		b, _ := json.Marshal(protocol.RotateAccepted{ClientToken: r.ClientToken, JobID: "bootcert-rotation"})
		cl.Publish(m.Topic()+"/accepted", 1, false, b)
	})
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil || tok.(*paho.SubscribeToken).Result()["certificates/+/rotate"] != 1 {
		t.Fatalf("handler subscribe: %v %v", tok.Error(), tok.(*paho.SubscribeToken).Result())
	}

	d.start()
	st := d.waitFor("generation 2 after the request", operational(2))
	mu.Lock()
	got := append([]protocol.RotateRequest(nil), reqs...)
	mu.Unlock()
	if len(got) != 1 || got[0].Reason != "age" || got[0].CertificateID != meta.CertificateID {
		t.Errorf("requests %+v, want one for the old certificate %s (age)", got, meta.CertificateID)
	}
	if r := st.RotationRequest; r == nil || r.Answer != "accepted" || r.Reason != "age" || r.CertificateID != meta.CertificateID {
		t.Errorf("status rotation request %+v", st.RotationRequest)
	}
	d.stop()
}

func handlerClient(t *testing.T, c *cloudEnv, leaf *testca.Leaf) paho.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.lab.ServerCAPEM())
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	o := paho.NewClientOptions().AddBroker("tls://" + c.lab.Endpoints().MQTT).SetClientID("rotate-handler").
		SetTLSConfig(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	cl := paho.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("handler connect: %v", tok.Error())
	}
	t.Cleanup(func() { cl.Disconnect(100) })
	return cl
}
