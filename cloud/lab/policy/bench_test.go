package policy

import "testing"

// BenchmarkEvaluate: one publish decision against a bootstrap-like policy
// (four statements, thing-name variables, a condition), as the broker makes
// it for every publish and every delivery.
func BenchmarkEvaluate(b *testing.B) {
	d := mustParse(b, `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}","Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}},
		{"Effect":"Allow","Action":"iot:Publish","Resource":["arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*","arn:aws:iot:us-east-1:123456789012:topic/certificates/${iot:Connection.Thing.ThingName}/get","arn:aws:iot:us-east-1:123456789012:topic/certificates/${iot:Connection.Thing.ThingName}/ack"]},
		{"Effect":"Allow","Action":"iot:Subscribe","Resource":["arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*","arn:aws:iot:us-east-1:123456789012:topicfilter/certificates/${iot:Connection.Thing.ThingName}/get/*"]},
		{"Effect":"Allow","Action":"iot:Receive","Resource":["arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*","arn:aws:iot:us-east-1:123456789012:topic/certificates/${iot:Connection.Thing.ThingName}/get/*"]}]}`)
	ps := []Named{{"bootcert-bootstrap", d}}
	req := Request{Action: ActionPublish, Resource: arn + "topic/certificates/dev-1/ack", Vars: attached}
	b.ReportAllocs()
	for b.Loop() {
		if !Evaluate(ps, req).Allowed {
			b.Fatal("denied")
		}
	}
}

func BenchmarkParse(b *testing.B) {
	doc := []byte(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*"],"Condition":{"Bool":{"iot:Connection.Thing.IsAttached":"true"}}}]}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(doc); err != nil {
			b.Fatal(err)
		}
	}
}
