package quiltctl_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"

	"github.com/quilt/quilt/clients/quiltctl"
	"github.com/quilt/quilt/querymaster/query/querytest"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"quiltctl": func() {
			os.Exit(quiltctl.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
		},
	})
}

type clusterKey struct{}

// TestScripts runs testdata/script/*.txtar, each against its own
// in-process cluster (xurls' RunMain pattern): $QUILT_CFG_DIR is the
// cluster's config dir, so quiltctl finds the master exactly as on a real
// machine (embedded registrar at [query_master] listen); $MASTER is its
// address. Sources: alpha (server net1: #a, #b; 3 users) and beta (net2:
// #c; 2 users), test protocol.
//
// Extra commands:
//
//	exitcode N PROG ARGS...   run PROG, fail unless it exits with N
//	raw SOURCE/SERVER CMD...  testdriver script command (msg, join, quit...)
//	waitevents N [TEXT]       wait until N events (containing TEXT) are stored
//	stopsource NAME           stop a source manager (it detaches)
//	jsonlines                 every line of the last stdout is a JSON object
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			c := querytest.Start(t, querytest.Options{
				ShippedPatterns: "../../etc/quilt/patterns.d",
				Sources: []querytest.Source{
					{Name: "alpha", Servers: map[string][]string{"net1": {"#a", "#b"}}, Users: 3},
					{Name: "beta", Servers: map[string][]string{"net2": {"#c"}}, Users: 2},
				},
			})
			env.Values[clusterKey{}] = c
			env.Defer(c.Stop)
			env.Setenv("QUILT_CFG_DIR", c.Dir)
			env.Setenv("MASTER", c.Addr)
			env.Setenv("COLUMNS", "")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": func(ts *testscript.TestScript, neg bool, args []string) {
				if len(args) < 2 {
					ts.Fatalf("usage: exitcode N PROG ARGS...")
				}
				want, err := strconv.Atoi(args[0])
				if err != nil {
					ts.Fatalf("exitcode: %v", err)
				}
				err = ts.Exec(args[1], args[2:]...)
				got := 0
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					got = ee.ExitCode()
				} else if err != nil {
					ts.Fatalf("exitcode: %v", err)
				}
				if got != want {
					ts.Fatalf("%s exited %d, want %d", args[1], got, want)
				}
			},
			"raw": func(ts *testscript.TestScript, neg bool, args []string) {
				c := ts.Value(clusterKey{}).(*querytest.Cluster)
				src, srv, _ := strings.Cut(args[0], "/")
				if err := c.RawErr(src, srv, strings.Join(args[1:], " ")); err != nil {
					ts.Fatalf("%v", err)
				}
			},
			"waitevents": func(ts *testscript.TestScript, neg bool, args []string) {
				c := ts.Value(clusterKey{}).(*querytest.Cluster)
				n, _ := strconv.Atoi(args[0])
				f := filterText(args[1:])
				if err := c.WaitEventsErr(10*time.Second, f, int64(n)); err != nil {
					ts.Fatalf("%v", err)
				}
			},
			"stopsource": func(ts *testscript.TestScript, neg bool, args []string) {
				ts.Value(clusterKey{}).(*querytest.Cluster).StopSource(args[0])
			},
			"jsonlines": func(ts *testscript.TestScript, neg bool, args []string) {
				out := ts.ReadFile("stdout")
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if len(lines) == 0 || lines[0] == "" {
					ts.Fatalf("jsonlines: stdout is empty")
				}
				for i, l := range lines {
					var v map[string]any
					if err := json.Unmarshal([]byte(l), &v); err != nil {
						ts.Fatalf("jsonlines: line %d %q: %v", i+1, l, err)
					}
				}
			},
		},
	})
}

func filterText(args []string) *quiltv1.EventFilter {
	return &quiltv1.EventFilter{Text: strings.Join(args, " ")}
}
