package daemon

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// daemonCmd is this test binary acting as a daemon main (helperMain
// "daemon" or "stuck"), so the tests deliver real signals to a real process.
func daemonCmd(t *testing.T, mode string, env []string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), helperEnv+"="+mode, NotifySocketEnv+"="), env...)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	return cmd, &stderr
}

func exitCode(t *testing.T, cmd *exec.Cmd, out *bytes.Buffer) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
		return 0
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("process did not exit; output:\n%s", out)
		return -1
	}
}

func TestEndToEndSignals(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "run", "quilt-test.pid")
	logFile := filepath.Join(dir, "log", "quilt-test.log")
	notifyPath, msgs := listenNotify(t)

	cmd, out := daemonCmd(t, "daemon", []string{NotifySocketEnv + "=" + notifyPath},
		"-pid-file", pidFile, "-log-file", logFile, "-log-format", "json", "-log-level", "debug", "-foreground")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	expectNotify(t, msgs, "READY=1")
	if got := readPID(t, pidFile); got != cmd.Process.Pid {
		t.Errorf("pid file holds %d, want the daemon's %d", got, cmd.Process.Pid)
	}

	// A second instance with the same pid file is refused, with exit code 4
	// and a message naming the holder.
	second, secondOut := daemonCmd(t, "daemon", nil, "-pid-file", pidFile)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, second, secondOut); code != ExitAlreadyRunning {
		t.Errorf("second instance: exit %d, want %d; output:\n%s", code, ExitAlreadyRunning, secondOut)
	}
	want := "quilt-test already running as pid " + strconv.Itoa(cmd.Process.Pid) + " (pid file " + pidFile + ")"
	if !strings.Contains(secondOut.String(), want) {
		t.Errorf("second instance output lacks %q:\n%s", want, secondOut)
	}

	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, msgs, "RELOADING=1")
	expectNotify(t, msgs, "READY=1")

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectNotify(t, msgs, "STOPPING=1")
	if code := exitCode(t, cmd, out); code != ExitOK {
		t.Errorf("exit %d after SIGTERM, want 0; output:\n%s", code, out)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file not removed at exit: %v", err)
	}

	// The log file holds the whole life, as JSON, debug level on.
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var seen []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec struct{ Msg string }
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line not JSON: %q", sc.Text())
		}
		seen = append(seen, rec.Msg)
	}
	got := strings.Join(seen, "|")
	if want := "starting|ready|reloading|hook ran|reloaded|shutting down|stopped"; got != want {
		t.Errorf("log messages\n got %s\nwant %s", got, want)
	}
	if out.Len() != 0 {
		t.Errorf("with -log-file nothing should reach stderr, got:\n%s", out)
	}
}

func TestEndToEndShutdownDeadline(t *testing.T) {
	notifyPath, msgs := listenNotify(t)
	cmd, out := daemonCmd(t, "stuck", []string{NotifySocketEnv + "=" + notifyPath, "HELPER_SHUTDOWN_TIMEOUT=200ms"})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	expectNotify(t, msgs, "READY=1")
	cmd.Process.Signal(syscall.SIGTERM)
	if code := exitCode(t, cmd, out); code != ExitShutdownTimeout {
		t.Errorf("exit %d, want %d; output:\n%s", code, ExitShutdownTimeout, out)
	}
	if !strings.Contains(out.String(), "shutdown deadline exceeded") {
		t.Errorf("output lacks the reason:\n%s", out)
	}
}

func TestEndToEndSecondSignal(t *testing.T) {
	notifyPath, msgs := listenNotify(t)
	cmd, out := daemonCmd(t, "stuck", []string{NotifySocketEnv + "=" + notifyPath, "HELPER_SHUTDOWN_TIMEOUT=1h"})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	expectNotify(t, msgs, "READY=1")
	cmd.Process.Signal(syscall.SIGINT)
	expectNotify(t, msgs, "STOPPING=1")
	cmd.Process.Signal(syscall.SIGINT)
	if code := exitCode(t, cmd, out); code != ExitShutdownTimeout {
		t.Errorf("exit %d, want %d; output:\n%s", code, ExitShutdownTimeout, out)
	}
}

func TestEndToEndCommandLine(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-help"}, ExitOK, "Exit codes:"},
		{[]string{"-bogus"}, ExitUsage, "flag provided but not defined: -bogus"},
		{[]string{"-log-level", "verbose"}, ExitUsage, `log level "verbose" is not one of`},
		{[]string{"-version"}, ExitOK, "quilt-test "},
	} {
		cmd, out := daemonCmd(t, "daemon", nil, tt.args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if code := exitCode(t, cmd, out); code != tt.code || !strings.Contains(out.String(), tt.want) {
			t.Errorf("%v: exit %d, want %d with %q in output:\n%s", tt.args, code, tt.code, tt.want, out)
		}
	}
}
