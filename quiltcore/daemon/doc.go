// Package daemon is the process lifecycle shared by quilt-qmd and quilt-smd
// (and the parts of quiltctl that want the same flags, logging and exit
// codes): command-line flags, log/slog setup, the pid file, standard file
// descriptors, signals, readiness notification and the exit code.
//
// A main stays small:
//
//	func main() {
//		fs := flag.NewFlagSet("quilt-qmd", flag.ContinueOnError)
//		f := daemon.NewFlags(fs, daemon.Usage{Description: "..."})
//		if err := f.Parse(os.Args[1:]); err != nil {
//			os.Exit(daemon.Exit(err)) // -help → 0, bad flag → 2
//		}
//		if f.Version {
//			daemon.PrintVersion(os.Stdout, fs.Name())
//			return
//		}
//		cfg, err := config.Load(f.ConfigDir)
//		if err != nil {
//			fmt.Fprintf(os.Stderr, "quilt-qmd: %v\n", err)
//			os.Exit(daemon.ExitConfig)
//		}
//		opts := daemon.Options{Name: "quilt-qmd", LogLevel: cfg.Log.Level, ...}
//		f.Apply(&opts) // flags given on the command line win over the file
//		os.Exit(daemon.Run(context.Background(), opts, serve))
//	}
//
// Daemons always run in the foreground: they never fork or detach. Init
// scripts (start-stop-daemon --background) and systemd (Type=notify) do that,
// and both work better with a process that stays the one they started.
//
// # Exit codes
//
// Run and Exit return one of these; init scripts and operators may rely on
// them, so the numbers never change:
//
//	0  ExitOK               success, including a clean shutdown after SIGTERM/SIGINT
//	1  ExitFailure          runtime failure (the daemon hit an error it cannot survive)
//	2  ExitUsage            usage error: unknown flag, bad flag value, wrong arguments
//	3  ExitConfig           configuration error: quilt.cfg or smd.d/NAME.cfg is invalid
//	4  ExitAlreadyRunning   another instance holds the pid file
//	5  ExitShutdownTimeout  shutdown did not complete: the deadline
//	                        (Options.ShutdownTimeout) passed, or a second
//	                        SIGTERM/SIGINT forced an immediate exit
//
// A Go panic that escapes to the runtime exits with 2 (Go's own convention),
// which collides with ExitUsage; Run recovers panics in the run function and
// returns ExitFailure instead.
//
// # Signals
//
// The first SIGTERM or SIGINT cancels the context given to the run function;
// the daemon has Options.ShutdownTimeout (default 10s) to return. A second
// SIGTERM/SIGINT, or the deadline, makes Run return ExitShutdownTimeout at
// once, whether or not the run function has returned. SIGHUP re-opens the log
// file (for logrotate) and calls the hooks registered with Daemon.OnReload; a
// failing hook is logged and never stops the daemon.
//
// # Goroutines
//
// Run owns two goroutines besides its caller's: one runs the run function,
// one runs reloads (so a slow hook never delays the reaction to SIGTERM, and
// two reloads never overlap). The signal loop itself runs in Run's caller.
// When shutdown is cut short, Run returns while the run goroutine is still
// going; the main is expected to exit at once.
//
// # Readiness
//
// Daemon.Ready logs "ready", tells systemd READY=1 over $NOTIFY_SOCKET
// (sd_notify, Type=notify or notify-reload) and closes Daemon.ReadyC. Around
// a reload the daemon sends RELOADING=1 and READY=1 again, and STOPPING=1 when
// shutdown begins.
package daemon
