package ctl

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/bootcert/bootcert/daemon/control"
)

func init() { register(newStatusCmd) }

// addSocketFlag adds --socket (default $BOOTCERT_CONTROL_SOCKET or the
// packaged path).
func addSocketFlag(cmd *cobra.Command) *string {
	def := os.Getenv("BOOTCERT_CONTROL_SOCKET")
	if def == "" {
		def = control.DefaultSocket
	}
	v := new(string)
	cmd.Flags().StringVar(v, "socket", def, "bootcertd control socket (control.socket in bootcertd.toml; env BOOTCERT_CONTROL_SOCKET)")
	return v
}

func newStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the gateway's identity, credentials, connection and rotation state",
		Long: `status asks the local bootcertd (over its control socket) what it is doing:
thing name, rotation phase, the active credential (generation, certificate ID,
issuer, expiry, key URI and backend), the MQTT connection, the pending job, the
last rotation result and the last error with advice.

--watch keeps printing as the state changes (Ctrl-C to stop).`,
		Args: cobra.NoArgs,
	}
	asJSON := addJSONFlag(cmd)
	watch := cmd.Flags().Bool("watch", false, "keep printing the status as it changes")
	sock := addSocketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c := &control.Client{Path: *sock}
		out := cmd.OutOrStdout()
		print := func(s control.Status) error {
			if *asJSON {
				return writeJSON(out, s)
			}
			return printStatus(out, s)
		}
		if *watch {
			first := true
			return c.Watch(cmd.Context(), func(s control.Status) error {
				if !first && !*asJSON {
					fmt.Fprintln(out, "---")
				}
				first = false
				return print(s)
			})
		}
		s, err := c.Status(cmd.Context())
		if err != nil {
			return err
		}
		return print(s)
	}
	return cmd
}

func printStatus(w io.Writer, s control.Status) error {
	active := "bootstrap (generation 0)"
	if s.Active.Generation > 0 {
		active = "generation " + strconv.Itoa(s.Active.Generation)
	}
	conn := s.Connection
	if s.Connection == "connected" || s.Connection == "connecting" {
		with := "bootstrap certificate"
		if s.ConnectedWith > 0 {
			with = "generation " + strconv.Itoa(s.ConnectedWith)
		}
		conn += " with " + with
	}
	kv := []string{
		"thing", s.Thing,
		"state", s.Summary,
		"phase", string(s.Phase),
		"active credential", active,
		"certificate id", s.Active.CertificateID,
		"issuer", s.Active.Issuer,
		"not after", fmtTime(s.Active.NotAfter),
		"key", s.Active.KeyURI + " (" + s.Active.Backend + ")",
		"key attested", attestedLine(s.Active),
		"connection", conn,
		"endpoint", s.Endpoint,
		"pending job", orNone(s.PendingJob),
	}
	if s.LastResult != "" {
		r := string(s.LastResult) + " at " + fmtTime(s.LastResultAt)
		if s.LastReason != "" {
			r += ": " + s.LastReason
		}
		kv = append(kv, "last rotation", r)
	} else {
		kv = append(kv, "last rotation", "none")
	}
	kv = append(kv, "since start", countersLine(s.Counters))
	if s.ClockWait != "" {
		kv = append(kv, "clock", "waiting: "+s.ClockWait)
	}
	if s.LastError != "" {
		kv = append(kv, "last error", s.LastError+" ("+fmtTime(s.LastErrorAt)+")")
		if s.Advice != "" {
			kv = append(kv, "advice", s.Advice)
		}
	}
	if s.LastFallback != "" {
		kv = append(kv, "fallbacks to bootstrap", strconv.Itoa(s.Counters.Fallbacks)+" since start, last "+fmtTime(s.LastFallbackAt)+": "+s.LastFallback)
	}
	if s.LastRefusal != "" {
		kv = append(kv, "last refusal", s.LastRefusal+" ("+fmtTime(s.LastRefusalAt)+")")
	}
	if r := s.RotationRequest; r != nil {
		kv = append(kv, "rotation request", rotationRequest(r))
	}
	if r := s.Reload; r != nil {
		kv = append(kv, "config reload", reloadLine(r))
	}
	return writeFields(w, kv...)
}

// reloadLine is the last configuration reload (systemctl reload) in one
// line: "refused at T: why", "applied at T (changed: k1, k2)", ...
func reloadLine(r *control.Reload) string {
	out := r.Result + " at " + fmtTime(r.At)
	switch r.Result {
	case control.ReloadRefused:
		return out + ": " + r.Error + "; running with the configuration in force before"
	case control.ReloadPending:
		out += ", waits for the rotation in progress to end"
	case control.ReloadApplied:
		if !r.AppliedAt.IsZero() && !r.AppliedAt.Equal(r.At) {
			out = "applied at " + fmtTime(r.AppliedAt) + " (asked at " + fmtTime(r.At) + ")"
		}
	}
	if len(r.Changed) > 0 {
		out += " (changed: " + strings.Join(r.Changed, ", ") + ")"
	}
	return out
}

// rotationRequest is the one-line view of the device's last rotation
// request: "age, attempt 2 at T: rejected THROTTLED (m); next at T".
func rotationRequest(r *control.RotationRequest) string {
	out := r.Reason + ", attempt " + strconv.Itoa(r.Attempts) + " at " + fmtTime(r.SentAt) + ": "
	switch r.Answer {
	case "":
		out += "awaiting the answer"
	case "accepted":
		out += "accepted"
		if r.JobID != "" {
			out += " (job " + r.JobID + ")"
		}
	default:
		out += r.Answer
		if r.Code != "" {
			out += " " + r.Code
		}
		if r.Message != "" {
			out += " (" + r.Message + ")"
		}
	}
	if !r.NextAt.IsZero() && r.Answer != "accepted" {
		out += "; next at " + fmtTime(r.NextAt)
	}
	return out
}

// countersLine is the counters in one line (status --json has them all).
func countersLine(c control.Counters) string {
	out := fmt.Sprintf("%d connects, %d refusals, %d fallbacks", c.Connects, c.Refusals, c.Fallbacks)
	var rs []string
	for r, n := range c.Rotations {
		rs = append(rs, fmt.Sprintf("%d %s", n, r))
	}
	sort.Strings(rs)
	if len(rs) > 0 {
		out += ", rotations " + strings.Join(rs, ", ")
	}
	return out + " (since " + fmtTime(c.Since) + ")"
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// attestedLine says whether the cloud verified the active key's TPM
// attestation when it issued the certificate.
func attestedLine(a control.ActiveCredential) string {
	switch {
	case a.Attested:
		return "yes (TPM attestation verified by the cloud at issuance)"
	case a.Generation == 0:
		return "no (bootstrap key: vouched for by the factory)"
	default:
		return "no (the cloud did not verify an attestation for this key)"
	}
}
