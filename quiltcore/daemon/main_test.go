package daemon

import (
	"context"
	"flag"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv selects a helper-process mode: the test binary re-executes itself
// with this variable set to act as a small daemon main (or another program)
// that the tests can signal for real.
const helperEnv = "QUILT_DAEMON_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode, os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

func helperMain(mode string, args []string) int {
	switch mode {
	case "daemon", "stuck":
		// What quilt-qmd's main looks like, minus the config package.
		fs := flag.NewFlagSet("quilt-test", flag.ContinueOnError)
		f := NewFlags(fs, Usage{Description: "quilt-test is a daemon used by the daemon package's tests."})
		if err := f.Parse(args); err != nil {
			return Exit(err)
		}
		if f.Version {
			PrintVersion(os.Stdout, fs.Name())
			return ExitOK
		}
		opts := Options{Name: "quilt-test"}
		if s := os.Getenv("HELPER_SHUTDOWN_TIMEOUT"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return ExitUsage
			}
			opts.ShutdownTimeout = d
		}
		f.Apply(&opts)
		return Run(context.Background(), opts, func(ctx context.Context, d *Daemon) error {
			d.OnReload(func(context.Context) error {
				d.Logger().Info("hook ran")
				return nil
			})
			d.Ready()
			<-ctx.Done()
			if mode == "stuck" {
				select {} // ignores shutdown; Run must give up on it
			}
			return nil
		})
	case "sleep":
		// A long-lived process with whatever argv[0] the test chose.
		fmt.Println("ok")
		time.Sleep(time.Minute)
		return 0
	case "exit":
		return 0
	case "stdio":
		return helperStdio()
	case "sigpipe":
		if err := SetupStdio(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 10
		}
		time.Sleep(200 * time.Millisecond) // let the parent close the read end
		_, err := os.Stdout.Write([]byte("into a closed pipe\n"))
		if err == nil {
			fmt.Fprintln(os.Stderr, "write succeeded; the pipe was not closed")
			return 11
		}
		fmt.Fprintf(os.Stderr, "write error: %v\n", err)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", mode)
	return 99
}

// helperStdio closes fd 1 (as a careless parent might have) and checks that
// SetupStdio leaves stdin reading from /dev/null and fd 1 open on it.
func helperStdio() int {
	if err := syscall.Close(1); err != nil {
		fmt.Fprintln(os.Stderr, "close fd 1:", err)
		return 10
	}
	if err := SetupStdio(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 11
	}
	var null, st syscall.Stat_t
	if err := syscall.Stat(os.DevNull, &null); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 12
	}
	for _, fd := range []int{0, 1} {
		if err := syscall.Fstat(fd, &st); err != nil {
			fmt.Fprintf(os.Stderr, "fd %d: %v\n", fd, err)
			return 13
		}
		if st.Rdev != null.Rdev || st.Ino != null.Ino {
			fmt.Fprintf(os.Stderr, "fd %d is not %s\n", fd, os.DevNull)
			return 14
		}
	}
	// The parent gave us a pipe it never writes to or closes: reading it
	// would block forever. /dev/null gives EOF at once.
	n, err := os.Stdin.Read(make([]byte, 1))
	if n != 0 || err == nil {
		fmt.Fprintf(os.Stderr, "read from stdin: n=%d err=%v, want EOF\n", n, err)
		return 15
	}
	fmt.Fprintln(os.Stderr, "stdio ok")
	return 0
}
