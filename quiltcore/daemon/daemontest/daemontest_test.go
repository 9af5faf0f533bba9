package daemontest

import (
	"fmt"
	"strings"
	"testing"
)

// fakeTB records Log calls and lets the test run the cleanups itself.
type fakeTB struct {
	testing.TB
	logs     []string
	cleanups []func()
}

func (f *fakeTB) Log(args ...any)   { f.logs = append(f.logs, fmt.Sprint(args...)) }
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }

func TestLoggerWritesThroughTBAndStopsAtCleanup(t *testing.T) {
	tb := &fakeTB{TB: t}
	l := Logger(tb)
	l.Debug("dialing", "addr", "127.0.0.1:6667")
	if len(tb.logs) != 1 || !strings.Contains(tb.logs[0], `level=DEBUG msg=dialing addr=127.0.0.1:6667`) ||
		strings.HasSuffix(tb.logs[0], "\n") {
		t.Fatalf("logs = %q", tb.logs)
	}
	for _, fn := range tb.cleanups {
		fn()
	}
	l.Info("late line from a goroutine still stopping")
	if len(tb.logs) != 1 {
		t.Errorf("logged after cleanup: %q", tb.logs)
	}
}
