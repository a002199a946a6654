package lab

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/bootcert/bootcert/cloud/lab/broker"
	"github.com/bootcert/bootcert/cloud/lab/registry"
	"github.com/bootcert/bootcert/internal/testca"
)

// authEnv is an in-memory registry with n devices, each with a thing and
// the template-style bootstrap policy (thing-name variables, IsAttached
// condition) attached.
func authEnv(t testing.TB, n int) (*authorizer, []broker.Principal) {
	r, err := registry.Open(registry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}},
 {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:us-east-1:123456789012:topic/certificates/${iot:Connection.Thing.ThingName}/get","arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*"]},
 {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*"}]}`
	if _, err := r.CreatePolicy("bootstrap", doc); err != nil {
		t.Fatal(err)
	}
	ca := testca.New(t, "ca")
	var ps []broker.Principal
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("gw-%d", i)
		leaf := ca.NewLeaf(t, name)
		c, err := r.RegisterCertificateWithoutCA(string(leaf.CertPEM), "ACTIVE")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.CreateThing(name, "", nil); err != nil {
			t.Fatal(err)
		}
		if err := r.AttachThingPrincipal(name, c.ARN); err != nil {
			t.Fatal(err)
		}
		if err := r.AttachPolicy("bootstrap", c.ARN); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, broker.Principal{CertificateID: c.ID, ClientID: name, CommonName: name})
	}
	return newAuthorizer(r, discardLogger()), ps
}

func TestAuthorizer(t *testing.T) {
	a, ps := authEnv(t, 2)
	p := ps[0]
	for _, tc := range []struct {
		name     string
		p        broker.Principal
		action   broker.Action
		resource string
		allowed  bool
	}{
		{"ok/connect as own thing", p, broker.ActionConnect, acct + "client/gw-0", true},
		{"fail/connect as another thing", broker.Principal{CertificateID: p.CertificateID, ClientID: "gw-1", CommonName: "gw-0"}, broker.ActionConnect, acct + "client/gw-1", false},
		{"ok/publish own get", p, broker.ActionPublish, acct + "topic/certificates/gw-0/get", true},
		{"fail/publish other's get", p, broker.ActionPublish, acct + "topic/certificates/gw-1/get", false},
		{"ok/subscribe own jobs", p, broker.ActionSubscribe, acct + "topicfilter/$aws/things/gw-0/jobs/*", true},
		{"fail/subscribe all jobs", p, broker.ActionSubscribe, acct + "topicfilter/$aws/things/+/jobs/#", false},
		{"fail/unknown certificate", broker.Principal{CertificateID: "00", ClientID: "gw-0", CommonName: "gw-0"}, broker.ActionConnect, acct + "client/gw-0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := a.Authorize(tc.p, tc.action, tc.resource)
			if d.Allowed != tc.allowed {
				t.Fatalf("Authorize = %+v, want allowed=%v", d, tc.allowed)
			}
			if d.Allowed && (d.Policy != "bootstrap" || d.Statement < 0) {
				t.Fatalf("decision does not name the deciding statement: %+v", d)
			}
		})
	}
}

// BenchmarkAuthorize: one policy decision as the broker makes it on every
// connect, publish, subscribe and delivery, with 2,000 devices registered.
func BenchmarkAuthorize(b *testing.B) {
	a, ps := authEnv(b, 2000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := ps[i%len(ps)]
		if d := a.Authorize(p, broker.ActionPublish, acct+"topic/certificates/"+p.ClientID+"/get"); !d.Allowed {
			b.Fatal(d.Reason)
		}
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
