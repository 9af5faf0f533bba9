// Command quiltctl is the quilt command line; see package
// clients/quiltctl and `quiltctl -h`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/quilt/quilt/clients/quiltctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := quiltctl.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
