package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/quilt/quilt/quiltcore/version"
)

// ConfigDirEnv names the configuration directory when -config is not given.
const ConfigDirEnv = "QUILT_CFG_DIR"

// DefaultConfigDir is the configuration directory when neither -config nor
// $QUILT_CFG_DIR says otherwise.
const DefaultConfigDir = "/etc/quilt"

// ConfigDir returns $QUILT_CFG_DIR, or DefaultConfigDir when it is unset or
// empty.
func ConfigDir() string {
	if dir := os.Getenv(ConfigDirEnv); dir != "" {
		return dir
	}
	return DefaultConfigDir
}

// Flags holds the flags every quilt daemon takes. Fields are valid after
// Parse.
type Flags struct {
	ConfigDir  string // -config
	LogLevel   string // -log-level; "" = as configured
	LogFormat  string // -log-format; "" = as configured
	LogFile    string // -log-file; "" = as configured
	PIDFile    string // -pid-file; "" = as configured
	Version    bool   // -version: the main prints the version and exits 0
	Foreground bool   // -foreground: accepted for init scripts; daemons never detach anyway

	fs *flag.FlagSet
}

// Usage is what -help prints besides the flags.
type Usage struct {
	// Synopsis is the command line form, e.g. "quilt-smd [flags] NAME".
	// Default: "<flag set name> [flags]".
	Synopsis string
	// Description explains what the program does; one or more paragraphs,
	// printed as given.
	Description string
	// Env lists the program's own environment variables; QUILT_CFG_DIR and
	// NOTIFY_SOCKET are always listed.
	Env []EnvVar
}

// EnvVar documents an environment variable in the usage text.
type EnvVar struct {
	Name        string
	Description string
}

// NewFlags registers the common flags on fs and sets fs.Usage. Give fs
// flag.ContinueOnError so Parse can return the error for Exit to map; the
// program's own flags may be added to fs before or after.
func NewFlags(fs *flag.FlagSet, u Usage) *Flags {
	f := &Flags{fs: fs}
	// No flag default: the usage line would print the value of
	// $QUILT_CFG_DIR at the time -help ran as if it were fixed. Parse fills
	// it in.
	fs.StringVar(&f.ConfigDir, "config", "",
		"configuration `DIR` holding quilt.cfg and smd.d/ (default $"+ConfigDirEnv+", else "+DefaultConfigDir+")")
	fs.Func("log-level", "log `LEVEL`: debug, info, warn or error (overrides [log] level; default info)", func(s string) error {
		if _, err := ParseLevel(s); err != nil {
			return err
		}
		f.LogLevel = s
		return nil
	})
	fs.Func("log-format", "log `FORMAT`: text or json (overrides [log] format; default text)", func(s string) error {
		if _, err := checkFormat(s); err != nil {
			return err
		}
		f.LogFormat = s
		return nil
	})
	fs.StringVar(&f.LogFile, "log-file", "", "append logs to `FILE` instead of stderr (overrides [log] file); SIGHUP re-opens it")
	fs.StringVar(&f.PIDFile, "pid-file", "", "write the pid to `FILE` and hold it locked while running (overrides [daemon] pid_dir)")
	fs.BoolVar(&f.Version, "version", false, "print the version and exit")
	fs.BoolVar(&f.Foreground, "foreground", false,
		"accepted and ignored: quilt daemons always run in the foreground; init scripts and systemd detach them")
	fs.Usage = func() { f.printUsage(fs.Output(), u) }
	return f
}

// Parse parses args with the flag set given to NewFlags, and sets ConfigDir
// to ConfigDir() when -config was not given. -help gives
// flag.ErrHelp (Exit maps it to 0); any other mistake is wrapped with
// ErrUsage (exit code 2). The flag package has already printed the problem
// and the usage to the flag set's output.
func (f *Flags) Parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return UsageError(err)
	}
	if f.ConfigDir == "" {
		f.ConfigDir = ConfigDir()
	}
	return nil
}

// IsSet reports whether the named flag was given on the command line.
func (f *Flags) IsSet(name string) bool {
	set := false
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == name {
			set = true
		}
	})
	return set
}

// Apply overwrites the fields of o whose flag was given on the command line,
// so flags win over the configuration file and defaults stay with it.
func (f *Flags) Apply(o *Options) {
	if f.IsSet("log-level") {
		o.LogLevel = f.LogLevel
	}
	if f.IsSet("log-format") {
		o.LogFormat = f.LogFormat
	}
	if f.IsSet("log-file") {
		o.LogFile = f.LogFile
	}
	if f.IsSet("pid-file") {
		o.PIDFile = f.PIDFile
	}
}

func (f *Flags) printUsage(w io.Writer, u Usage) {
	synopsis := u.Synopsis
	if synopsis == "" {
		synopsis = f.fs.Name() + " [flags]"
	}
	fmt.Fprintf(w, "Usage: %s\n", synopsis)
	if d := strings.TrimSpace(u.Description); d != "" {
		fmt.Fprintf(w, "\n%s\n", d)
	}
	fmt.Fprintf(w, "\nFlags:\n")
	f.fs.PrintDefaults()

	env := append([]EnvVar{
		{ConfigDirEnv, "configuration directory when -config is not given (default " + DefaultConfigDir + ")"},
		{NotifySocketEnv, "set by systemd (Type=notify): readiness, reload and stop are reported there"},
	}, u.Env...)
	width := 0
	for _, e := range env {
		width = max(width, len(e.Name))
	}
	fmt.Fprintf(w, "\nEnvironment:\n")
	for _, e := range env {
		fmt.Fprintf(w, "  %-*s  %s\n", width, e.Name, e.Description)
	}

	fmt.Fprintf(w, "\nSignals:\n")
	fmt.Fprintf(w, "  SIGTERM, SIGINT  shut down gracefully; a second one exits at once\n")
	fmt.Fprintf(w, "  SIGHUP           re-open the log file and reload what can change live\n")

	fmt.Fprintf(w, "\nExit codes:\n")
	fmt.Fprintf(w, "  %d  success, including a clean shutdown on SIGTERM/SIGINT\n", ExitOK)
	fmt.Fprintf(w, "  %d  runtime failure\n", ExitFailure)
	fmt.Fprintf(w, "  %d  usage error (bad flag or argument)\n", ExitUsage)
	fmt.Fprintf(w, "  %d  configuration error\n", ExitConfig)
	fmt.Fprintf(w, "  %d  already running (pid file held by a live process)\n", ExitAlreadyRunning)
	fmt.Fprintf(w, "  %d  shutdown did not complete in time, or was forced by a second signal\n", ExitShutdownTimeout)
}

// PrintVersion prints "NAME VERSION (GOVERSION OS/ARCH)" for -version.
func PrintVersion(w io.Writer, name string) {
	fmt.Fprintf(w, "%s %s (%s %s/%s)\n", name, version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
