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
	"github.com/bootcert/bootcert/daemon/config"
	"github.com/bootcert/bootcert/internal/version"
	_ "github.com/bootcert/bootcert/keystore/all"
)

func main() {
	cfgPath := flag.String("config", config.DefaultPath, "configuration file")
	check := flag.String("check-config", "", "validate this configuration file and the files it names, then exit")
	showVersion := flag.Bool("version", false, "print the version and exit")
	pace := paceFlags()
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: bootcertd [--config FILE] | --check-config FILE\n\nbootcertd keeps the gateway connected to AWS IoT Core and rotates its\nhardware-held credentials. Status: bootcertctl status.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *showVersion {
		fmt.Println("bootcertd", version.String())
		return
	}
	if *check != "" && pace.StateDir != "" {
		// the unit's ExecStartPre: a broken file is retried on a growing delay
		if err := pace.CheckConfig(context.Background(), *check); err != nil {
			os.Exit(1)
		}
		fmt.Printf("%s: ok\n", *check)
		return
	}
	if *check != "" {
		c, err := config.Load(*check)
		if err == nil {
			_, err = daemon.Check(c)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bootcertd:", err)
			os.Exit(1)
		}
		fmt.Printf("%s: ok\n", *check)
		return
	}
	// SIGHUP (systemctl reload) reloads the configuration; caught before
	// anything else, since its default action would end the process
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	c, err := config.Load(*cfgPath)
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
