// Command ferretdb runs an embedded FerretDB (SQLite backend) for tests: a
// real MongoDB wire-protocol server in one process with no external database.
//
// It prints the MongoDB URI as the first line on stdout once the listener is
// bound (so callers may pass port 0 and read the chosen port back) and exits
// with status 0 on SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "TCP `address` to listen on; port 0 picks a free port")
	dir := flag.String("dir", "", "`directory` for the SQLite databases (created if missing)")
	logLevel := flag.String("log-level", "warn", "log `level` on stderr: debug, info, warn or error")
	flag.Parse()
	if err := run(*listen, *dir, *logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
}

func run(listen, dir, logLevel string) error {
	if dir == "" {
		return fmt.Errorf("-dir is required")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("-log-level %q: %w", logLevel, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("-dir %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return fmt.Errorf("-dir %q: %w", abs, err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	f, err := ferretdb.New(&ferretdb.Config{
		Handler: "sqlite",
		// FerretDB treats the URL as a directory only with the trailing slash.
		SQLiteURL: "file:" + abs + "/",
		Listener:  ferretdb.ListenerConfig{TCP: listen},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		return fmt.Errorf("listen %s, dir %s: %w", listen, abs, err)
	}
	// New has already bound the listener, so the URI carries the real port and
	// clients connecting now wait in the accept backlog until Run accepts them.
	fmt.Println(f.MongoDBURI())
	return f.Run(ctx)
}
