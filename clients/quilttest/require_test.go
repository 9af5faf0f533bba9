package quilttest_test

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/quilt/quilt/clients/quiltctl"
	"github.com/quilt/quilt/clients/quilttest"
)

func TestParseRequire(t *testing.T) {
	c := parse(t, "r", "name r\nset S t2\nrequire ${S}/a\nuse t2/a\ntimeout 2s\nrequire t1\nquery servers\n")
	if len(c.Steps) != 6 || c.Steps[1].Verb != "require" || c.Steps[4].Verb != "require" {
		t.Fatalf("steps: %+v", c.Steps)
	}
	for _, tc := range []struct{ src, want string }{
		{"name r\nuse t1\nquery servers\nrequire t1\n", "line 4: require must come before the steps that act, expect, query, assert or wait (line 3)"},
		{"name r\nwait 1s\nrequire t1\n", "line 3: require must come before"},
		{"name r\nrequire\n", "line 2: want `require SOURCE` or `require SOURCE/SERVER`"},
		{"name r\nrequire a/b/c\n", `line 2: "a/b/c": want SOURCE or SOURCE/SERVER`},
		{"name r\nrequire /b\n", `line 2: "/b": want SOURCE or SOURCE/SERVER`},
	} {
		_, err := quilttest.Parse("", strings.NewReader(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.src, err, tc.want)
		}
	}
}

// A case whose `require` names a source (or server) the query master does
// not know is skipped with the reason, not failed; one it knows runs, and a
// known source that is detached still fails the case.
func TestRunRequireSkips(t *testing.T) {
	c, cl := startCluster(t)
	var out bytes.Buffer
	r := &quilttest.Runner{Client: cl, Out: &out}
	cases := []*quilttest.Case{
		parse(t, "nosource", "name nosource\nrequire matrix\nuse matrix\nact send #quilt hi\nexpect event text=hi\n"),
		parse(t, "noserver", "name noserver\nset S t2\nrequire ${S}/c\nuse t2/c\nquery servers\n"),
		parse(t, "present", "name present\nrequire t2/a\nrequire t1\nuse t2/a\nquery servers\nassert row state=connected\n"),
	}
	rep := r.Run(context.Background(), cases)
	got := out.String()
	t.Log("\n" + got)
	if p, f, s := rep.Tally(); p != 1 || f != 0 || s != 2 || !strings.HasSuffix(got, "\n1 passed, 0 failed, 2 skipped\n") {
		t.Fatalf("tally %d/%d/%d", p, f, s)
	}
	if p, f := rep.Counts(); p != 1 || f != 0 {
		t.Fatalf("counts %d/%d: a skipped case is neither", p, f)
	}
	for _, want := range []string{
		`--- SKIP nosource`, `: the query master knows no source "matrix" (sources: t1, t2)`,
		`--- SKIP noserver`, `: source "t2" has no server "c" (servers: a, b)`,
		"  - require t2/c", "  - use t2/c", "  - query servers",
		"--- PASS present", "✓ require t2/a",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(got, "✗") {
		t.Error("a skipped case printed a failing step")
	}
	sk := rep.Cases[0]
	if !sk.Skipped() || sk.Passed() || sk.Err != nil || len(sk.Steps) != 4 {
		t.Fatalf("skipped case: %+v", sk)
	}
	for _, st := range sk.Steps {
		if st.Passed || !st.Skipped {
			t.Errorf("step of a skipped case: %+v", st)
		}
	}
	if rep.Cases[2].Skipped() || !rep.Cases[2].Passed() {
		t.Errorf("present case: %+v", rep.Cases[2])
	}

	var junit bytes.Buffer
	if err := rep.WriteJUnit(&junit); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Skipped  int `xml:"skipped,attr"`
		Suites   []struct {
			Skipped int `xml:"skipped,attr"`
			Cases   []struct {
				Skipped *struct {
					Message string `xml:"message,attr"`
				} `xml:"skipped"`
				Failure *struct{} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(junit.Bytes(), &doc); err != nil {
		t.Fatalf("junit: %v\n%s", err, junit.String())
	}
	js := doc.Suites[0]
	if doc.Tests != 3 || doc.Failures != 0 || doc.Skipped != 2 || js.Skipped != 2 ||
		js.Cases[0].Skipped == nil || !strings.Contains(js.Cases[0].Skipped.Message, `no source "matrix"`) ||
		js.Cases[0].Failure != nil || js.Cases[2].Skipped != nil {
		t.Fatalf("junit:\n%s", junit.String())
	}

	// A known source that is detached is not a reason to skip: the canary
	// must report it.
	c.StopSource("t1")
	out.Reset()
	rep = r.Run(context.Background(), []*quilttest.Case{
		parse(t, "gone", "name gone\nrequire t1\nuse t1\nquery servers\nassert rows == 1\n"),
	})
	t.Log("\n" + out.String())
	if p, f, s := rep.Tally(); p != 0 || f != 1 || s != 0 || !strings.HasSuffix(out.String(), "\n0 passed, 1 failed\n") {
		t.Fatalf("detached source: tally %d/%d/%d, err %v", p, f, s, rep.Cases[0].Err)
	}
}

// quiltctl test exits 0 when cases were skipped and none failed, and 1 when
// one failed besides.
func TestQuiltctlTestSkipped(t *testing.T) {
	c, _ := startCluster(t)
	tests := filepath.Join(c.Dir, "tests")
	if err := os.MkdirAll(tests, 0o750); err != nil {
		t.Fatal(err)
	}
	write := func(name, src string) {
		if err := os.WriteFile(filepath.Join(tests, name), []byte(src), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write("a_testcase.quilt", "name a\nuse t1\nquery servers\nassert rows == 1\n")
	write("b_testcase.quilt", "name b\nrequire matrix\nuse matrix\nquery servers\nassert rows == 1\n")
	run := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := quiltctl.Main(context.Background(), append([]string{"test", "--once", "--config", c.Dir}, args...), strings.NewReader(""), &out, &errOut)
		t.Logf("quiltctl test %v: exit %d\n%s%s", args, code, out.String(), errOut.String())
		return code, out.String()
	}
	if code, out := run(); code != 0 || !strings.HasSuffix(out, "\n1 passed, 0 failed, 1 skipped\n") {
		t.Fatalf("exit %d, want 0 and 1 passed, 0 failed, 1 skipped", code)
	}
	if code, out := run("a_*"); code != 0 || !strings.HasSuffix(out, "\n1 passed, 0 failed\n") {
		t.Fatalf("exit %d, want 0 and 1 passed, 0 failed", code)
	}
	write("c_testcase.quilt", "name c\nrequire t1\nuse t1\nquery servers\nassert rows == 2\n")
	if code, out := run(); code != 1 || !strings.HasSuffix(out, "\n1 passed, 1 failed, 1 skipped\n") {
		t.Fatalf("exit %d, want 1 and 1 passed, 1 failed, 1 skipped", code)
	}
}
