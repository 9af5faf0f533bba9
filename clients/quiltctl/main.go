// Package quiltctl is the quilt command line: queries, history, actions,
// the live event tail, server control and source-manager files. Main is
// the whole program, so tests run it in-process (testscript) and
// clients/cmd/quiltctl only calls it.
//
// Exit codes:
//
//	0  success
//	1  error (the query master refused or failed the request)
//	2  usage: unknown command or flag, bad argument
//	3  not found: unknown source, server, pattern variable target, query id
//	4  unavailable: no query master found, or it is not reachable
//	5  partial: a live query answered, but some source managers did not
//	   (timed out, detached, failed); the rows shown are incomplete
package quiltctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quilt/quilt/clients/quilt"
	"github.com/quilt/quilt/quiltcore/config"
)

// Exit codes; see the package doc.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitNotFound    = 3
	ExitUnavailable = 4
	ExitPartial     = 5
)

// EnvMaster, when set, is the query master address (like --master).
const EnvMaster = "QUILT_MASTER"

type app struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer

	configDir string
	master    string
	output    string
	timeout   time.Duration

	partial bool // a query reported source problems
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// Main runs quiltctl with args (without the program name) and returns the
// exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		if a.partial {
			return ExitPartial
		}
		return ExitOK
	}
	code := exitCode(err)
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	fmt.Fprintf(stderr, "quiltctl: %s\n", msg)
	if code == ExitUsage && !strings.Contains(msg, " -h") {
		fmt.Fprintf(stderr, "Run 'quiltctl %s -h' for usage.\n", commandPath(root, args))
	}
	return code
}

func commandPath(root *cobra.Command, args []string) string {
	c, _, err := root.Find(args)
	if err != nil || c == root {
		return "help"
	}
	return strings.TrimPrefix(c.CommandPath(), "quiltctl ")
}

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return ExitUsage
	}
	if errors.Is(err, quilt.ErrNoMaster) {
		return ExitUnavailable
	}
	var ce config.Errors
	var cerr *config.Error
	if errors.As(err, &ce) || errors.As(err, &cerr) {
		return ExitError
	}
	if errors.Is(err, os.ErrNotExist) {
		return ExitNotFound
	}
	switch status.Code(err) {
	case codes.NotFound:
		return ExitNotFound
	case codes.Unavailable, codes.DeadlineExceeded:
		return ExitUnavailable
	case codes.InvalidArgument:
		return ExitUsage
	}
	return ExitError
}

// isCobraUsage recognises cobra's own argument and flag errors.
func isCobraUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "flag needs an argument",
		"invalid argument", "accepts ", "requires at least", "requires at most", "received ", "required flag"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "quiltctl",
		Short: "Query and drive a quilt cluster",
		Long: `quiltctl talks to the leader quilt query master: live and stored queries,
query history, actions, the live event tail and server control. It finds the
leader through the registrar named in quilt.cfg ([registrar] address: a Consul
agent, or "embedded": the query master at [query_master] listen), or uses
--master / $QUILT_MASTER directly.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 no query master reachable,
5 partial answer (some source managers did not answer a live query).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	pf := root.PersistentFlags()
	pf.StringVar(&a.configDir, "config", "", "configuration directory (default $QUILT_CFG_DIR, else /etc/quilt)")
	pf.StringVar(&a.master, "master", os.Getenv(EnvMaster), "query master host:port; skips discovery (env "+EnvMaster+")")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table, json (one object per line) or yaml")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "give up after this long (tail: 0 = never)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		switch a.output {
		case "table", "json", "yaml":
			return nil
		}
		return usagef("-o %q: want table, json or yaml", a.output)
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	root.AddCommand(a.statusCmd(), a.sourcesCmd(), a.queryCmd(), a.patternsCmd(), a.historyCmd(),
		a.actCmd(), a.sendCmd(), a.tailCmd(), a.serverCmd(), a.smCmd(), a.versionCmd(), a.testCmd())
	return root
}

// dial connects to the leader, bounded by --timeout.
func (a *app) dial(ctx context.Context) (*quilt.Client, error) {
	return quilt.Dial(ctx, quilt.Options{ConfigDir: a.configDir, Master: a.master})
}

// withTimeout applies --timeout (0: none).
func (a *app) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}

// splitSourceServer reads SOURCE/SERVER.
func splitSourceServer(s string) (string, string, error) {
	src, srv, ok := strings.Cut(s, "/")
	if !ok || src == "" || srv == "" || strings.Contains(srv, "/") {
		return "", "", usagef("%q: want SOURCE/SERVER, e.g. irc/libera (see `quiltctl sources`)", s)
	}
	return src, srv, nil
}
