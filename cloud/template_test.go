package cloud

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/awslabs/goformation/v7"

	"github.com/bootcert/bootcert/cloud/ports"
	"gopkg.in/yaml.v3"
)

const templatePath = "template.yaml"

// TestTemplateParses loads the SAM template with goformation and checks the
// shared names the lab and the daemon rely on.
func TestTemplateParses(t *testing.T) {
	tpl, err := goformation.Open(templatePath)
	if err != nil {
		t.Fatalf("goformation: %v", err)
	}
	for _, id := range LogicalIDs {
		f, err := tpl.GetServerlessFunctionWithName(id)
		if err != nil {
			t.Errorf("function %s: %v", id, err)
			continue
		}
		if f.Runtime == nil || *f.Runtime != "provided.al2023" {
			t.Errorf("function %s: runtime %v, want provided.al2023", id, f.Runtime)
		}
		if !slices.Equal(f.Architectures, []string{"arm64"}) {
			t.Errorf("function %s: architectures %v, want [arm64]", id, f.Architectures)
		}
		if f.Environment == nil || f.Environment.Variables == nil {
			t.Errorf("function %s: no environment", id)
		}
	}
	pols := tpl.GetAllIoTPolicyResources()
	var names []string
	for _, p := range pols {
		if p.PolicyName != nil {
			names = append(names, *p.PolicyName)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"bootcert-bootstrap", "bootcert-claim", "bootcert-operational"}) {
		t.Errorf("IoT policy names %v", names)
	}
	rules := tpl.GetAllIoTTopicRuleResources()
	want := map[string]string{
		"SELECT * FROM '$aws/events/certificates/registered/+'": "ActivatorFunction",
		"SELECT *, topic(2) AS thingName, topic(3) AS operation, principal() AS principal, clientid() AS clientId, timestamp() AS receivedAt FROM 'certificates/+/+'": "VendorFunction",
		"SELECT * FROM '$aws/events/jobExecution/+/+'": "ReaperFunction",
	}
	got := map[string]bool{}
	for _, r := range rules {
		got[r.TopicRulePayload.Sql] = true
	}
	for sql := range want {
		if !got[sql] {
			t.Errorf("no topic rule with SQL %s", sql)
		}
	}
	if tt, err := tpl.GetIoTThingTypeWithName("GatewayThingType"); err != nil || tt.ThingTypeName == nil || *tt.ThingTypeName != "bootcert-gateway" {
		t.Errorf("thing type bootcert-gateway missing: %v", err)
	}
	if g, err := tpl.GetIoTThingGroupWithName("RotationGroup"); err != nil || g.ThingGroupName == nil || *g.ThingGroupName != "bootcert-rotation" {
		t.Errorf("thing group bootcert-rotation missing: %v", err)
	}
	b, err := tpl.GetS3BucketWithName("Bucket")
	if err != nil {
		t.Fatalf("bucket: %v", err)
	}
	if b.BucketEncryption == nil || b.VersioningConfiguration == nil || b.VersioningConfiguration.Status != "Enabled" || b.PublicAccessBlockConfiguration == nil {
		t.Errorf("bucket must be encrypted, versioned and block public access")
	}
}

// TestTemplateReferences checks that every Ref, GetAtt and ${X} in !Sub names
// a parameter, a resource or a pseudo parameter.
func TestTemplateReferences(t *testing.T) {
	raw, err := os.ReadFile(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Parameters map[string]any `yaml:"Parameters"`
		Resources  map[string]any `yaml:"Resources"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	known := func(name string) bool {
		if strings.HasPrefix(name, "AWS::") {
			return true
		}
		name, _, _ = strings.Cut(name, ".")
		_, p := doc.Parameters[name]
		_, r := doc.Resources[name]
		return p || r
	}
	refs := regexp.MustCompile(`!(?:Ref|GetAtt)\s+([A-Za-z0-9:.]+)`)
	for _, m := range refs.FindAllStringSubmatch(string(raw), -1) {
		if !known(m[1]) {
			t.Errorf("reference to unknown %q", m[1])
		}
	}
	subs := regexp.MustCompile(`\$\{([A-Za-z0-9:.]+)\}`)
	for _, m := range subs.FindAllStringSubmatch(string(raw), -1) {
		if !known(m[1]) {
			t.Errorf("!Sub reference to unknown %q", m[1])
		}
	}
	n := 0
	for range regexp.MustCompile(`\$\{!iot:Connection\.Thing\.ThingName\}`).FindAllString(string(raw), -1) {
		n++
	}
	if n == 0 {
		t.Errorf("policies do not use the thing-name policy variable")
	}
}

// TestQuotaShares: the functions that pace themselves (API_QUOTA_SHARE)
// have reserved concurrency, and all their execution environments together
// never pace above an API's quota (sum of concurrency × share ≤ 1).
func TestQuotaShares(t *testing.T) {
	tpl, err := goformation.Open(templatePath)
	if err != nil {
		t.Fatalf("goformation: %v", err)
	}
	total := 0.0
	for _, id := range []string{Activator, Vendor, Renewal} {
		f, err := tpl.GetServerlessFunctionWithName(id)
		if err != nil {
			t.Fatal(err)
		}
		v := f.Environment.Variables[ports.EnvQuotaShare]
		share, err := ports.QuotaShareFromEnv(func(string) string { return v })
		if err != nil || share == 0 {
			t.Errorf("%s: %s %q: %v", id, ports.EnvQuotaShare, v, err)
			continue
		}
		if f.ReservedConcurrentExecutions == nil || *f.ReservedConcurrentExecutions < 1 {
			t.Errorf("%s paces itself without reserved concurrency", id)
			continue
		}
		total += float64(*f.ReservedConcurrentExecutions) * share
	}
	if total > 1 || total < 0.95 {
		t.Errorf("the environments together pace at %.3f of each quota, want 0.95-1", total)
	}
}
