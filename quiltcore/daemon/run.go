package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/quilt/quilt/quiltcore/version"
)

// DefaultShutdownTimeout is how long a daemon has to stop after the first
// SIGTERM/SIGINT when Options.ShutdownTimeout is zero.
const DefaultShutdownTimeout = 10 * time.Second

// Options are the plain values Run needs. Mains fill them from the
// configuration ([log], [daemon]) and then from flags (Flags.Apply), so this
// package does not depend on the config package.
type Options struct {
	// Name is the program name used in logs and errors, e.g. "quilt-qmd" or
	// "quilt-smd irc". Default: the base name of os.Args[0].
	Name string

	LogLevel  string // debug, info, warn, error; "" = info
	LogFormat string // text or json; "" = text
	LogFile   string // "" = stderr

	// PIDFile, when set, is acquired before run starts (see AcquirePIDFile)
	// and released when Run returns.
	PIDFile string

	// ShutdownTimeout bounds the time from the first SIGTERM/SIGINT to the
	// run function's return. Zero means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// Logger, when set, is used as is and LogLevel, LogFormat and LogFile are
	// ignored; tests pass daemontest.Logger(t).
	Logger *slog.Logger

	// Signals, when set, replaces the process's SIGTERM, SIGINT and SIGHUP,
	// so tests can deliver signals without signalling the test binary.
	Signals <-chan os.Signal

	// NotifySocket is the sd_notify socket. Default: $NOTIFY_SOCKET.
	NotifySocket string

	// KeepStdio skips SetupStdio (for tests and for callers that are not
	// daemons).
	KeepStdio bool
}

// Daemon is the handle the run function gets: readiness, reload hooks and
// the logger.
type Daemon struct {
	name         string
	log          *slog.Logger
	notifySocket string

	// stateMu orders what systemd hears: READY=1 before any RELOADING=1,
	// and nothing after STOPPING=1.
	stateMu  sync.Mutex
	ready    bool
	stopping bool
	readyC   chan struct{}

	mu      sync.Mutex
	reloads []func(context.Context) error

	logFile *logFile // re-opened on SIGHUP; nil when logging to stderr
}

// Name is Options.Name.
func (d *Daemon) Name() string { return d.name }

// Logger is the daemon's logger; give subsystems Logger().With(KeyComponent, ...).
func (d *Daemon) Logger() *slog.Logger { return d.log }

// Ready declares the daemon ready to serve: it logs "ready", sends READY=1 to
// systemd and closes ReadyC. Call it once listeners are open and the daemon
// can do its job; later calls do nothing.
func (d *Daemon) Ready() {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	if d.ready {
		return
	}
	d.ready = true
	d.log.Info("ready")
	if !d.stopping {
		d.notify("READY=1")
	}
	close(d.readyC)
}

// ReadyC is closed by Ready.
func (d *Daemon) ReadyC() <-chan struct{} { return d.readyC }

// setState sends state to systemd unless shutdown has been announced, and
// reports whether the daemon had declared itself ready.
func (d *Daemon) setState(state string, onlyIfReady bool) bool {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	if !d.stopping && (d.ready || !onlyIfReady) {
		d.notify(state)
	}
	return d.ready
}

func (d *Daemon) stop() {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	if !d.stopping {
		d.stopping = true
		d.notify("STOPPING=1")
	}
}

// OnReload registers fn to run on SIGHUP, after the hooks registered before
// it. Hooks run one at a time in their own goroutine, never concurrently
// with another reload; ctx is the run context, cancelled at shutdown. An
// error is logged and the daemon keeps running with what it had, so a hook
// must leave its state unchanged when it fails (validate, then swap).
func (d *Daemon) OnReload(fn func(ctx context.Context) error) {
	d.mu.Lock()
	d.reloads = append(d.reloads, fn)
	d.mu.Unlock()
}

func (d *Daemon) notify(state string) {
	if err := SDNotify(d.notifySocket, state); err != nil {
		d.log.Warn("systemd notification failed", KeyError, err)
	}
}

func (d *Daemon) reload(ctx context.Context) {
	start := time.Now()
	d.log.Info("reloading")
	wasReady := d.setState(reloadingState(), true)
	failed := 0
	if d.logFile != nil {
		if err := d.logFile.Reopen(); err != nil {
			failed++
			d.log.Error("reload: re-opening log file failed", KeyError, err)
		}
	}
	d.mu.Lock()
	hooks := append([]func(context.Context) error(nil), d.reloads...)
	d.mu.Unlock()
	for i, fn := range hooks {
		if err := callHook(ctx, fn); err != nil {
			failed++
			d.log.Error("reload hook failed", "hook", i, KeyError, err)
		}
	}
	d.log.Info("reloaded", "hooks", len(hooks), "failed", failed, "duration", time.Since(start))
	if wasReady {
		d.setState("READY=1", true)
	}
}

// callHook turns a panicking reload hook into an error: SIGHUP must never
// take the daemon down.
func callHook(ctx context.Context, fn func(context.Context) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return fn(ctx)
}

