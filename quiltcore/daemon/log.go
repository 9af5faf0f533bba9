package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Attribute keys used across quilt, so that one query over the logs of every
// daemon finds the same thing under the same name. Handlers must not set
// slog.HandlerOptions.AddSource: its "source" key would collide with
// KeySource.
const (
	KeySource    = "source"    // source manager name (smd.d/NAME.cfg)
	KeyProtocol  = "protocol"  // irc, xmpp, matrix, imap, bzflag
	KeyServer    = "server"    // [server NAME] within a source manager
	KeyChannel   = "channel"   // channel, room or mailbox
	KeyUser      = "user"      // transient user name
	KeyComponent = "component" // subsystem within a daemon: link, router, store...
	KeyEventID   = "event_id"
	KeyActionID  = "action_id"
	KeyQueryID   = "query_id"
	KeyAddr      = "addr" // network address dialled or listened on
	KeyPath      = "path" // file the message is about
	KeyPID       = "pid"
	KeySignal    = "signal"
	KeyError     = "err"
)

// Log formats accepted by NewLogger.
const (
	LogFormatText = "text"
	LogFormatJSON = "json"
)

// ParseLevel reads a log level name: debug, info, warn (or warning), error,
// in any case. The empty string means info.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q is not one of debug, info, warn, error", s)
}

func checkFormat(s string) (string, error) {
	switch f := strings.ToLower(strings.TrimSpace(s)); f {
	case "", LogFormatText:
		return LogFormatText, nil
	case LogFormatJSON:
		return LogFormatJSON, nil
	}
	return "", fmt.Errorf("log format %q is not one of text, json", s)
}

// NewLogger builds the daemon's logger from o.LogLevel, o.LogFormat and
// o.LogFile. With no LogFile it writes to stderr (where systemd's journal or
// the init script's redirection picks it up); otherwise it appends to the
// file, creating it 0640 (logs name users and channels, so not world
// readable) and its directory 0750. The returned Closer closes the file; for
// stderr it does nothing. A bad level or format is an error naming the value.
func NewLogger(o Options) (*slog.Logger, io.Closer, error) {
	level, err := ParseLevel(o.LogLevel)
	if err != nil {
		return nil, nil, err
	}
	format, err := checkFormat(o.LogFormat)
	if err != nil {
		return nil, nil, err
	}
	var (
		w      io.Writer = os.Stderr
		closer io.Closer = nopCloser{}
	)
	if o.LogFile != "" {
		f, err := openLogFile(o.LogFile)
		if err != nil {
			return nil, nil, err
		}
		w, closer = f, f
	}
	return slog.New(newHandler(w, format, level)), closer, nil
}

func newHandler(w io.Writer, format string, level slog.Leveler) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if format == LogFormatJSON {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// logFile is an append-only log file that SIGHUP can re-open, so logrotate
// can move it away without copytruncate.
type logFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func openLogFile(path string) (*logFile, error) {
	lf := &logFile{path: path}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("log file %s: %w", path, err)
	}
	if err := lf.Reopen(); err != nil {
		return nil, err
	}
	return lf, nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	return l.f.Write(p)
}

// Reopen switches to a freshly opened file at the same path. If the open
// fails the old file stays in use, so logging never stops.
func (l *logFile) Reopen() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("log file %s: %w", l.path, err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
