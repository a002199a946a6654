// Command bench-storm runs the fleet power-on storm (bench/storm) and prints
// its figures: go run ./bench/storm/cmd/bench-storm -devices 50 -scale 10.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bootcert/bootcert/bench/storm"
)

func main() {
	var o storm.Options
	flag.IntVar(&o.Devices, "devices", 50, "number of simulated gateways (N)")
	flag.DurationVar(&o.Window, "window", 10*time.Second, "power-on times spread uniformly over this window")
	flag.Float64Var(&o.Scale, "scale", 10, "multiply every rate of the aws-default preset (time-scaled quotas)")
	flag.DurationVar(&o.Keygen, "keygen", 230*time.Millisecond, "simulated TPM latency per key generation")
	flag.DurationVar(&o.Sign, "sign", 70*time.Millisecond, "simulated TPM latency per signature")
	flag.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "give up this long after the last power-on")
	flag.StringVar(&o.Template, "template", "cloud/template.yaml", "the SAM template the lab runs")
	flag.StringVar(&o.Dir, "dir", "", "lab and device state (default: a temporary directory, removed)")
	flag.IntVar(&o.FunctionWorkers, "function-workers", 16, "the lab's concurrent function invocations (its Lambda concurrency)")
	flag.BoolVar(&o.ScaleDevices, "scale-devices", true, "divide the devices' reply timeout and backoff by -scale too (the unscaled storm replayed faster)")
	svg := flag.String("svg", "", "also draw the run (devices committed over time against the bound, throttles per API) to this SVG file")
	labBin := flag.String("lab", "", `run the lab as this bootcert-lab binary ("build": go build ./cmd/bootcert-lab) so its CPU and memory are its own; default: in this process`)
	quiet := flag.Bool("quiet", false, "no progress lines")
	flag.Parse()
	if !*quiet {
		o.Progress = os.Stderr
	}
	if *labBin == "build" {
		dir, err := os.MkdirTemp("", "bench-storm-lab-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-storm:", err)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
		*labBin = filepath.Join(dir, "bootcert-lab")
		if out, err := exec.Command("go", "build", "-o", *labBin, "./cmd/bootcert-lab").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "bench-storm: building bootcert-lab: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	o.LabBinary = *labBin
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := storm.Run(ctx, o)
	if r != nil {
		r.Print(os.Stdout)
		if *svg != "" {
			f, ferr := os.Create(*svg)
			if ferr == nil {
				r.SVG(f)
				ferr = f.Close()
			}
			if ferr != nil {
				fmt.Fprintln(os.Stderr, "bench-storm: writing the SVG:", ferr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-storm:", err)
		stop()
		os.Exit(1)
	}
}
