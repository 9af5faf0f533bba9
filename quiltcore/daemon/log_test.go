package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{
		"": slog.LevelInfo, "debug": slog.LevelDebug, "INFO": slog.LevelInfo,
		"warn": slog.LevelWarn, "Warning": slog.LevelWarn, " error ": slog.LevelError,
	} {
		got, err := ParseLevel(in)
		if err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	_, err := ParseLevel("verbose")
	if err == nil || !strings.Contains(err.Error(), `"verbose"`) {
		t.Errorf("bad level: err = %v, want one naming \"verbose\"", err)
	}
}

func TestNewLoggerLevels(t *testing.T) {
	levels := []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}
	for i, name := range []string{"debug", "info", "warn", "error"} {
		l, c, err := NewLogger(Options{LogLevel: name, LogFile: filepath.Join(t.TempDir(), "x.log")})
		if err != nil {
			t.Fatal(err)
		}
		for j, lv := range levels {
			if got, want := l.Enabled(context.Background(), lv), j >= i; got != want {
				t.Errorf("level %s: Enabled(%v) = %v, want %v", name, lv, got, want)
			}
		}
		c.Close()
	}
}

func TestNewLoggerBadValues(t *testing.T) {
	if _, _, err := NewLogger(Options{LogLevel: "loud"}); err == nil || !strings.Contains(err.Error(), `"loud"`) {
		t.Errorf("bad level: %v", err)
	}
	if _, _, err := NewLogger(Options{LogFormat: "xml"}); err == nil || !strings.Contains(err.Error(), `"xml"`) {
		t.Errorf("bad format: %v", err)
	}
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	os.WriteFile(blocker, nil, 0o600)
	if _, _, err := NewLogger(Options{LogFile: filepath.Join(blocker, "sub", "q.log")}); err == nil || !strings.Contains(err.Error(), blocker) {
		t.Errorf("unwritable log file: %v", err)
	}
}

func TestNewLoggerFileJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "qmd.log")
	os.MkdirAll(filepath.Dir(path), 0o750)
	if err := os.WriteFile(path, []byte("earlier line\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	l, c, err := NewLogger(Options{LogFormat: "json", LogFile: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hidden")
	l.Info("attached", KeySource, "irc", KeyServer, "libera")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 || lines[0] != "earlier line" {
		t.Fatalf("file not appended to, or debug leaked: %q", data)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil {
		t.Fatalf("not JSON: %q: %v", lines[1], err)
	}
	if rec["msg"] != "attached" || rec["source"] != "irc" || rec["server"] != "libera" || rec["level"] != "INFO" {
		t.Errorf("record = %v", rec)
	}
}

func TestNewLoggerFileCreatedPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new", "smd.log")
	l, c, err := NewLogger(Options{LogFile: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Warn("disk low", KeyPath, "/var/lib/quilt")
	c.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^0o640 != 0 {
		t.Errorf("log file mode %v, want at most 0640", perm)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), `level=WARN msg="disk low" path=/var/lib/quilt`) {
		t.Errorf("text record = %q", data)
	}
}

// logrotate moves the file away and sends SIGHUP; Reopen must start a new
// file at the old path.
func TestLogFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "q.log")
	l, c, err := NewLogger(Options{LogFile: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l.Info("before")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := c.(*logFile).Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Info("after")
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), "before") || strings.Contains(string(old), "after") {
		t.Errorf("rotated file = %q", old)
	}
	if !strings.Contains(string(cur), "after") {
		t.Errorf("new file = %q", cur)
	}
}
