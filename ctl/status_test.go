package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bootcert/bootcert/daemon/control"
	"github.com/bootcert/bootcert/daemon/journal"
)

type statusEngine struct {
	st      control.Status
	rotated chan struct{}
}

func (f *statusEngine) Status() control.Status { return f.st }
func (f *statusEngine) RotateNow()             { close(f.rotated) }
func (f *statusEngine) Watch() (<-chan control.Status, func()) {
	return make(chan control.Status), func() {}
}

func TestStatusAndRotate(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "c.sock")
	fe := &statusEngine{rotated: make(chan struct{}), st: control.Status{
		Thing: "gw-1", Phase: journal.Idle, Connection: "connected", ConnectedWith: 2, Endpoint: "127.0.0.1:8883",
		Active:     control.ActiveCredential{Generation: 2, CertificateID: "abc", Issuer: "CN=ca", NotAfter: time.Date(2027, 11, 26, 0, 0, 0, 0, time.UTC), KeyURI: "pkcs11:token=t;object=op-2?pin-value=***", Backend: "pkcs11", Attested: true},
		LastResult: "SUCCEEDED", LastError: "cannot reach broker", Advice: "check the network",
		Summary:  "operational, certificate expires 2027-11-26",
		Counters: control.Counters{Fallbacks: 2}, LastFallback: "operational certificate (generation 1) refused", LastFallbackAt: time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC),
		LastRefusal: "the broker refused the subscription to certificates/gw-1/get2/+", LastRefusalAt: time.Date(2027, 1, 2, 3, 4, 6, 0, time.UTC),
		Reload: &control.Reload{At: time.Date(2027, 1, 4, 0, 0, 0, 0, time.UTC), File: "/etc/bootcert/bootcertd.toml", Result: control.ReloadRefused,
			Error: "config /etc/bootcert/bootcertd.toml: state.dir changed: only a restart applies it (systemctl restart bootcertd); nothing was applied", Changed: []string{"state.dir"}},
		RotationRequest: &control.RotationRequest{Reason: "age", Attempts: 2, SentAt: time.Date(2027, 1, 3, 0, 0, 0, 0, time.UTC), Answer: "rejected", Code: "THROTTLED", Message: "busy", NextAt: time.Date(2027, 1, 3, 2, 0, 0, 0, time.UTC)},
	}}
	srv, err := control.Listen(sock, fe, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	run := func(args ...string) string {
		root := NewRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(args)
		if err := root.ExecuteContext(context.Background()); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out.String()
	}
	text := run("status", "--socket", sock)
	for _, want := range []string{"gw-1", "operational, certificate expires 2027-11-26", "generation 2", "connected with generation 2", "2027-11-26T00:00:00Z", "(pkcs11)", "key attested:", "yes (TPM attestation verified by the cloud", "advice:", "check the network",
		"fallbacks to bootstrap:", "2 since start, last 2027-01-02T03:04:05Z: operational certificate (generation 1) refused",
		"last refusal:", "the broker refused the subscription to certificates/gw-1/get2/+ (2027-01-02T03:04:06Z)",
		"rotation request:", "age, attempt 2 at 2027-01-03T00:00:00Z: rejected THROTTLED (busy); next at 2027-01-03T02:00:00Z",
		"config reload:", "refused at 2027-01-04T00:00:00Z: config /etc/bootcert/bootcertd.toml: state.dir changed: only a restart applies it (systemctl restart bootcertd); nothing was applied; running with the configuration in force before"} {
		if !strings.Contains(text, want) {
			t.Errorf("status output lacks %q:\n%s", want, text)
		}
	}
	var st control.Status
	if err := json.Unmarshal([]byte(run("status", "--json", "--socket", sock)), &st); err != nil || st.Active.Generation != 2 || st.Reload == nil || st.Reload.Result != control.ReloadRefused {
		t.Errorf("status --json: %+v %v", st, err)
	}
	run("rotate", "--socket", sock)
	select {
	case <-fe.rotated:
	case <-time.After(10 * time.Second):
		t.Fatal("rotate did not reach the daemon")
	}
	root := NewRoot()
	root.SetArgs([]string{"status", "--socket", filepath.Join(t.TempDir(), "none")})
	root.SetOut(&bytes.Buffer{})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "is bootcertd running") {
		t.Errorf("status without daemon: %v", err)
	}
}
