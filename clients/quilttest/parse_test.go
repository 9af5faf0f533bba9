package quilttest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestLex(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		text string
	}{
		{`act send #quilt "hello world"  # a comment`, []string{"act", "send", "#quilt", "hello world"}, `act send #quilt "hello world"`},
		{`# whole line`, nil, ""},
		{`#`, nil, ""},
		{`expect event text~"a \"b\" c" within 2s`, []string{"expect", "event", `text~a "b" c`, "within", "2s"}, `expect event text~"a \"b\" c" within 2s`},
		{`set X "# not a comment"`, []string{"set", "X", "# not a comment"}, `set X "# not a comment"`},
		{"\tquery members channel=#quilt\t#\tc", []string{"query", "members", "channel=#quilt"}, "query members channel=#quilt"},
	} {
		toks, text, err := lex(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		var got []string
		for _, tk := range toks {
			got = append(got, tk.s)
		}
		if !reflect.DeepEqual(got, tc.want) || text != tc.text {
			t.Errorf("lex(%q) = %q, %q; want %q, %q", tc.in, got, text, tc.want, tc.text)
		}
	}
	if _, _, err := lex(`act send x "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestSplitCondQuotedOperators(t *testing.T) {
	toks, _, _ := lex(`text~"a=b" text="x~y" rows>=3 "k=v"`)
	want := []cond{{"text", "~", "a=b"}, {"text", "=", "x~y"}, {"rows", ">=", "3"}}
	for i, w := range want {
		c, ok := splitCond(toks[i])
		if !ok || c != w {
			t.Errorf("splitCond(%q) = %v %v, want %v", toks[i].s, c, ok, w)
		}
	}
	if c, ok := splitCond(toks[3]); ok {
		t.Errorf("a fully quoted word is a value, not a condition: %v", c)
	}
}

func TestParseCase(t *testing.T) {
	src := `# a case
name   IRC round trip
use    irc/local
set    GREETING "hello ${RUN}"
timeout 3s
act    send #quilt "${GREETING}" style=notice
expect event kind=notice channel=#quilt text~"${GREETING}" within 10s
expect no event kind=kick within 500ms
query  members channel=#quilt
assert rows >= 1
assert row user=quilt within 2s
assert no row nick=mallory
assert all rows channel=#quilt
query  pattern lastseen user=alice
query  events text~"h.llo" since=case kind=message,notice limit=5
wait   1.5
`
	c, err := Parse("dir/irc_testcase.quilt", strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "IRC round trip" || len(c.Steps) != 14 {
		t.Fatalf("name %q, %d steps", c.Name, len(c.Steps))
	}
	s := c.Steps
	if s[0].source != "irc" || s[0].server != "local" {
		t.Errorf("use: %+v", s[0])
	}
	if s[3].actKind != "send" || !reflect.DeepEqual(s[3].actArgs, []string{"#quilt", "${GREETING}"}) || s[3].actOpts["style"] != "notice" {
		t.Errorf("act: %+v", s[3])
	}
	if s[4].within != 10*time.Second || len(s[4].conds) != 3 || s[4].conds[2] != (cond{"text", "~", "${GREETING}"}) {
		t.Errorf("expect: %+v", s[4])
	}
	if !s[5].not || s[5].within != 500*time.Millisecond {
		t.Errorf("expect no: %+v", s[5])
	}
	if s[7].rowsOp != ">=" || s[7].rowsN != 1 || s[8].assertMode != "row" || s[8].within != 2*time.Second ||
		s[9].assertMode != "norow" || s[10].assertMode != "allrows" {
		t.Errorf("asserts: %+v %+v %+v %+v", s[7], s[8], s[9], s[10])
	}
	if s[11].pattern != "lastseen" || s[12].queryKind != "events" || s[13].wait != 1500*time.Millisecond {
		t.Errorf("query/wait: %+v %+v %+v", s[11], s[12], s[13])
	}
	if s[13].Line != 16 {
		t.Errorf("last step line %d", s[13].Line)
	}

	// Without a name line the file name names the case.
	c, err = Parse("x/members_testcase.quilt", strings.NewReader("wait 1s\n"))
	if err != nil || c.Name != "members" {
		t.Fatalf("default name: %v %v", c, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"name x\nfrobnicate", `f.quilt:2: unknown step "frobnicate"`},
		{"name x\nact send #c", "act send TARGET"},
		{"name x\nact shout #c hi", `unknown action "shout"`},
		{"name x\nact send #c hi style=loud", `style="loud"`},
		{"name x\nexpect event kind=message within", "`within DURATION` must end"},
		{"name x\nexpect event kind=message within soon", `bad duration "soon"`},
		{"name x\nexpect no event kind=message", "needs `within DURATION`"},
		{"name x\nexpect event colour=red", `unknown field "colour"`},
		{"name x\nexpect event text~\"(\"", "text: error parsing regexp"},
		{"name x\nquery weather", `unknown query kind "weather"`},
		{"name x\nquery events colour=red", `unknown query parameter "colour"`},
		{"name x\nquery events kind=shout", `kind="shout"`},
		{"name x\nquery events since=yesterday", `since="yesterday"`},
		{"name x\nassert rows>=1", "spaces around the operator"},
		{"name x\nassert rows ~ 1", "want one of"},
		{"name x\nassert row", "needs at least one"},
		{"name x\nact send #c \"${NOPE}\"", "unknown variable ${NOPE}"},
		{"name x\nname y\nwait 1s", "a second name line"},
		{"name x\n", "no steps"},
		{"act send #c \"unterminated", "unterminated quoted string"},
		{"name x\nuse a/b/c", "want SOURCE or SOURCE/SERVER"},
	} {
		_, err := Parse("f.quilt", strings.NewReader(tc.src))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.src, err, tc.want)
		}
	}
	// Every bad line is reported, not just the first.
	_, err := Parse("f.quilt", strings.NewReader("name x\nbad1\nwait 1s\nbad2\n"))
	if err == nil || !strings.Contains(err.Error(), "f.quilt:2:") || !strings.Contains(err.Error(), "f.quilt:4:") {
		t.Errorf("all errors: %v", err)
	}
}

func TestFindAndSelect(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"irc_testcase.quilt":    "name IRC round trip\nwait 1ms\n",
		"matrix_testcase.quilt": "name Matrix room\nwait 1ms\n",
		"notes.txt":             "not a case",
		"other.quilt":           "name other\nwait 1ms\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files, err := Find(dir, []string{"*_testcase.quilt"})
	if err != nil || len(files) != 2 || filepath.Base(files[0]) != "irc_testcase.quilt" {
		t.Fatalf("Find: %v %v", files, err)
	}
	files, _ = Find(dir, []string{"*_testcase.quilt", "other.*", "irc_*"})
	if len(files) != 3 {
		t.Fatalf("several globs, each file once: %v", files)
	}
	cases, err := Load(files)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"IRC round trip", "Matrix room", "other"}},
		{[]string{"irc"}, []string{"IRC round trip"}},
		{[]string{"matrix_testcase.quilt"}, []string{"Matrix room"}},
		{[]string{"*room*", "oth*"}, []string{"Matrix room", "other"}},
	} {
		sel, err := Select(cases, tc.filters)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, c := range sel {
			got = append(got, c.Name)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Select(%q) = %q, want %q", tc.filters, got, tc.want)
		}
	}
	if _, err := Select(cases, []string{"irc", "xmpp"}); err == nil || !strings.Contains(err.Error(), `no test case matches "xmpp"`) {
		t.Errorf("unmatched filter: %v", err)
	}
	if _, err := Find(filepath.Join(dir, "missing"), []string{"*"}); err == nil {
		t.Error("missing dir accepted")
	}
}

func TestShippedCasesParse(t *testing.T) {
	files, err := Find("../../etc/quilt/tests", []string{"*_testcase.quilt"})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no shipped test cases in etc/quilt/tests")
	}
	if _, err := Load(files); err != nil {
		t.Fatal(err)
	}
}
