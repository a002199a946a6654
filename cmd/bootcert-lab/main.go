// Command bootcert-lab runs the lab: a local stand-in for the AWS IoT Core,
// Jobs and S3 features bootcert uses. The work is in package cloud/lab.
//
//	bootcert-lab serve --data DIR [--mqtt ADDR] [--api ADDR] [--s3 ADDR]
//	                   [--template FILE|none] [--parameter NAME=VALUE ...]
//	                   [--limits FILE|aws-default] [--credentials FILE]
//	                   [--fault refuse-issued-certificates]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/bootcert/bootcert/cloud/lab"
	"github.com/bootcert/bootcert/cloud/lab/registry"
)

const usage = `bootcert-lab: a local stand-in for AWS IoT Core (MQTT with JITR, policies,
Jobs, rules), its control-plane REST API and S3, for development, demos, CI and
fleet simulation. Not a production broker.

Usage:
  bootcert-lab serve --data DIR [flags]

When ready it prints one JSON line with its endpoints, e.g.
  {"mqtt":"127.0.0.1:8883","api":"https://127.0.0.1:8443","s3":"https://127.0.0.1:PORT"}
and writes the same to DIR/endpoints.json, with DIR/server-ca.pem (trust it
in clients: mosquitto_pub --cafile DIR/server-ca.pem, AWS SDK HTTP client).
SIGTERM or Ctrl-C stops it; state persists in DIR.

Flags of serve:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	var o opts
	fs := serveFlags(stderr, &o)
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fs.Usage()
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] != "serve" {
		fmt.Fprintf(stderr, "bootcert-lab: unknown command %q (try: bootcert-lab serve --data DIR)\n", args[0])
		return 2
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bootcert-lab serve: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if o.data == "" {
		fmt.Fprintln(stderr, "bootcert-lab serve: --data DIR is required (the lab keeps its state there)")
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(stderr, "bootcert-lab serve: --log-level %q: want debug, info, warn or error\n", o.logLevel)
		return 2
	}
	noTemplate := false
	switch o.template {
	case "":
		if _, err := os.Stat("cloud/template.yaml"); err == nil {
			o.template = "cloud/template.yaml"
		} else {
			noTemplate = true
		}
	case "none":
		o.template = ""
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	if noTemplate {
		// Without the template there is no bucket, policy, rule or function:
		// `bootcertctl cloud setup` and every device would fail later.
		wd, _ := os.Getwd()
		logger.Warn("no template: cloud/template.yaml not found under the current directory; the lab runs without the stack's bucket, policies, rules and functions (pass --template FILE, or --template none to run bare on purpose)", "cwd", wd)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := lab.Start(ctx, lab.Config{
		DataDir: o.data, MQTTAddr: o.mqtt, APIAddr: o.api, S3Addr: o.s3,
		TemplatePath: o.template, LimitsPath: o.limits, CredentialsPath: o.credentials, Parameters: o.parameters,
		WriteBehind: o.writeBehind, Logger: logger,
	})
	if err != nil {
		fmt.Fprintln(stderr, "bootcert-lab:", err)
		return 1
	}
	if o.anyFault {
		l.SetFaults(o.faults)
	}
	b, _ := json.Marshal(l.Endpoints())
	fmt.Fprintln(stdout, string(b))
	<-ctx.Done()
	logger.Info("stopping")
	if err := l.Close(); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "bootcert-lab: stopping:", err)
		return 1
	}
	return 0
}

type opts struct {
	writeBehind time.Duration

	data, mqtt, api, s3, template, limits, credentials, logLevel string
	parameters                                                   map[string]string
	faults                                                       lab.Faults
	anyFault                                                     bool
}

func serveFlags(out io.Writer, o *opts) *flag.FlagSet {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.data, "data", "", "state directory (created if missing; required)")
	fs.StringVar(&o.mqtt, "mqtt", "127.0.0.1:8883", "MQTT over TLS listen address (port 0 picks a free port)")
	fs.StringVar(&o.api, "api", "127.0.0.1:8443", "HTTPS listen address of the IoT REST API, data-plane Publish and /lab/")
	fs.StringVar(&o.s3, "s3", "127.0.0.1:0", "HTTPS listen address of the S3 API")
	fs.StringVar(&o.template, "template", "", `AWS SAM template with the policies, rules and functions (default: cloud/template.yaml when it exists; "none" for no template)`)
	fs.StringVar(&o.limits, "limits", "", `quotas: a JSON file or "aws-default" (default: no limits)`)
	fs.StringVar(&o.credentials, "credentials", "", `JSON {"accessKeyId","secretAccessKey"[,"policy"]}: require SigV4 with this key pair; an IAM "policy" authorizes its S3 and IoT requests (default: any credentials)`)
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error (logs go to stderr as JSON)")
	fs.DurationVar(&o.writeBehind, "write-behind", registry.DefaultWriteBehindInterval, "answer registry changes before registry.json is written, saving them at most this much later (and on SIGTERM); 0: every change is on disk before its answer")
	fs.Func("parameter", "template parameter override NAME=VALUE, repeatable (e.g. ExplicitActivation=true)", func(v string) error {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return fmt.Errorf("want NAME=VALUE, got %q", v)
		}
		if o.parameters == nil {
			o.parameters = map[string]string{}
		}
		o.parameters[k] = val
		return nil
	})
	fs.Func("fault", "inject a fault from the start, repeatable: refuse-issued-certificates (see also POST /lab/faults)", func(v string) error {
		o.anyFault = true
		return lab.ParseFault(&o.faults, v)
	})
	fs.Usage = func() { fmt.Fprint(out, usage); fs.PrintDefaults() }
	return fs
}
