// Package daemontest has test helpers for code that runs inside a quilt
// daemon. It imports testing, so only tests should import it.
package daemontest

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// Logger returns a debug-level logger that writes through tb.Log, so the
// logs of a test show only when it fails (or with go test -v). Lines logged
// after the test's cleanup has started are dropped: testing panics on a Log
// call after the test has completed, and a goroutine still shutting down
// must not turn a passing test into a crash.
func Logger(tb testing.TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct {
	tb      testing.TB
	mu      sync.Mutex
	stopped bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.tb.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

func (w *tbWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
