package daemon

import (
	"errors"
	"flag"
	"fmt"
	"testing"
)

func TestExit(t *testing.T) {
	base := errors.New("quilt.cfg line 3: [log] level: bad value")
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, ExitOK},
		{"help", flag.ErrHelp, ExitOK},
		{"plain", errors.New("boom"), ExitFailure},
		{"usage", UsageError(base), ExitUsage},
		{"usage sentinel", fmt.Errorf("%w: need NAME", ErrUsage), ExitUsage},
		{"config", ConfigError(base), ExitConfig},
		{"config wrapped again", fmt.Errorf("loading: %w", ConfigError(base)), ExitConfig},
		{"already running", &AlreadyRunningError{Program: "quilt-qmd", PID: 42, Path: "/run/q.pid"}, ExitAlreadyRunning},
		{"already running wrapped", fmt.Errorf("start: %w", &AlreadyRunningError{}), ExitAlreadyRunning},
		{"shutdown", ErrShutdownTimeout, ExitShutdownTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Exit(tt.err); got != tt.want {
				t.Errorf("Exit(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

func TestKindErrorKeepsMessage(t *testing.T) {
	base := errors.New("smd.d/irc.cfg line 7: [server libera] port: \"x\" is not a number")
	err := ConfigError(base)
	if err.Error() != base.Error() {
		t.Errorf("message changed: %q", err)
	}
	if !errors.Is(err, base) || !errors.Is(err, ErrConfig) {
		t.Errorf("errors.Is lost the chain: %v", err)
	}
	if ConfigError(nil) != nil || UsageError(nil) != nil {
		t.Error("wrapping nil must give nil")
	}
}

func TestAlreadyRunningMessage(t *testing.T) {
	err := &AlreadyRunningError{Program: "quilt-qmd", PID: 1234, Path: "/run/quilt/quilt-qmd.pid"}
	want := "quilt-qmd already running as pid 1234 (pid file /run/quilt/quilt-qmd.pid)"
	if err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
}
