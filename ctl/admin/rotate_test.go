package admin

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/renewal"
)

func TestCloudRotateAgainstLab(t *testing.T) {
	labDir := filepath.Join(t.TempDir(), "lab")
	l, err := lab.Start(context.Background(), lab.Config{DataDir: labDir, MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		TemplatePath: filepath.Join("..", "..", "cloud", "template.yaml"), NoBuild: true})
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	now := time.Now()
	ago := func(d time.Duration) string { return strconv.FormatInt(now.Add(-d).Unix(), 10) }
	day := 24 * time.Hour
	for name, attrs := range map[string]map[string]string{
		"gw-old":   {"activated": "true", "operationalCert": "c1", "certNotBefore": ago(200 * day)},
		"gw-new":   {"activated": "true", "operationalCert": "c2", "certNotBefore": ago(10 * day)},
		"gw-never": {"activated": "true"},
	} {
		if _, err := l.Registry().CreateThing(name, "bootcert-gateway", attrs); err != nil {
			t.Fatal(err)
		}
	}
	rotate := func(args ...string) RotateResult {
		t.Helper()
		var res RotateResult
		out := mustAdmin(t, append([]string{"cloud", "rotate", "--lab", labDir, "--json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		slices.Sort(res.Requested)
		slices.Sort(res.AlreadyRequested)
		return res
	}
	requested := func(name string) string {
		th, err := l.Registry().DescribeThing(name)
		if err != nil {
			t.Fatal(err)
		}
		return th.Attributes[renewal.AttrRotationRequested]
	}
	t.Run("ok/older-than", func(t *testing.T) {
		res := rotate("--older-than", "90d")
		if strings.Join(res.Requested, ",") != "gw-never,gw-old" || res.Scanned != 3 {
			t.Fatalf("%+v", res)
		}
		if requested("gw-old") == "" || requested("gw-new") != "" {
			t.Fatalf("attributes: old %q new %q", requested("gw-old"), requested("gw-new"))
		}
	})
	t.Run("ok/idempotent", func(t *testing.T) {
		before := requested("gw-old")
		res := rotate("gw-old", "gw-new")
		if strings.Join(res.Requested, ",") != "gw-new" || strings.Join(res.AlreadyRequested, ",") != "gw-old" || requested("gw-old") != before {
			t.Fatalf("%+v", res)
		}
		if res := rotate("--all"); len(res.Requested) != 0 || len(res.AlreadyRequested) != 3 {
			t.Fatalf("--all after everything was requested: %+v", res)
		}
	})
	for _, tc := range []struct {
		name, want string
		args       []string
	}{
		{"fail/unknown-device", "gw-nope: no such thing", []string{"gw-nope"}},
		{"fail/bad-name", `device "bad name!"`, []string{"bad name!"}},
		{"fail/nothing-selected", "exactly one", nil},
		{"fail/two-selections", "exactly one", []string{"gw-old", "--all"}},
		{"fail/bad-duration", `--older-than "soon"`, []string{"--older-than", "soon"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runAdmin(t, append([]string{"cloud", "rotate", "--lab", labDir}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}
