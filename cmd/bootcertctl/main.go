// Command bootcertctl is the bootcert CLI; the commands live in package ctl.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/bootcert/bootcert/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Execute(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
