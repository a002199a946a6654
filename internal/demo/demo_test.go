package demo

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bootcert/bootcert/daemon/journal"
	"github.com/bootcert/bootcert/internal/testenv"
)

// TestMakeDemo runs scripts/demo.sh (what `make demo` runs) for every
// scenario, with the real binaries built into a temporary directory, and
// checks the final state it reports (bootcertctl status --json, the lab's
// DescribeCertificate and DescribeJobExecution, the key files) and that
// every process it started is gone.
func TestMakeDemo(t *testing.T) {
	testenv.Require(t, "swtpm", "go")
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, sc := range Scenarios {
		t.Run(sc, func(t *testing.T) {
			resFile := filepath.Join(t.TempDir(), "result.json")
			cmd := exec.Command(filepath.Join(root, "scripts", "demo.sh"))
			cmd.Env = append(os.Environ(), "SCENARIO="+sc, "BIN="+bin, "RESULT="+resFile, "KEEP=")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Fatalf("scripts/demo.sh SCENARIO=%s: %v\n%s", sc, err, out.String())
			}
			var res Result
			b, err := os.ReadFile(resFile)
			if err != nil {
				t.Fatalf("no result file: %v\n%s", err, out.String())
			}
			if err := json.Unmarshal(b, &res); err != nil {
				t.Fatal(err)
			}
			text := out.String()
			for _, want := range []string{"$ bootcertctl status", "OK: scenario " + sc, "stopped bootcert-lab", "stopped swtpm"} {
				if !strings.Contains(text, want) {
					t.Errorf("output lacks %q", want)
				}
			}
			st := res.Status
			switch sc {
			case "rollback":
				if st.Active.Generation != 0 || st.ConnectedWith != 0 || st.LastResult != "ROLLED_BACK" {
					t.Errorf("status: generation %d, connected with %d, last %s", st.Active.Generation, st.ConnectedWith, st.LastResult)
				}
				if res.JobStatus != "FAILED" || res.BootstrapStatus != "ACTIVE" || res.Refusals < 3 || !res.RefusedCertsGone {
					t.Errorf("job %s, bootstrap %s, %d refusals, refused certificates deleted %v", res.JobStatus, res.BootstrapStatus, res.Refusals, res.RefusedCertsGone)
				}
				if !strings.Contains(text, "refused by fault injection (3)") || !strings.Contains(text, "rolled-back") {
					t.Errorf("rollback not narrated")
				}
			case FleetProvisioning:
				if st.Active.Generation != 2 || st.ConnectedWith != 2 || st.LastResult != "SUCCEEDED" || st.Connection != "connected" {
					t.Errorf("status: generation %d, connected with %d (%s), last %s; want 2 (provisioned 1, rotated to 2)", st.Active.Generation, st.ConnectedWith, st.Connection, st.LastResult)
				}
				if res.CACertificates != 0 || !strings.Contains(text, "factory CAs registered: 0") {
					t.Errorf("%d CA certificates registered, want none (claim-only setup, no --ca-cert)", res.CACertificates)
				}
				if res.JobStatus != "SUCCEEDED" || res.ClaimStatus != "ACTIVE" || res.HookRefusals < 1 || res.BootstrapID != "" {
					t.Errorf("job %s, claim certificate %s, %d hook refusals, bootstrap %q", res.JobStatus, res.ClaimStatus, res.HookRefusals, res.BootstrapID)
				}
				if res.ProvisionedID == "" || res.ProvisionedID == st.Active.CertificateID || (res.ProvisionedStatus != "INACTIVE" && res.ProvisionedStatus != "DELETED") {
					t.Errorf("provisioned certificate %s %s, active %s", res.ProvisionedID, res.ProvisionedStatus, st.Active.CertificateID)
				}
				if res.ThingAttributes["operationalCert"] != st.Active.CertificateID || len(res.ThingAttributes["keySha256"]) != 64 {
					t.Errorf("thing attributes %v", res.ThingAttributes)
				}
				if len(res.OperationalKeys) != 1 || res.OperationalKeys[0] != "op-2.tpmkey" || !strings.Contains(res.KeyInfo, "fixedTPM=yes") {
					t.Errorf("operational keys %v; key info:\n%s", res.OperationalKeys, res.KeyInfo)
				}
				for _, want := range []string{"claim certificate", "pre-provisioning hook: serial " + Thing + " refused", "403 AccessDenied",
					"operator: " + Thing + " added to the allow list", "CreateCertificateFromCsr accepted over the claim connection",
					"RegisterThing (template bootcert-fleet): thing " + Thing, "onboarded by claim", "job bootcert-rotation received", "ack over the new certificate accepted"} {
					if !strings.Contains(text, want) {
						t.Errorf("output lacks %q", want)
					}
				}
			default:
				if st.Active.Generation < 1 || st.ConnectedWith != st.Active.Generation || st.LastResult != "SUCCEEDED" || st.Connection != "connected" {
					t.Errorf("status: generation %d, connected with %d (%s), last %s", st.Active.Generation, st.ConnectedWith, st.Connection, st.LastResult)
				}
				if res.JobStatus != "SUCCEEDED" || res.BootstrapStatus != "INACTIVE" || res.ActiveCertStatus != "ACTIVE" {
					t.Errorf("job %s, bootstrap %s, operational %s", res.JobStatus, res.BootstrapStatus, res.ActiveCertStatus)
				}
				if len(res.OperationalKeys) != 1 || !strings.Contains(res.KeyInfo, "fixedTPM=yes") {
					t.Errorf("operational keys %v; key info:\n%s", res.OperationalKeys, res.KeyInfo)
				}
				// (a kill can come before bootcertd logs a step: the crash
				// scenario's narration is not checked line by line)
				for _, want := range []string{"JITR: unknown bootstrap certificate", "activator: allow list and CRL checked", "job bootcert-rotation received",
					"CreateCertificateFromCsr issued", "swapped to generation", "ack over the new certificate accepted", "now INACTIVE (was ACTIVE)"} {
					if sc == "default" && !strings.Contains(text, want) {
						t.Errorf("output lacks %q", want)
					}
				}
			}
			if sc == "crash" {
				if len(res.Kills) != len(crashTargets) || len(res.PIDs["bootcertd"]) != len(crashTargets)+1 {
					t.Errorf("kills %+v, bootcertd PIDs %v", res.Kills, res.PIDs["bootcertd"])
				}
				for _, k := range res.Kills {
					if k.Seen && k.Journal.Phase != k.Target && k.Journal.Phase != journal.Idle {
						t.Logf("killed waiting for %s, journal then at %s", k.Target, k.Journal.Phase)
					}
				}
			}
			for name, pids := range res.PIDs {
				for _, pid := range pids {
					if syscall.Kill(pid, 0) == nil && !zombieOrOther(pid, name) {
						t.Errorf("%s (pid %d) still running after the demo", name, pid)
					}
				}
			}
			if _, err := os.Stat(res.Dir); !os.IsNotExist(err) {
				t.Errorf("work directory %s not removed: %v", res.Dir, err)
			}
			if t.Failed() {
				t.Logf("demo output:\n%s", text)
			}
		})
	}
}

// zombieOrOther: the PID is no longer the program the demo started (reused)
// or a zombie.
func zombieOrOther(pid int, name string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return true
	}
	comm := s[strings.IndexByte(s, '(')+1 : i]
	return s[i+2] == 'Z' || !strings.HasPrefix(name, comm)
}
