package quilttest_test

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quilt/quilt/clients/quilt"
	"github.com/quilt/quilt/clients/quilttest"
	"github.com/quilt/quilt/querymaster/query/querytest"
)

// startCluster runs an in-process cluster with source t1 (one server,
// #test) and t2 (two servers), and a client dialled like quiltctl does:
// through the cluster's quilt.cfg.
func startCluster(t *testing.T) (*querytest.Cluster, *quilt.Client) {
	t.Helper()
	c := querytest.Start(t, querytest.Options{Sources: []querytest.Source{
		{Name: "t1"},
		{Name: "t2", Servers: map[string][]string{"a": {"#x"}, "b": {"#y"}}},
	}})
	cl, err := quilt.Dial(context.Background(), quilt.Options{ConfigDir: c.Dir, Identity: "quilttest"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return c, cl
}

func parse(t *testing.T, name, src string) *quilttest.Case {
	t.Helper()
	c, err := quilttest.Parse(name+"_testcase.quilt", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const roundTrip = `name round trip
use t1
query servers
assert row state=connected server=main
act send #test "hello ${RUN}"
expect event kind=message channel=#test self=true text~"hello ${RUN}" within 5s
query members channel=#test
assert rows >= 3
assert row nick=user1
assert all rows channel=#test
assert no row nick=mallory
act raw "msg user2 #test reply ${RUN}"
expect event nick=user2 text="reply ${RUN}"
query events text="${RUN}" since=case
assert rows == 2 within 5s
query lastseen user=user2
assert row channel=#test text="reply ${RUN}" within 5s
query sources
assert row source=t2 server=a attached=true
act send #test "notice ${RUN}" style=notice
expect event kind=notice text~"^notice ${RUN}$" server=${SERVER}
expect no event kind=kick within 200ms
`

func TestRunPassingCase(t *testing.T) {
	_, cl := startCluster(t)
	var out bytes.Buffer
	r := &quilttest.Runner{Client: cl, Out: &out}
	rep := r.Run(context.Background(), []*quilttest.Case{parse(t, "rt", roundTrip)})
	t.Log("\n" + out.String())
	if p, f := rep.Counts(); p != 1 || f != 0 {
		t.Fatalf("counts %d passed %d failed: %v", p, f, rep.Cases[0].Err)
	}
	got := out.String()
	if strings.Count(got, "✓") != 21 || !strings.HasSuffix(got, "\n1 passed, 0 failed\n") {
		t.Fatalf("want 21 ✓ steps and the summary line last:\n%s", got)
	}
	if !strings.Contains(got, `act send #test "hello `+rep.Cases[0].Run+`"`) {
		t.Errorf("step lines show ${RUN} expanded:\n%s", got)
	}
}

func TestRunFailingStepSkipsTheRest(t *testing.T) {
	_, cl := startCluster(t)
	var out bytes.Buffer
	r := &quilttest.Runner{Client: cl, Out: &out}
	cases := []*quilttest.Case{
		parse(t, "bad", "name bad\nuse t1\nquery members channel=#test\nassert rows > 100\nwait 1ms\n"),
		parse(t, "quiet", "name quiet\nuse t1\nexpect event text~\"never said\" within 300ms\n"),
		parse(t, "ok", "name ok\nuse t1\nquery servers\nassert rows == 1\n"),
		parse(t, "nosource", "name nosource\nuse nope\nact send #test hi\n"),
		parse(t, "several", "name several\nuse t2\nact send #x hi\n"),
		parse(t, "field", "name field\nuse t1\nquery servers\nassert row colour=red\n"),
		parse(t, "actfail", "name actfail\nuse t1\nact raw \"fail no luck\"\n"),
	}
	rep := r.Run(context.Background(), cases)
	got := out.String()
	t.Log("\n" + got)
	if p, f := rep.Counts(); p != 1 || f != 6 || !strings.HasSuffix(got, "\n1 passed, 6 failed\n") {
		t.Fatalf("counts %d/%d", p, f)
	}
	for _, want := range []string{
		"✗ assert rows > 100", "rows, want > 100", "- wait 1ms", "skipped",
		"no matching event within 300ms",
		`source "nope" is not attached`,
		`source "t2" has several servers (a, b)`,
		`servers rows: unknown field "colour"`,
		"raw on t1/main failed: no luck",
		"--- FAIL bad", "--- PASS ok",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if rep.Cases[0].Steps[3].Skipped != true || rep.Cases[0].Steps[2].Passed {
		t.Errorf("step states: %+v", rep.Cases[0].Steps)
	}

	var junit bytes.Buffer
	if err := rep.WriteJUnit(&junit); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Suites   []struct {
			Cases []struct {
				Name    string `xml:"name,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(junit.Bytes(), &doc); err != nil {
		t.Fatalf("junit: %v\n%s", err, junit.String())
	}
	if doc.Tests != 7 || doc.Failures != 6 || len(doc.Suites[0].Cases) != 7 ||
		doc.Suites[0].Cases[2].Failure != nil || doc.Suites[0].Cases[0].Failure == nil ||
		!strings.Contains(doc.Suites[0].Cases[0].Failure.Message, "line 4: assert rows > 100") {
		t.Fatalf("junit:\n%s", junit.String())
	}
}

// A run never matches the events of an earlier run: the subscription
// replays only from the case's start, and ${RUN} differs.
func TestRunDoesNotSeeEarlierRuns(t *testing.T) {
	_, cl := startCluster(t)
	r := &quilttest.Runner{Client: cl}
	say := parse(t, "say", "name say\nuse t1\nact send #test \"canary old\"\nexpect event text=\"canary old\"\n")
	if rep := r.Run(context.Background(), []*quilttest.Case{say}); rep.Cases[0].Err != nil {
		t.Fatal(rep.Cases[0].Err)
	}
	time.Sleep(50 * time.Millisecond)
	look := parse(t, "look", "name look\nuse t1\nexpect event text=\"canary old\" within 500ms\n")
	if rep := r.Run(context.Background(), []*quilttest.Case{look}); rep.Cases[0].Err == nil {
		t.Fatal("a later case matched an event sent before it started")
	}
	// The same case twice: both pass, each on its own ${RUN}.
	again := parse(t, "again", "name again\nuse t1\nact send #test \"c ${RUN}\"\nexpect event text=\"c ${RUN}\"\nexpect no event text~\"^c \" within 300ms\n")
	rep := r.Run(context.Background(), []*quilttest.Case{again, again})
	if p, _ := rep.Counts(); p != 2 || rep.Cases[0].Run == rep.Cases[1].Run {
		t.Fatalf("repeated case: %v %v", rep.Cases[0].Err, rep.Cases[1].Err)
	}
}

func TestRepeatAsCanary(t *testing.T) {
	_, cl := startCluster(t)
	var out bytes.Buffer
	r := &quilttest.Runner{Client: cl, Out: &out}
	c := parse(t, "tick", "name tick\nuse t1\nquery servers\nassert rows == 1\n")
	ctx, cancel := context.WithCancel(context.Background())
	junit := filepath.Join(t.TempDir(), "junit.xml")
	rounds := 0
	last := r.Repeat(ctx, []*quilttest.Case{c}, 50*time.Millisecond, func(rep *quilttest.Report) {
		rounds++
		if err := rep.WriteJUnitFile(junit); err != nil {
			t.Error(err)
		}
		if rounds == 3 {
			cancel()
		}
	})
	if rounds != 3 || last == nil || last.Summary() != "1 passed, 0 failed" {
		t.Fatalf("rounds %d, last %v", rounds, last)
	}
	if strings.Count(out.String(), "1 passed, 0 failed\n") != 3 || !strings.Contains(out.String(), "### round 3") {
		t.Fatalf("output:\n%s", out.String())
	}
	if b, err := os.ReadFile(junit); err != nil || !bytes.Contains(b, []byte(`tests="1" failures="0"`)) {
		t.Fatalf("junit file: %v %s", err, b)
	}
	// sleep 0: one round.
	rounds = 0
	r.Repeat(context.Background(), []*quilttest.Case{c}, 0, func(*quilttest.Report) { rounds++ })
	if rounds != 1 {
		t.Fatalf("sleep 0 ran %d rounds", rounds)
	}
}

// A query answered partially fails, unless an `assert ... within` follows:
// then the query is re-run until the source is back.
func TestPartialAnswerRetriedByAssertWithin(t *testing.T) {
	c, cl := startCluster(t)
	c.StopSource("t1")
	r := &quilttest.Runner{Client: cl}
	rep := r.Run(context.Background(), []*quilttest.Case{parse(t, "p", "name p\nuse t1\nquery servers\nassert rows == 1\n")})
	if err := rep.Cases[0].Err; err == nil || !strings.Contains(err.Error(), "line 3: query servers: partial answer") {
		t.Fatalf("partial answer: %v", err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		c.StartSource("t1")
	}()
	rep = r.Run(context.Background(), []*quilttest.Case{parse(t, "p", "name p\nuse t1\nquery servers\nassert row state=connected within 10s\n")})
	if err := rep.Cases[0].Err; err != nil {
		t.Fatalf("assert within did not wait for the source: %v", err)
	}
}
