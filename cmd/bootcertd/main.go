// Command bootcertd is the gateway daemon: it keeps the device's MQTT
// session to AWS IoT Core and rotates its hardware-held credentials.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/bootcert/bootcert/daemon"
	"github.com/bootcert/bootcert/daemon/cli"
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/internal/version"
	_ "github.com/bootcert/bootcert/keystore/all"
)

func main() {
	o := cli.Register(flag.CommandLine)
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s\n\n%s\n\n", cli.Synopsis, cli.Description)
		flag.PrintDefaults()
	}
	flag.Parse()
	if o.Version {
		fmt.Println("bootcertd", version.String())
		return
	}
	if o.Check != "" && o.Pace.StateDir != "" {
		// the unit's ExecStartPre: a broken file is retried on a growing delay
		if err := o.Pace.CheckConfig(context.Background(), o.Check); err != nil {
			os.Exit(1)
		}
		fmt.Printf("%s: ok\n", o.Check)
		return
	}
	if o.Check != "" {
		c, err := config.Load(o.Check)
		if err == nil {
			_, err = daemon.Check(c)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bootcertd:", err)
			os.Exit(1)
		}
		fmt.Printf("%s: ok\n", o.Check)
		return
	}
	// SIGHUP (systemctl reload) reloads the configuration; caught before
	// anything else, since its default action would end the process
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	c, err := config.Load(o.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bootcertd:", err)
		os.Exit(1)
	}
	level := new(slog.LevelVar) // log.level, changed by a reload
	level.UnmarshalText([]byte(c.Log.Level))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.RunReloadable(ctx, c, log, daemon.Reload{Signals: hup, Level: level}); err != nil {
		log.Error("bootcertd failed", "err", err)
		os.Exit(1)
	}
}
