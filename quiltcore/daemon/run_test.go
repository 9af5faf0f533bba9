package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quilt/quilt/quiltcore/daemon/daemontest"
)

type runResult struct {
	code int
	took time.Duration
}

// startRun runs Run in a goroutine with an injected signal channel.
func startRun(t *testing.T, o Options, run func(context.Context, *Daemon) error) (chan<- os.Signal, <-chan runResult) {
	t.Helper()
	sigs := make(chan os.Signal, 4)
	o.Signals = sigs
	o.KeepStdio = true
	if o.Logger == nil && o.LogFile == "" {
		o.Logger = daemontest.Logger(t)
	}
	res := make(chan runResult, 1)
	go func() {
		start := time.Now()
		code := Run(context.Background(), o, run)
		res <- runResult{code, time.Since(start)}
	}()
	return sigs, res
}

func waitCode(t *testing.T, res <-chan runResult) runResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return runResult{}
	}
}

func waitReady(t *testing.T, readyC <-chan (<-chan struct{})) {
	t.Helper()
	select {
	case c := <-readyC:
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatal("not ready")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run not called")
	}
}

// serve is a well-behaved run function: ready, then wait for shutdown.
func serve(readyC chan<- (<-chan struct{}), ret error) func(context.Context, *Daemon) error {
	return func(ctx context.Context, d *Daemon) error {
		d.Ready()
		readyC <- d.ReadyC()
		<-ctx.Done()
		return ret
	}
}

func TestRunGracefulShutdown(t *testing.T) {
	for _, tt := range []struct {
		name string
		sig  os.Signal
		ret  error
	}{
		{"SIGTERM, nil", syscall.SIGTERM, nil},
		{"SIGINT, context.Canceled", syscall.SIGINT, context.Canceled},
		{"SIGTERM, wrapped Canceled", syscall.SIGTERM, errors.Join(errors.New("stream closed"), context.Canceled)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			readyC := make(chan (<-chan struct{}), 1)
			sigs, res := startRun(t, Options{}, serve(readyC, tt.ret))
			waitReady(t, readyC)
			sigs <- tt.sig
			if r := waitCode(t, res); r.code != ExitOK {
				t.Errorf("code %d, want %d", r.code, ExitOK)
			}
		})
	}
}

func TestRunErrorAfterSignalIsReported(t *testing.T) {
	readyC := make(chan (<-chan struct{}), 1)
	sigs, res := startRun(t, Options{}, serve(readyC, errors.New("flush failed")))
	waitReady(t, readyC)
	sigs <- syscall.SIGTERM
	if r := waitCode(t, res); r.code != ExitFailure {
		t.Errorf("code %d, want %d", r.code, ExitFailure)
	}
}

func TestRunReturnsOnItsOwn(t *testing.T) {
	for _, tt := range []struct {
		name string
		run  func(context.Context, *Daemon) error
		want int
	}{
		{"nil", func(context.Context, *Daemon) error { return nil }, ExitOK},
		{"failure", func(context.Context, *Daemon) error { return errors.New("listen tcp 127.0.0.1:1: permission denied") }, ExitFailure},
		{"config", func(context.Context, *Daemon) error { return ConfigError(errors.New("smd.d/x.cfg: no protocol")) }, ExitConfig},
		{"usage", func(context.Context, *Daemon) error { return UsageError(errors.New("need NAME")) }, ExitUsage},
		{"panic", func(context.Context, *Daemon) error { panic("nil map") }, ExitFailure},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, res := startRun(t, Options{}, tt.run)
			if r := waitCode(t, res); r.code != tt.want {
				t.Errorf("code %d, want %d", r.code, tt.want)
			}
		})
	}
}

// stuck ignores cancellation until the test ends, as a wedged daemon would.
func stuck(t *testing.T, readyC chan<- (<-chan struct{})) func(context.Context, *Daemon) error {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // no goroutine outlives the test (goleak)
	return func(ctx context.Context, d *Daemon) error {
		d.Ready()
		readyC <- d.ReadyC()
		<-release
		return nil
	}
}

func TestRunShutdownDeadline(t *testing.T) {
	readyC := make(chan (<-chan struct{}), 1)
	const timeout = 150 * time.Millisecond
	sigs, res := startRun(t, Options{ShutdownTimeout: timeout}, stuck(t, readyC))
	waitReady(t, readyC)
	start := time.Now()
	sigs <- syscall.SIGTERM
	r := waitCode(t, res)
	if r.code != ExitShutdownTimeout {
		t.Errorf("code %d, want %d", r.code, ExitShutdownTimeout)
	}
	if took := time.Since(start); took < timeout {
		t.Errorf("returned after %v, before the %v deadline", took, timeout)
	}
}

func TestRunSecondSignal(t *testing.T) {
	readyC := make(chan (<-chan struct{}), 1)
	sigs, res := startRun(t, Options{ShutdownTimeout: time.Hour}, stuck(t, readyC))
	waitReady(t, readyC)
	sigs <- syscall.SIGTERM
	sigs <- syscall.SIGINT
	if r := waitCode(t, res); r.code != ExitShutdownTimeout {
		t.Errorf("code %d, want %d", r.code, ExitShutdownTimeout)
	}
}

func TestRunParentContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	readyC := make(chan (<-chan struct{}), 1)
	res := make(chan int, 1)
	go func() {
		res <- Run(ctx, Options{Logger: daemontest.Logger(t), KeepStdio: true, Signals: make(chan os.Signal)}, serve(readyC, nil))
	}()
	waitReady(t, readyC)
	cancel()
	select {
	case code := <-res:
		if code != ExitOK {
			t.Errorf("code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling the parent context did not stop Run")
	}
}

func TestRunReload(t *testing.T) {
	notifyPath, msgs := listenNotify(t)
	var (
		mu    sync.Mutex
		calls []string
	)
	record := func(s string) {
		mu.Lock()
		calls = append(calls, s)
		mu.Unlock()
	}
	reloaded := make(chan struct{}, 4)
	run := func(ctx context.Context, d *Daemon) error {
		d.OnReload(func(ctx context.Context) error { record("a"); return errors.New("smd.d/irc.cfg: bad port") })
		d.OnReload(func(ctx context.Context) error { record("b"); panic("hook bug") })
		d.OnReload(func(ctx context.Context) error { record("c"); reloaded <- struct{}{}; return nil })
		d.Ready()
		<-ctx.Done()
		return nil
	}
	sigs, res := startRun(t, Options{NotifySocket: notifyPath}, run)
	expectNotify(t, msgs, "READY=1")

	for round := 1; round <= 2; round++ {
		sigs <- syscall.SIGHUP
		select {
		case <-reloaded:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: hooks not called", round)
		}
		expectNotify(t, msgs, "RELOADING=1\nMONOTONIC_USEC=")
		expectNotify(t, msgs, "READY=1")
	}
	mu.Lock()
	got := strings.Join(calls, "")
	mu.Unlock()
	if got != "abcabc" {
		t.Errorf("hooks ran as %q, want every hook in order on each SIGHUP despite failures", got)
	}

	sigs <- syscall.SIGTERM
	expectNotify(t, msgs, "STOPPING=1")
	if r := waitCode(t, res); r.code != ExitOK {
		t.Errorf("code %d after reloads, want 0", r.code)
	}
}

func TestRunNotifyReadyAndStopping(t *testing.T) {
	notifyPath, msgs := listenNotify(t)
	readyC := make(chan (<-chan struct{}), 1)
	sigs, res := startRun(t, Options{NotifySocket: notifyPath}, serve(readyC, nil))
	expectNotify(t, msgs, "READY=1")
	waitReady(t, readyC)
	sigs <- syscall.SIGTERM
	expectNotify(t, msgs, "STOPPING=1")
	waitCode(t, res)
	select {
	case m := <-msgs:
		t.Errorf("unexpected notification %q", m)
	default:
	}
}

func TestRunPIDFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.pid")
	release, err := AcquirePIDFile(path)
	if err != nil {
		t.Fatal(err)
	}
	called := false
	_, res := startRun(t, Options{PIDFile: path}, func(context.Context, *Daemon) error { called = true; return nil })
	if r := waitCode(t, res); r.code != ExitAlreadyRunning {
		t.Errorf("code %d, want %d", r.code, ExitAlreadyRunning)
	}
	if called {
		t.Error("run was called although the pid file is held")
	}
	release()

	readyC := make(chan (<-chan struct{}), 1)
	sigs, res := startRun(t, Options{PIDFile: path}, serve(readyC, nil))
	waitReady(t, readyC)
	if readPID(t, path) != os.Getpid() {
		t.Error("pid file not written")
	}
	sigs <- syscall.SIGTERM
	waitCode(t, res)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left behind: %v", err)
	}
}

func TestRunBadLogConfig(t *testing.T) {
	called := false
	_, res := startRun(t, Options{LogLevel: "chatty", LogFile: filepath.Join(t.TempDir(), "q.log")},
		func(context.Context, *Daemon) error { called = true; return nil })
	if r := waitCode(t, res); r.code != ExitConfig || called {
		t.Errorf("code %d (run called: %v), want %d without running", r.code, called, ExitConfig)
	}
}

func TestRunLogFileReopenedOnSIGHUP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.log")
	reloaded := make(chan struct{}, 1)
	run := func(ctx context.Context, d *Daemon) error {
		d.OnReload(func(context.Context) error { reloaded <- struct{}{}; return nil })
		d.Ready()
		<-ctx.Done()
		return nil
	}
	sigs, res := startRun(t, Options{LogFile: path, LogFormat: "json"}, run)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if data, _ := os.ReadFile(path); strings.Contains(string(data), `"msg":"ready"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no ready line in the log file")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	sigs <- syscall.SIGHUP
	<-reloaded
	sigs <- syscall.SIGTERM
	if r := waitCode(t, res); r.code != ExitOK {
		t.Errorf("code %d", r.code)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), `"msg":"stopped"`) {
		t.Errorf("new log file lacks the shutdown lines: %q", data)
	}
}
