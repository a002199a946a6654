package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/factory"
)

// runAdmin runs bootcert-admin in-process and returns its standard output
// and its error.
func runAdmin(t testing.TB, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func mustAdmin(t testing.TB, args ...string) string {
	t.Helper()
	out, err := runAdmin(t, args...)
	if err != nil {
		t.Fatalf("bootcert-admin %v: %v", args, err)
	}
	return out
}

func TestCloudSetupAgainstLab(t *testing.T) {
	dir := t.TempDir()
	labDir := filepath.Join(dir, "lab")
	l, err := lab.Start(context.Background(), lab.Config{DataDir: labDir, MQTTAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", S3Addr: "127.0.0.1:0",
		TemplatePath: filepath.Join("..", "..", "cloud", "template.yaml"), NoBuild: true})
	if err != nil {
		t.Fatalf("lab.Start: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	caDir := filepath.Join(dir, "ca")
	if _, err := (&factory.Provisioner{}).InitCA(context.Background(), factory.CASpec{Dir: caDir, CommonName: "Test Factory CA", Days: 30}); err != nil {
		t.Fatal(err)
	}
	allow := filepath.Join(dir, "manifest.csv")
	os.WriteFile(allow, []byte("device_id,bootstrap_sha256,final_csr\ngw-1,,\n"), 0o600)
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("device_id\nnot a valid id!\n"), 0o600)
	args := func(list string) []string {
		return []string{"cloud", "setup", "--lab", labDir, "--bucket", "bootcert-123456789012-us-east-1",
			"--ca-cert", filepath.Join(caDir, "ca.pem"), "--ca-key", "file:" + filepath.Join(caDir, "ca.key"), "--allow-list", list, "--json"}
	}
	t.Run("fail/bad-allow-list-changes-nothing", func(t *testing.T) {
		_, err := runAdmin(t, args(bad)...)
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Fatalf("err %v, want the bad line named", err)
		}
	})
	var first, second struct {
		CACertificateID string   `json:"caCertificateId"`
		CARegistered    bool     `json:"caRegistered"`
		JobCreated      bool     `json:"jobCreated"`
		Uploaded        []string `json:"uploaded"`
	}
	t.Run("ok/first-run-registers", func(t *testing.T) {
		if err := json.Unmarshal([]byte(mustAdmin(t, args(allow)...)), &first); err != nil {
			t.Fatal(err)
		}
		if !first.CARegistered || !first.JobCreated || len(first.Uploaded) != 2 {
			t.Fatalf("%+v", first)
		}
	})
	t.Run("ok/second-run-is-idempotent", func(t *testing.T) {
		if err := json.Unmarshal([]byte(mustAdmin(t, args(allow)...)), &second); err != nil {
			t.Fatal(err)
		}
		if second.CARegistered || second.JobCreated || second.CACertificateID != first.CACertificateID {
			t.Fatalf("%+v", second)
		}
	})
}
