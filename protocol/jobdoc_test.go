package protocol

import (
	"encoding/json"
	"strings"
	"testing"
)

func docJSON(get, getSub, ack, ackSub string) []byte {
	b, _ := json.Marshal(JobDocument{Operation: OperationRotate, Version: Version,
		Get: TopicPair{Subscribe: getSub, Publish: get}, Ack: TopicPair{Subscribe: ackSub, Publish: ack}})
	return b
}

func TestParseJobDocumentNamespace(t *testing.T) {
	def, _ := json.Marshal(DefaultJobDocument())
	const ns = "certificates/{thingName}/"
	for _, tc := range []struct {
		name    string
		in      []byte
		errPart string // "" = accepted
	}{
		{"ok/default", def, ""},
		{"ok/other-ops-in-namespace", docJSON(ns+"v2/get", ns+"v2/get/+", ns+"v2/ack", ns+"v2/ack/+"), ""},
		{"ok/ungranted-but-in-namespace", docJSON(ns+"get2", ns+"get2/+", ns+"ack", ns+"ack/+"), ""},
		{"fail/outside-namespace", docJSON("devices/{thingName}/get", "devices/{thingName}/get/+", ns+"ack", ns+"ack/+"), `get.publish "devices/{thingName}/get" is outside certificates/{thingName}/`},
		{"fail/other-thing", docJSON("certificates/gw-2/get", "certificates/gw-2/get/+", ns+"ack", ns+"ack/+"), "is outside"},
		{"fail/aws-reserved", docJSON("$aws/things/{thingName}/shadow/update", "$aws/things/{thingName}/shadow/update/+", ns+"ack", ns+"ack/+"), "is outside"},
		{"fail/namespace-prefix-only", docJSON("certificates/{thingName}", "certificates/{thingName}/+", ns+"ack", ns+"ack/+"), "is outside"},
		{"fail/empty-rest", docJSON(ns, ns+"/+", ns+"ack", ns+"ack/+"), "empty or over-long level"},
		{"fail/empty-level", docJSON(ns+"a//b", ns+"a//b/+", ns+"ack", ns+"ack/+"), "empty or over-long level"},
		{"fail/too-deep", docJSON(ns+"a/b/c/d", ns+"a/b/c/d/+", ns+"ack", ns+"ack/+"), "more than 3 levels"},
		{"fail/long-level", docJSON(ns+strings.Repeat("x", 33), ns+strings.Repeat("x", 33)+"/+", ns+"ack", ns+"ack/+"), "over-long"},
		{"fail/wildcard-publish", docJSON(ns+"+", ns+"+/+", ns+"ack", ns+"ack/+"), `has "+"`},
		{"fail/multilevel-wildcard", docJSON(ns+"get", ns+"get/+", ns+"#", ns+"#/+"), `ack.publish "certificates/{thingName}/#" has "#"`},
		{"fail/second-placeholder", docJSON(ns+"{thingName}", ns+"{thingName}/+", ns+"ack", ns+"ack/+"), `has "{"`},
		{"fail/nul", docJSON(ns+"g\x00", ns+"g\x00/+", ns+"ack", ns+"ack/+"), `has "\x00"`},
		{"fail/subscribe-elsewhere", docJSON(ns+"get", "devices/{thingName}/get/+", ns+"ack", ns+"ack/+"), `get.subscribe "devices/{thingName}/get/+" is not "certificates/{thingName}/get/+"`},
		{"fail/subscribe-hash", docJSON(ns+"get", ns+"get/#", ns+"ack", ns+"ack/+"), "get.subscribe"},
		{"fail/subscribe-missing", docJSON(ns+"get", "", ns+"ack", ns+"ack/+"), "get.subscribe is missing"},
		{"fail/publish-missing", docJSON(ns+"get", ns+"get/+", "", ns+"ack/+"), "ack.publish is missing"},
		{"fail/same-topic", docJSON(ns+"get", ns+"get/+", ns+"get", ns+"get/+"), "the same topic"},
		{"fail/operation", []byte(`{"operation":"reboot","version":"1"}`), "operation"},
		{"fail/version", []byte(`{"operation":"bootcert.rotate","version":"2"}`), "version"},
		{"fail/not-json", []byte(`{`), "decoding job document"},
	} {
		d, err := ParseJobDocument(tc.in)
		if tc.errPart == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted %+v", tc.name, d)
			continue
		}
		if !strings.Contains(err.Error(), tc.errPart) || !strings.HasPrefix(err.Error(), "job document") && !strings.HasPrefix(err.Error(), "decoding job document") {
			t.Errorf("%s: error %q, want one naming %q", tc.name, err, tc.errPart)
		}
	}
}

// FuzzParseJobDocument: ParseJobDocument never panics, and what it accepts
// keeps every topic, once expanded for any valid thing name, under that
// thing's certificates/{thing}/ namespace, without wildcards except the
// subscribe filters' final "+", and within AWS IoT's topic limits (256 bytes,
// 7 slashes with a reply suffix).
func FuzzParseJobDocument(f *testing.F) {
	def, _ := json.Marshal(DefaultJobDocument())
	f.Add(def, "gw-1")
	const ns = "certificates/{thingName}/"
	f.Add(docJSON("devices/{thingName}/get", "devices/{thingName}/get/+", ns+"ack", ns+"ack/+"), "gw-1")
	f.Add(docJSON(ns+"a/b/c", ns+"a/b/c/+", ns+"x", ns+"x/+"), strings.Repeat("a", 128))
	f.Add(docJSON(ns+"+", ns+"+/+", ns+"ack", ns+"ack/+"), "t")
	f.Add([]byte(`{"operation":"bootcert.rotate","version":"1","get":{"publish":"$aws/x"}}`), "gw")
	f.Fuzz(func(t *testing.T, payload []byte, thing string) {
		d, err := ParseJobDocument(payload)
		if err != nil {
			return
		}
		if ValidThingName(thing) != nil {
			thing = "gw-1"
		}
		for _, p := range []TopicPair{d.Get.Expand(thing), d.Ack.Expand(thing)} {
			prefix := "certificates/" + thing + "/"
			if !strings.HasPrefix(p.Publish, prefix) || !strings.HasPrefix(p.Subscribe, prefix) {
				t.Fatalf("accepted %+v outside %s", p, prefix)
			}
			if strings.ContainsAny(p.Publish, "+#$\x00{}") {
				t.Fatalf("accepted publish topic %q with a wildcard or reserved character", p.Publish)
			}
			if p.Subscribe != p.Publish+"/+" {
				t.Fatalf("accepted subscribe %q for publish %q", p.Subscribe, p.Publish)
			}
			reply := p.Publish + "/" + SuffixAccepted
			if len(reply) > 256 || strings.Count(reply, "/") > 7 {
				t.Fatalf("reply topic %q exceeds AWS IoT's topic limits", reply)
			}
		}
		again, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if d2, err := ParseJobDocument(again); err != nil || d2 != d {
			t.Fatalf("an accepted document does not round-trip: %v", err)
		}
	})
}