// Run runs a daemon: it sets up logging, the standard descriptors and the
// pid file, calls run in its own goroutine, and handles signals (see the
// package documentation) until run returns or shutdown is cut short. It
// returns the exit code; the main passes it to os.Exit.
//
// run must return when ctx is cancelled. A nil or context.Canceled error
// after a shutdown signal is a clean stop (ExitOK); any other error is
// logged and mapped with Exit. If run does not return within
// ShutdownTimeout of the first signal, or a second signal arrives, Run
// returns ExitShutdownTimeout while run is still running: the process is
// about to exit, and waiting longer would only hold up the init system.
func Run(ctx context.Context, o Options, run func(ctx context.Context, d *Daemon) error) int {
	if o.Name == "" {
		o.Name = programName()
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.NotifySocket == "" {
		o.NotifySocket = notifySocketFromEnv()
	}

	d := &Daemon{name: o.Name, notifySocket: o.NotifySocket, readyC: make(chan struct{}), log: o.Logger}
	if d.log == nil {
		logger, closer, err := NewLogger(o)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", o.Name, err)
			return ExitConfig
		}
		defer closer.Close()
		if lf, ok := closer.(*logFile); ok {
			d.logFile = lf
		}
		d.log = logger
	}
	log := d.log

	if !o.KeepStdio {
		if err := SetupStdio(); err != nil {
			log.Error("cannot set up standard descriptors", KeyError, err)
			return ExitFailure
		}
	}

	if o.PIDFile != "" {
		release, err := AcquirePIDFile(o.PIDFile)
		if err != nil {
			var are *AlreadyRunningError
			if errors.As(err, &are) {
				are.Program = o.Name
			}
			log.Error("cannot start", KeyError, err)
			return Exit(err)
		}
		defer func() {
			if err := release(); err != nil {
				log.Warn("pid file not removed", KeyPath, o.PIDFile, KeyError, err)
			}
		}()
	}

	sigs := o.Signals
	if sigs == nil {
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
		defer signal.Stop(ch)
		sigs = ch
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	log.Info("starting", "name", o.Name, "version", version.Version, KeyPID, os.Getpid(), "pid_file", o.PIDFile)
	errc := make(chan error, 1)
	go func() { errc <- callRun(runCtx, d, run) }()

	reloadReq := make(chan struct{}, 1) // one pending reload absorbs any number of SIGHUPs
	stopReloads := make(chan struct{})
	reloadsDone := make(chan struct{})
	var stopOnce sync.Once
	stopReloading := func() { stopOnce.Do(func() { close(stopReloads) }) }
	go func() {
		defer close(reloadsDone)
		for {
			select {
			case <-stopReloads:
				return
			case <-reloadReq:
				d.reload(runCtx)
			}
		}
	}()
	defer stopReloading()

	var (
		shuttingDown bool
		deadline     <-chan time.Time
		parentDone   = ctx.Done()
	)
	beginShutdown := func(reason string) {
		shuttingDown = true
		parentDone = nil
		log.Info("shutting down", "reason", reason, "timeout", o.ShutdownTimeout)
		d.stop()
		cancel()
		t := time.NewTimer(o.ShutdownTimeout)
		deadline = t.C
	}
	for {
		select {
		case err := <-errc:
			code := ExitOK
			switch {
			case err == nil:
			case shuttingDown && errors.Is(err, context.Canceled):
			default:
				code = Exit(err)
				if code == ExitOK { // e.g. flag.ErrHelp from an odd run func
					code = ExitFailure
				}
				log.Error("exiting on error", KeyError, err, "code", code)
			}
			d.stop()
			cancel()
			stopReloading()
			waitReloads(log, reloadsDone, o.ShutdownTimeout)
			if code == ExitOK {
				log.Info("stopped")
			}
			return code
		case sig := <-sigs:
			switch {
			case sig == syscall.SIGHUP && shuttingDown:
				log.Info("ignoring SIGHUP during shutdown")
			case sig == syscall.SIGHUP:
				select {
				case reloadReq <- struct{}{}:
				default:
					log.Info("reload already pending")
				}
			case !shuttingDown:
				beginShutdown(sig.String())
			default:
				log.Error("shutdown cut short by second signal", KeySignal, sig.String(), "code", ExitShutdownTimeout)
				return ExitShutdownTimeout
			}
		case <-parentDone:
			beginShutdown(context.Cause(ctx).Error())
		case <-deadline:
			log.Error("shutdown deadline exceeded", "timeout", o.ShutdownTimeout, "code", ExitShutdownTimeout)
			return ExitShutdownTimeout
		}
	}
}

// waitReloads stops the reload goroutine and waits for a reload in progress,
// within limits: a hook that ignores its cancelled context must not keep the
// process alive.
func waitReloads(log *slog.Logger, done <-chan struct{}, limit time.Duration) {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn("reload hook still running at exit")
	}
}

func callRun(ctx context.Context, d *Daemon, run func(context.Context, *Daemon) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return run(ctx, d)
}

var _ io.Closer = (*logFile)(nil)
