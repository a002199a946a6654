// Command demo runs bootcert's end-to-end demo (package internal/demo):
// make demo [SCENARIO=default|rollback|crash|fleet-provisioning] [KEEP=1].
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bootcert/bootcert/internal/demo"
)

func main() {
	scenario := flag.String("scenario", "default", "default, rollback, crash or fleet-provisioning")
	bin := flag.String("bin", "bin", "directory with bootcertd, bootcertctl, bootcert-admin and bootcert-lab")
	template := flag.String("template", "cloud/template.yaml", "SAM template the lab loads")
	keep := flag.Bool("keep", os.Getenv("KEEP") == "1", "keep the work directory (also KEEP=1)")
	wait := flag.Duration("wait", 60*time.Second, "longest wait for each observed state (a hang guard)")
	result := flag.String("result", "", "write the final state (demo.Result) as JSON to this file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := demo.Run(ctx, demo.Options{Scenario: *scenario, Bin: *bin, Template: *template, Keep: *keep, Out: os.Stdout, Wait: *wait})
	if *result != "" && res != nil {
		if werr := demo.WriteResult(*result, res); werr != nil {
			fmt.Fprintln(os.Stderr, "demo:", werr)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}
