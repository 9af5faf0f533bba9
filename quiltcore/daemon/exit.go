package daemon

import (
	"errors"
	"flag"
	"fmt"
)

// Exit codes; see the package documentation. Do not renumber.
const (
	ExitOK              = 0
	ExitFailure         = 1
	ExitUsage           = 2
	ExitConfig          = 3
	ExitAlreadyRunning  = 4
	ExitShutdownTimeout = 5
)

var (
	// ErrUsage marks a command-line mistake (exit code 2). Flags.Parse wraps
	// its errors with it; mains wrap their own argument checks with UsageError.
	ErrUsage = errors.New("usage error")
	// ErrConfig marks an invalid configuration (exit code 3). Wrap errors from
	// the config package with ConfigError.
	ErrConfig = errors.New("configuration error")
	// ErrAlreadyRunning: another live instance holds the pid file (exit code 4).
	// AcquirePIDFile returns an *AlreadyRunningError, which matches it.
	ErrAlreadyRunning = errors.New("already running")
	// ErrShutdownTimeout: the daemon did not stop in time (exit code 5).
	ErrShutdownTimeout = errors.New("shutdown deadline exceeded")
)

// UsageError wraps err so that Exit maps it to ExitUsage. It returns nil for
// a nil err.
func UsageError(err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: ErrUsage, err: err}
}

// ConfigError wraps err so that Exit maps it to ExitConfig. It returns nil for
// a nil err. The message is err's own: the config package already names the
// file, section, key and line.
func ConfigError(err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: ErrConfig, err: err}
}

// kindError adds a sentinel to an error without changing its message, so the
// operator reads the config package's words, not ours.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// Exit maps an error to the process exit code: nil and flag.ErrHelp (the user
// asked for -help) give ExitOK; errors matching ErrUsage, ErrConfig,
// ErrAlreadyRunning or ErrShutdownTimeout give their code; anything else
// gives ExitFailure.
func Exit(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.Is(err, ErrUsage):
		return ExitUsage
	case errors.Is(err, ErrConfig):
		return ExitConfig
	case errors.Is(err, ErrAlreadyRunning):
		return ExitAlreadyRunning
	case errors.Is(err, ErrShutdownTimeout):
		return ExitShutdownTimeout
	default:
		return ExitFailure
	}
}

// AlreadyRunningError says which process holds the pid file.
type AlreadyRunningError struct {
	Program string // our program name, e.g. quilt-qmd
	PID     int    // the holder's pid; 0 if the file did not say yet
	Path    string // the pid file
}

func (e *AlreadyRunningError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("%s already running (pid file %s is locked by another process)", e.Program, e.Path)
	}
	return fmt.Sprintf("%s already running as pid %d (pid file %s)", e.Program, e.PID, e.Path)
}

// Is makes errors.Is(err, ErrAlreadyRunning) true.
func (e *AlreadyRunningError) Is(target error) bool { return target == ErrAlreadyRunning }
