package limits

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// quotaRow is one row of the "Quotas" table of docs/cloud.md.
type quotaRow struct {
	limit, key, adjustable, source string
	rate                           float64
	line                           int
}

// parseQuotaTable reads the markdown table under "## Quotas" of the doc.
func parseQuotaTable(t *testing.T, path string) []quotaRow {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []quotaRow
	in, header := false, false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			in = line == "## Quotas"
			continue
		case !in || !strings.HasPrefix(line, "|"):
			if header && len(rows) > 0 {
				in = false
			}
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if !header {
			want := []string{"Limit", "Preset key", "Default (per second)", "Adjustable", "Source"}
			if strings.Join(cells, ",") != strings.Join(want, ",") {
				t.Fatalf("%s:%d: quota table header %q, want %q", path, n, cells, want)
			}
			header = true
			continue
		}
		if strings.HasPrefix(cells[0], "---") {
			continue
		}
		if len(cells) != 5 {
			t.Fatalf("%s:%d: %d cells, want 5: %q", path, n, len(cells), line)
		}
		rate, err := strconv.ParseFloat(strings.ReplaceAll(cells[2], ",", ""), 64)
		key := strings.Trim(cells[1], "`")
		if cells[1] == "—" {
			key = ""
		} else if err != nil {
			t.Fatalf("%s:%d: default %q is not a number", path, n, cells[2])
		}
		src := cells[4]
		if i := strings.IndexAny(src, " ("); i > 0 {
			src = src[:i]
		}
		rows = append(rows, quotaRow{limit: cells[0], key: key, rate: rate, adjustable: cells[3], source: src, line: n})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatalf("%s: no quota table under ## Quotas", path)
	}
	return rows
}

func TestAWSDefaultMatchesDocs(t *testing.T) {
	doc := filepath.Join("..", "..", "..", "docs", "cloud.md")
	rows := parseQuotaTable(t, doc)
	preset := map[string]Quota{}
	for _, q := range AWSDefaultQuotas() {
		if _, dup := preset[q.Key]; dup {
			t.Errorf("preset lists %s twice", q.Key)
		}
		preset[q.Key] = q
	}
	seen := map[string]bool{}
	for _, r := range rows {
		if r.key == "" {
			continue
		}
		q, ok := preset[r.key]
		if !ok {
			t.Errorf("%s:%d: %s is in the docs table but not in the aws-default preset", doc, r.line, r.key)
			continue
		}
		seen[r.key] = true
		if q.Rate != r.rate || q.Adjustable != r.adjustable || q.Source != r.source {
			t.Errorf("%s:%d: %s: docs say %v/s adjustable %s source %s; preset has %v/s adjustable %s source %s",
				doc, r.line, r.key, r.rate, r.adjustable, r.source, q.Rate, q.Adjustable, q.Source)
		}
	}
	for k := range preset {
		if !seen[k] {
			t.Errorf("preset has %s, which the docs table (%s, ## Quotas) does not list", k, doc)
		}
	}
	// Every limit the bootcert flow touches has a row.
	var all strings.Builder
	for _, r := range rows {
		all.WriteString(r.limit + " " + r.key + "\n")
	}
	for _, op := range []string{"CreateCertificateFromCsr", "CreateThing", "DescribeThing", "UpdateThing",
		"AttachPolicy", "AttachThingPrincipal", "UpdateCertificate", "DescribeCertificate",
		"AddThingToThingGroup", "RemoveThingFromThingGroup", "ListThingGroupsForThing", "ListThingPrincipals",
		"CreateJob", "DescribeJobExecution", "StartNextPendingJobExecution", "UpdateJobExecution",
		"RegisterThing", "connectsPerSecond", "connectsPerClientPerSecond", "publishesPerConnectionPerSecond", "Publish"} {
		if !strings.Contains(all.String(), op) {
			t.Errorf("docs quota table has no row for %s", op)
		}
	}
	// The preset as a limits file parses, and Load returns the same.
	l, err := Load(PresetAWSDefault)
	if err != nil {
		t.Fatal(err)
	}
	if l.APIRate("CreateCertificateFromCsr") != preset["CreateCertificateFromCsr"].Rate || l.ConnectsPerSecond != preset["connectsPerSecond"].Rate {
		t.Fatalf("Load(aws-default) differs from AWSDefaultQuotas: %+v", l)
	}
}

func TestScaled(t *testing.T) {
	l := AWSDefault().Scaled(10)
	if l.APIRate("CreateCertificateFromCsr") != 150 || l.ConnectsPerSecond != 5000 || l.ConnectsPerClientPerSecond != 10 {
		t.Fatalf("scaled: %+v", l)
	}
	if AWSDefault().APIRate("CreateCertificateFromCsr") != 15 {
		t.Fatal("Scaled changed the original")
	}
	if (Limits{}).Scaled(10).APIRate("X") != 0 {
		t.Fatal("unlimited became limited")
	}
}
