package daemon

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
)

func newTestFlags(t *testing.T) (*flag.FlagSet, *Flags, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	fs := flag.NewFlagSet("quilt-smd", flag.ContinueOnError)
	fs.SetOutput(&out)
	f := NewFlags(fs, Usage{
		Synopsis:    "quilt-smd [flags] NAME",
		Description: "quilt-smd runs the source manager described by smd.d/NAME.cfg.",
		Env:         []EnvVar{{"QUILT_IRC_PASSWORD", "password for servers that name it"}},
	})
	return fs, f, &out
}

func TestFlagsDefaults(t *testing.T) {
	t.Setenv(ConfigDirEnv, "")
	_, f, _ := newTestFlags(t)
	if err := f.Parse([]string{"irc"}); err != nil {
		t.Fatal(err)
	}
	if f.ConfigDir != DefaultConfigDir {
		t.Errorf("ConfigDir = %q, want %q", f.ConfigDir, DefaultConfigDir)
	}
	t.Setenv(ConfigDirEnv, "/srv/quilt")
	_, f, _ = newTestFlags(t)
	if err := f.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if f.ConfigDir != "/srv/quilt" {
		t.Errorf("ConfigDir = %q, want $%s", f.ConfigDir, ConfigDirEnv)
	}
}

func TestFlagsParseAndApply(t *testing.T) {
	fs, f, _ := newTestFlags(t)
	err := f.Parse([]string{"-config", "/tmp/q", "-log-level", "debug", "-log-format", "json", "-pid-file", "/run/q.pid", "-foreground", "irc"})
	if err != nil {
		t.Fatal(err)
	}
	if fs.Arg(0) != "irc" || f.ConfigDir != "/tmp/q" || !f.Foreground {
		t.Errorf("parsed %+v args %v", f, fs.Args())
	}
	// Values from the config file survive unless a flag overrides them.
	o := Options{LogLevel: "warn", LogFormat: "text", LogFile: "/var/log/quilt/smd.log", PIDFile: "/run/quilt/x.pid"}
	f.Apply(&o)
	want := Options{LogLevel: "debug", LogFormat: "json", LogFile: "/var/log/quilt/smd.log", PIDFile: "/run/q.pid"}
	if o != want {
		t.Errorf("Apply: got %+v, want %+v", o, want)
	}
	if !f.IsSet("pid-file") || f.IsSet("log-file") {
		t.Error("IsSet wrong")
	}
}

func TestFlagsUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"-bogus"}, {"-log-level", "verbose"}, {"-log-format", "xml"}} {
		_, f, out := newTestFlags(t)
		err := f.Parse(args)
		if !errors.Is(err, ErrUsage) || Exit(err) != ExitUsage {
			t.Errorf("%v: err = %v (exit %d), want usage error", args, err, Exit(err))
		}
		if !strings.Contains(out.String(), "Usage: quilt-smd") {
			t.Errorf("%v: usage not printed: %q", args, out)
		}
	}
}

func TestFlagsHelp(t *testing.T) {
	_, f, out := newTestFlags(t)
	err := f.Parse([]string{"-help"})
	if !errors.Is(err, flag.ErrHelp) || Exit(err) != ExitOK {
		t.Fatalf("err = %v, want flag.ErrHelp mapping to 0", err)
	}
	for _, want := range []string{
		"Usage: quilt-smd [flags] NAME",
		"runs the source manager described by smd.d/NAME.cfg",
		"-config DIR", "-log-level LEVEL", "-log-format FORMAT", "-log-file FILE", "-pid-file FILE",
		"-version", "-foreground", "always run in the foreground",
		"Environment:", "QUILT_CFG_DIR", "NOTIFY_SOCKET", "QUILT_IRC_PASSWORD",
		"Exit codes:", "  4  already running", "  5  shutdown did not complete",
		"SIGHUP",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, out)
		}
	}
}

func TestPrintVersion(t *testing.T) {
	var b bytes.Buffer
	PrintVersion(&b, "quilt-qmd")
	if !strings.HasPrefix(b.String(), "quilt-qmd ") || !strings.Contains(b.String(), "go1.") {
		t.Errorf("version line %q", b.String())
	}
}
