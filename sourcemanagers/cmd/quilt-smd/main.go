// Command quilt-smd runs one source manager: the servers of
// $QUILT_CFG/smd.d/NAME.cfg, linked to the leader query master.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/daemon"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/open"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

func main() {
	os.Exit(Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const description = `quilt-smd runs the source manager NAME: it connects the servers listed in
$QUILT_CFG/smd.d/NAME.cfg (one [server NAME] section each), keeps their user and
channel state, and streams what happens to the leader query master (found
through the registrar), which sends actions and live queries back.

Events not yet acknowledged by the query master are buffered in memory
([source_managers] buffer_events); when the buffer is full the servers stop
being read rather than lose anything. They are lost if the process exits.

Signals: SIGTERM/SIGINT stop gracefully; SIGHUP re-reads smd.d/NAME.cfg
(servers added, removed or changed are (re)connected) and re-opens the log.

Exit codes: 0 ok, 1 failure, 2 usage, 3 configuration error, 4 already
running, 5 shutdown timed out.`

// Main is the whole program, testable: it returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quilt-smd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	check := fs.String("check", "", "validate `NAME|FILE` (an smd.d name or a .cfg path), print a summary and exit (0 valid, 3 invalid)")
	f := daemon.NewFlags(fs, daemon.Usage{Synopsis: "quilt-smd [flags] NAME", Description: description})
	if err := f.Parse(args); err != nil {
		return daemon.Exit(err)
	}
	if f.Version {
		daemon.PrintVersion(stdout, "quilt-smd")
		return daemon.ExitOK
	}
	cfg, err := config.Load(f.ConfigDir)
	if err != nil {
		fmt.Fprintf(stderr, "quilt-smd: %v\n", err)
		return daemon.ExitConfig
	}
	if *check != "" {
		return runCheck(cfg, *check, stdout, stderr)
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "quilt-smd: exactly one source manager NAME is required (the smd.d file name without .cfg); -h for help")
		return daemon.ExitUsage
	}
	name := fs.Arg(0)
	sm, err := cfg.LoadSourceManager(name)
	if err != nil {
		fmt.Fprintf(stderr, "quilt-smd: %v\n", err)
		return daemon.ExitConfig
	}
	if !hasDriver(string(sm.Protocol)) {
		fmt.Fprintf(stderr, "quilt-smd: %s: protocol %q is not built into this binary (have: %s)\n", sm.Path, sm.Protocol, driverNames())
		return daemon.ExitConfig
	}
	opts := daemon.Options{
		Name:            "quilt-smd " + name,
		LogLevel:        cfg.Log.Level,
		LogFormat:       cfg.Log.Format,
		LogFile:         cfg.Log.File,
		PIDFile:         filepath.Join(cfg.Daemon.PidDir, "quilt-smd-"+name+".pid"),
		ShutdownTimeout: cfg.Daemon.ShutdownTimeout,
	}
	if cfg.Daemon.PidDir == "" {
		opts.PIDFile = ""
	}
	f.Apply(&opts)
	return daemon.Run(ctx, opts, func(ctx context.Context, d *daemon.Daemon) error {
		return serve(ctx, d, cfg, sm)
	})
}

func serve(ctx context.Context, d *daemon.Daemon, cfg *config.Config, sm *config.SourceManager) error {
	log := d.Logger().With(daemon.KeyProtocol, string(sm.Protocol)) // the runtime adds source
	ropts := registrar.Options{
		Address:    cfg.Registrar.Address,
		Token:      cfg.Registrar.Token.Reveal(),
		Datacenter: cfg.Registrar.Datacenter,
		TLS: registrar.TLSOptions{
			Enable: cfg.Registrar.TLS, CAFile: cfg.Registrar.TLSCAFile, CertFile: cfg.Registrar.TLSCertFile,
			KeyFile: cfg.Registrar.TLSKeyFile, InsecureSkipVerify: cfg.Registrar.TLSSkipVerify,
		},
		Logger: log.With(daemon.KeyComponent, "registrar"),
	}
	if cfg.Registrar.Embedded {
		// The embedded registrar lives in the query master; reach it there.
		ropts.QueryMaster = cfg.QueryMaster.Advertise
	}
	reg, err := open.New(ctx, ropts)
	if err != nil {
		return fmt.Errorf("registrar: %w", err)
	}
	defer reg.Close()
	m, err := runtime.New(runtime.Options{
		Config:    sm,
		Drivers:   drivers,
		Registrar: reg,
		LeaderKey: cfg.QueryMaster.LeaderKey,
		Link: runtime.LinkOptions{
			BufferEvents: cfg.Managers.BufferEvents,
			BatchSize:    cfg.Managers.BatchSize,
			BatchDelay:   cfg.Managers.BatchDelay,
			MaxInFlight:  cfg.Managers.MaxInFlight,
			Heartbeat:    cfg.Managers.Heartbeat,
		},
		Logger: log,
	})
	if err != nil {
		return daemon.ConfigError(err)
	}
	d.OnReload(func(context.Context) error {
		next, err := cfg.LoadSourceManager(sm.Name)
		if err != nil {
			return fmt.Errorf("reload kept the running configuration: %w", err)
		}
		return m.Reload(next)
	})
	d.Ready()
	return m.Run(ctx)
}

// runCheck validates one smd.d file (by name or path) and prints a summary.
func runCheck(cfg *config.Config, arg string, stdout, stderr io.Writer) int {
	var sm *config.SourceManager
	var err error
	if strings.HasSuffix(arg, ".cfg") || strings.ContainsRune(arg, os.PathSeparator) {
		sm, err = config.CheckSourceManagerFile(arg)
	} else {
		sm, err = cfg.LoadSourceManager(arg)
	}
	if err == nil && !hasDriver(string(sm.Protocol)) {
		err = fmt.Errorf("%s: protocol %q is not built into this binary (have: %s)", sm.Path, sm.Protocol, driverNames())
	}
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				fmt.Fprintln(stderr, e)
			}
		} else {
			fmt.Fprintln(stderr, err)
		}
		return daemon.ExitConfig
	}
	fmt.Fprintf(stdout, "%s: ok: source manager %q, protocol %s, %d server(s)\n", sm.Path, sm.Name, sm.Protocol, len(sm.Servers))
	for _, s := range sm.Servers {
		state := "enabled"
		if !s.Enabled || !sm.Enabled {
			state = "disabled"
		}
		chans := make([]string, 0, len(s.Channels))
		for _, c := range s.Channels {
			chans = append(chans, c.Name)
		}
		fmt.Fprintf(stdout, "  [server %s] %s, channels: %s\n", s.Name, state, strings.Join(chans, " "))
	}
	return daemon.ExitOK
}

func hasDriver(p string) bool {
	for _, d := range drivers {
		if d.Protocol() == p {
			return true
		}
	}
	return false
}

func driverNames() string {
	var n []string
	for _, d := range drivers {
		n = append(n, d.Protocol())
	}
	return strings.Join(n, ", ")
}
