// Command bootcert-admin does bootcert's account-level work (cloud setup)
// from a workstation or CI; the commands live in package ctl/admin. It is
// packaged apart from the gateway's bootcert package (nfpm-admin.yaml) because
// it links the AWS SDK.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/bootcert/bootcert/ctl/admin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := admin.Execute(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
