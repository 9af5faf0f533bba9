package quiltctl

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quilt/quilt/clients/quilttest"
)

// testCmd is `quiltctl test`: the [testing] suites (package
// clients/quilttest) against the live cluster.
func (a *app) testCmd() *cobra.Command {
	var (
		once, list  bool
		junit, dir  string
		sleep       time.Duration
		caseTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "test [CASE...]",
		Short: "Run the [testing] test cases against the live cluster",
		Long: `test runs the test cases in [testing] dir (default $QUILT_CFG/tests) whose
file names match [testing] includes (default *_testcase.quilt) against the
live cluster, one after the other, printing each step (✓/✗ and its time) and
a final line "N passed, N failed" ("N passed, N failed, N skipped" when a
case was skipped). It exits 1 when a case failed; skipped cases do not fail
the run.

CASE arguments keep the cases whose name or file name contains the word
(case-insensitive) or matches the glob (* ? [).

With [testing] sleep > 0 (or --sleep) the cases run again every sleep until
interrupted (a canary); --once runs them once. --junit FILE writes JUnit XML
after every round.

A test case is a small line-based script:

  # irc_testcase.quilt
  name    IRC round trip
  use     irc                     # source irc, its only server (or irc/SERVER)
  act     send #quilt "quilt canary ${RUN}"
  expect  event kind=message channel=#quilt text~"canary ${RUN}" within 10s
  query   members channel=#quilt
  assert  row self=true within 5s
  query   events text="quilt canary ${RUN}" since=case
  assert  rows == 1 within 5s
  wait    1s

A case for a source not every cluster has starts with "require SOURCE" (or
SOURCE/SERVER): when the query master knows no such source (attached or not)
the case is reported SKIPPED with the reason instead of failing, e.g. the
shipped Matrix case on a cluster that runs only IRC:

  name    Matrix round trip
  require matrix
  use     matrix
  ...

Steps: name, use SOURCE[/SERVER], require SOURCE[/SERVER], set NAME VALUE,
timeout DURATION, act send|join|part|kick|topic|raw|reconnect ..., expect
[no] event COND... [within D], query KIND [PARAM=VALUE...] (presence members channels servers
events lastseen sources) or query pattern NAME [VAR=VALUE...], assert rows OP
N | row COND... | no row COND... | all rows COND... [within D], wait D.
A condition is FIELD=VALUE, FIELD!=VALUE, FIELD~REGEXP, FIELD!~REGEXP or
FIELD>N (>=, <, <=). ${RUN} is unique to each run, so a run never matches
the events of an earlier one; expect sees only events stored since its case
started. The full reference is the documentation of package
github.com/quilt/quilt/clients/quilttest.`,
		Example: `  quiltctl test --once
  quiltctl test --once irc --junit /tmp/quilt-junit.xml
  quiltctl test --list`,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig()
			if err != nil {
				return err
			}
			if dir == "" {
				dir = cfg.Testing.Dir
			}
			files, err := quilttest.Find(dir, cfg.Testing.Includes)
			if err != nil {
				return err
			}
			if len(files) == 0 {
				return fmt.Errorf("no test cases: nothing in %s matches [testing] includes (%s) of %s",
					dir, strings.Join(cfg.Testing.Includes, ", "), cfg.File)
			}
			cases, err := quilttest.Load(files)
			if err != nil {
				return err
			}
			if cases, err = quilttest.Select(cases, args); err != nil {
				return usageError{err.Error()}
			}
			if list {
				for _, c := range cases {
					fmt.Fprintf(a.stdout, "%-30s %s (%d steps)\n", c.Name, filepath.Base(c.File), len(c.Steps))
				}
				return nil
			}
			if !cmd.Flags().Changed("sleep") {
				sleep = cfg.Testing.Sleep
			}
			if once {
				sleep = 0
			}
			ctx := cmd.Context()
			dctx, cancel := a.withTimeout(ctx)
			c, err := a.dial(dctx)
			cancel()
			if err != nil {
				return err
			}
			defer c.Close()
			r := &quilttest.Runner{Client: c, Out: a.stdout, CaseTimeout: caseTimeout}
			var junitErr error
			last := r.Repeat(ctx, cases, sleep, func(rep *quilttest.Report) {
				if junit != "" {
					if err := rep.WriteJUnitFile(junit); err != nil && junitErr == nil {
						junitErr = err
						fmt.Fprintf(a.stderr, "quiltctl: %v\n", err)
					}
				}
			})
			if last == nil {
				return errors.New("interrupted before a round of tests completed")
			}
			if junitErr != nil {
				return junitErr
			}
			if _, failed := last.Counts(); failed > 0 {
				return fmt.Errorf("%d of %d test cases failed", failed, len(last.Cases))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&once, "once", false, "run the cases once, even when [testing] sleep > 0")
	f.DurationVar(&sleep, "sleep", 0, "repeat every DURATION until interrupted (default [testing] sleep; 0: once)")
	f.StringVar(&junit, "junit", "", "write JUnit XML to FILE (rewritten after every round)")
	f.StringVar(&dir, "dir", "", "test case directory (default [testing] dir)")
	f.DurationVar(&caseTimeout, "case-timeout", 5*time.Minute, "give up on a case after this long")
	f.BoolVar(&list, "list", false, "list the selected cases and exit")
	return cmd
}
