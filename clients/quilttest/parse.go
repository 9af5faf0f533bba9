package quilttest

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Case is one parsed test case file.
type Case struct {
	Name  string // `name` line, else the file name without its suffix
	File  string // path it was read from ("" when parsed from a reader)
	Steps []*Step
}

// Step is one executable line of a case.
type Step struct {
	Line int    // 1-based line number in the file
	Text string // the line without its comment, trimmed
	Verb string // use, require, set, timeout, act, expect, query, assert, wait

	// use, require
	source, server string
	// set
	varName, varValue string
	// act
	actKind string
	actArgs []string // positional arguments (target, text...)
	actOpts map[string]string
	// expect (not = `expect no event`)
	not    bool
	conds  []cond
	within time.Duration // 0: the case's timeout (expect) or no retry (assert)
	// query
	queryKind, pattern string
	queryParams        []cond // filter keys and pattern variables
	// assert
	assertMode string // rows, row, norow, allrows
	rowsOp     string
	rowsN      int
	// wait
	wait time.Duration
}

// cond is FIELD OP VALUE.
type cond struct {
	Field, Op, Value string
}

func (c cond) String() string { return c.Field + c.Op + strconv.Quote(c.Value) }

// ParseError names the file and line at fault.
type ParseError struct {
	File string
	Line int
	Msg  string
}

func (e *ParseError) Error() string {
	if e.File == "" {
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// ParseFile reads and parses a test case file.
func ParseFile(path string) (*Case, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := Parse(path, f)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Parse parses a test case; file names it in errors and gives the default
// case name.
func Parse(file string, r io.Reader) (*Case, error) {
	c := &Case{File: file}
	if file != "" {
		base := filepath.Base(file)
		if i := strings.IndexByte(base, '.'); i > 0 {
			base = base[:i]
		}
		c.Name = strings.TrimSuffix(base, "_testcase")
	}
	defined := map[string]bool{}
	for _, v := range builtinVars {
		defined[v] = true
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	ln := 0
	named := false
	acting := 0 // line of the first step that touches the cluster
	var errs []string
	fail := func(format string, args ...any) error {
		return &ParseError{File: file, Line: ln, Msg: fmt.Sprintf(format, args...)}
	}
	for sc.Scan() {
		ln++
		toks, text, err := lex(sc.Text())
		if err != nil {
			return nil, fail("%v", err)
		}
		if len(toks) == 0 {
			continue
		}
		for _, t := range toks {
			for _, m := range varRef.FindAllStringSubmatch(t.s, -1) {
				if !defined[m[1]] {
					return nil, fail("unknown variable ${%s}: define it with `set %s VALUE` before this line (built in: %s)", m[1], m[1], strings.Join(builtinVars, ", "))
				}
			}
		}
		verb := strings.ToLower(toks[0].s)
		args := toks[1:]
		if verb == "name" {
			if len(args) == 0 {
				return nil, fail("name needs a text")
			}
			if named {
				return nil, fail("a second name line: one case per file")
			}
			named = true
			c.Name = joinTokens(args)
			continue
		}
		st := &Step{Line: ln, Text: text, Verb: verb}
		var perr error
		switch verb {
		case "use":
			perr = parseUse(st, args, "use")
		case "require":
			if acting > 0 {
				perr = fmt.Errorf("require must come before the steps that act, expect, query, assert or wait (line %d): a case that is skipped must not have done anything", acting)
				break
			}
			perr = parseUse(st, args, "require")
		case "set":
			if len(args) < 2 || !varName.MatchString(args[0].s) {
				perr = fmt.Errorf("want `set NAME VALUE` (NAME: letters, digits, _)")
				break
			}
			st.varName, st.varValue = args[0].s, joinTokens(args[1:])
			defined[st.varName] = true
		case "timeout":
			if len(args) != 1 {
				perr = fmt.Errorf("want `timeout DURATION`")
				break
			}
			st.wait, perr = parseDuration(args[0].s)
		case "act":
			perr = parseAct(st, args)
		case "expect":
			perr = parseExpect(st, args)
		case "query":
			perr = parseQuery(st, args)
		case "assert":
			perr = parseAssert(st, args)
		case "wait":
			if len(args) != 1 {
				perr = fmt.Errorf("want `wait DURATION`")
				break
			}
			st.wait, perr = parseDuration(args[0].s)
		default:
			perr = fmt.Errorf("unknown step %q: want name, use, require, set, timeout, act, expect, query, assert or wait", toks[0].s)
		}
		if !setupVerb(verb) && acting == 0 {
			acting = ln
		}
		if perr != nil {
			errs = append(errs, fail("%v", perr).Error())
			continue
		}
		c.Steps = append(c.Steps, st)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	if c.Name == "" {
		return nil, &ParseError{File: file, Line: ln, Msg: "the case has no name: add a `name TEXT` line"}
	}
	if len(c.Steps) == 0 {
		return nil, &ParseError{File: file, Line: ln, Msg: "the case has no steps"}
	}
	return c, nil
}

var (
	varRef      = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	varName     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	builtinVars = []string{"RUN", "CASE", "SOURCE", "SERVER"}
)

// token is one word of a line. q is the offset in s where quoted text
// began (-1: none), so an operator inside a quoted value is not taken
// for the key/value separator.
type token struct {
	s string
	q int
}

// lex splits a line into words. Double quotes group words and allow the
// escapes \" \\ \n \t; a # at the start of a line, or a # after blank space
// and followed by blank space or the end of the line, starts a comment (so
// `#quilt` stays a channel name).
func lex(line string) ([]token, string, error) {
	var toks []token
	var cur strings.Builder
	in, inQuote, q := false, false, -1
	end := len(line)
	flush := func() {
		if in {
			toks = append(toks, token{s: cur.String(), q: q})
		}
		cur.Reset()
		in, q = false, -1
	}
	for i := 0; i < len(line); i++ {
		ch := line[i]
		if inQuote {
			switch ch {
			case '"':
				inQuote = false
			case '\\':
				if i+1 >= len(line) {
					return nil, "", fmt.Errorf("a backslash ends the line inside a quoted string")
				}
				i++
				switch line[i] {
				case 'n':
					cur.WriteByte('\n')
				case 't':
					cur.WriteByte('\t')
				default:
					cur.WriteByte(line[i])
				}
			default:
				cur.WriteByte(ch)
			}
			continue
		}
		switch {
		case ch == ' ' || ch == '\t' || ch == '\r':
			flush()
		case ch == '#' && !in && (i+1 == len(line) || line[i+1] == ' ' || line[i+1] == '\t' || len(toks) == 0):
			end = i
			i = len(line)
		case ch == '"':
			in, inQuote = true, true
			if q < 0 {
				q = cur.Len()
			}
		default:
			in = true
			cur.WriteByte(ch)
		}
	}
	if inQuote {
		return nil, "", fmt.Errorf("unterminated quoted string")
	}
	flush()
	return toks, strings.TrimSpace(line[:end]), nil
}

func joinTokens(ts []token) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.s
	}
	return strings.Join(s, " ")
}

// ops in the order they are tried, longest first.
var ops = []string{"!=", "!~", ">=", "<=", "==", "=", "~", ">", "<"}

// splitCond reads FIELD OP VALUE from one token; ok is false when the
// token has no operator before any quoted part.
func splitCond(t token) (cond, bool) {
	head := t.s
	if t.q >= 0 {
		head = t.s[:t.q]
	}
	best := -1
	var op string
	for _, o := range ops {
		if i := strings.Index(head, o); i > 0 && (best < 0 || i < best || (i == best && len(o) > len(op))) {
			best, op = i, o
		}
	}
	if best < 0 || !fieldName.MatchString(head[:best]) {
		return cond{}, false
	}
	if op == "==" {
		return cond{Field: strings.ToLower(head[:best]), Op: "=", Value: t.s[best+2:]}, true
	}
	return cond{Field: strings.ToLower(head[:best]), Op: op, Value: t.s[best+len(op):]}, true
}

var fieldName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// parseDuration takes Go durations (500ms, 10s, 2m) or bare seconds.
func parseDuration(s string) (time.Duration, error) {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("negative duration %q", s)
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("bad duration %q: want e.g. 500ms, 10s, 2m", s)
	}
	return d, nil
}

// takeWithin strips a trailing `within DURATION`.
func takeWithin(st *Step, args []token) ([]token, error) {
	n := len(args)
	if n >= 2 && strings.EqualFold(args[n-2].s, "within") && args[n-2].q < 0 {
		d, err := parseDuration(args[n-1].s)
		if err != nil {
			return nil, err
		}
		if d <= 0 {
			return nil, fmt.Errorf("within must be > 0")
		}
		st.within = d
		return args[:n-2], nil
	}
	for _, a := range args {
		if strings.EqualFold(a.s, "within") && a.q < 0 {
			return nil, fmt.Errorf("`within DURATION` must end the line")
		}
	}
	return args, nil
}

// setupVerb reports whether a step only sets up the case (touches nothing
// in the cluster); `require` may follow only such steps.
func setupVerb(v string) bool {
	switch v {
	case "use", "require", "set", "timeout":
		return true
	}
	return false
}

// parseUse reads SOURCE[/SERVER] for use and require.
func parseUse(st *Step, args []token, verb string) error {
	if len(args) != 1 {
		return fmt.Errorf("want `%s SOURCE` or `%s SOURCE/SERVER`", verb, verb)
	}
	src, srv, _ := strings.Cut(args[0].s, "/")
	if src == "" || strings.Contains(srv, "/") {
		return fmt.Errorf("%q: want SOURCE or SOURCE/SERVER", args[0].s)
	}
	st.source, st.server = src, srv
	return nil
}

// actShapes: positional arguments each action kind takes (min, max) and the
// options it accepts besides source, server and timeout.
var actShapes = map[string]struct {
	min, max int
	usage    string
	opts     []string
}{
	"send":      {2, 2, `act send TARGET "TEXT" [style=message|notice|emote]`, []string{"style"}},
	"join":      {1, 1, `act join CHANNEL [key=KEY]`, []string{"key"}},
	"part":      {1, 2, `act part CHANNEL ["REASON"]`, nil},
	"kick":      {2, 3, `act kick CHANNEL USER ["REASON"]`, nil},
	"topic":     {2, 2, `act topic CHANNEL "TOPIC"`, nil},
	"raw":       {1, 1, `act raw "LINE"`, nil},
	"reconnect": {0, 0, `act reconnect`, nil},
}

func parseAct(st *Step, args []token) error {
	if len(args) == 0 {
		return fmt.Errorf("want `act KIND ...`: send, join, part, kick, topic, raw or reconnect")
	}
	st.actKind = strings.ToLower(args[0].s)
	shape, ok := actShapes[st.actKind]
	if !ok {
		return fmt.Errorf("unknown action %q: want send, join, part, kick, topic, raw or reconnect", args[0].s)
	}
	st.actOpts = map[string]string{}
	for _, a := range args[1:] {
		if c, ok := splitCond(a); ok && c.Op == "=" && isActOpt(c.Field, shape.opts) {
			st.actOpts[c.Field] = c.Value
			continue
		}
		st.actArgs = append(st.actArgs, a.s)
	}
	if n := len(st.actArgs); n < shape.min || n > shape.max {
		return fmt.Errorf("want `%s` (options: source=, server=, timeout=); quote text with spaces", shape.usage)
	}
	if s, ok := st.actOpts["style"]; ok && s != "message" && s != "notice" && s != "emote" {
		return fmt.Errorf("style=%q: want message, notice or emote", s)
	}
	if s, ok := st.actOpts["timeout"]; ok {
		if _, err := parseDuration(s); err != nil {
			return err
		}
	}
	return nil
}

func isActOpt(k string, extra []string) bool {
	switch k {
	case "source", "server", "timeout":
		return true
	}
	for _, e := range extra {
		if e == k {
			return true
		}
	}
	return false
}

func parseConds(args []token) ([]cond, error) {
	var out []cond
	for _, a := range args {
		c, ok := splitCond(a)
		if !ok {
			return nil, fmt.Errorf("%q: want FIELD=VALUE, FIELD!=VALUE, FIELD~REGEXP, FIELD!~REGEXP or FIELD>N (also >=, <, <=)", a.s)
		}
		if (c.Op == "~" || c.Op == "!~") && !varRef.MatchString(c.Value) {
			if _, err := regexp.Compile(c.Value); err != nil {
				return nil, fmt.Errorf("%s: %v", c.Field, err)
			}
		}
		out = append(out, c)
	}
	return out, nil
}

func parseExpect(st *Step, args []token) error {
	args, err := takeWithin(st, args)
	if err != nil {
		return err
	}
	if len(args) > 0 && strings.EqualFold(args[0].s, "no") {
		st.not = true
		args = args[1:]
	}
	if len(args) == 0 || !strings.EqualFold(args[0].s, "event") {
		return fmt.Errorf("want `expect [no] event FIELD=VALUE... [within DURATION]`")
	}
	st.conds, err = parseConds(args[1:])
	if err != nil {
		return err
	}
	if st.not && st.within == 0 {
		return fmt.Errorf("`expect no event` needs `within DURATION`: how long nothing may match")
	}
	return checkFields(st.conds, eventFields)
}

// queryKinds are the query kinds of the query master; "pattern NAME" runs
// a named pattern.
var queryKinds = []string{"presence", "members", "channels", "servers", "events", "lastseen", "sources"}

// queryKeys are the parameters `query KIND` takes (the rest are errors).
var queryKeys = []string{"source", "server", "channel", "user", "kind", "text", "since", "until", "limit", "oldest"}

func parseQuery(st *Step, args []token) error {
	if len(args) == 0 {
		return fmt.Errorf("want `query KIND [KEY=VALUE...]` (kinds: %s) or `query pattern NAME [VAR=VALUE...]`", strings.Join(queryKinds, ", "))
	}
	kind := strings.ToLower(args[0].s)
	rest := args[1:]
	if kind == "pattern" {
		if len(rest) == 0 {
			return fmt.Errorf("want `query pattern NAME [VAR=VALUE...]`")
		}
		st.pattern = rest[0].s
		rest = rest[1:]
	} else if !contains(queryKinds, kind) {
		return fmt.Errorf("unknown query kind %q: want %s, or pattern NAME", args[0].s, strings.Join(queryKinds, ", "))
	} else {
		st.queryKind = kind
	}
	conds, err := parseConds(rest)
	if err != nil {
		return err
	}
	for _, c := range conds {
		switch {
		case st.pattern != "" && c.Op == "=":
		case c.Field == "text" && c.Op == "~":
		case c.Op != "=":
			return fmt.Errorf("%s: query parameters take `=` (only text~REGEXP matches)", c)
		case !contains(queryKeys, c.Field):
			return fmt.Errorf("unknown query parameter %q: want %s", c.Field, strings.Join(queryKeys, ", "))
		case c.Field == "limit":
			if n, err := strconv.Atoi(c.Value); err != nil || n < 0 {
				return fmt.Errorf("limit=%q: want a count", c.Value)
			}
		case c.Field == "since" || c.Field == "until":
			if c.Value != "case" && !varRef.MatchString(c.Value) {
				if _, err := parseDuration(c.Value); err != nil {
					if _, err := time.Parse(time.RFC3339, c.Value); err != nil {
						return fmt.Errorf("%s=%q: want `case` (the case's start), a duration ago (10m) or an RFC 3339 time", c.Field, c.Value)
					}
				}
			}
		case c.Field == "kind":
			for _, k := range strings.Split(c.Value, ",") {
				if _, ok := eventKind(k); !ok {
					return fmt.Errorf("kind=%q: want one or more (comma-separated) of %s", c.Value, strings.Join(eventKindNames(), ", "))
				}
			}
		}
	}
	st.queryParams = conds
	return nil
}

func parseAssert(st *Step, args []token) error {
	args, err := takeWithin(st, args)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		return fmt.Errorf("want `assert rows OP N`, `assert row ...`, `assert no row ...` or `assert all rows ...`")
	}
	first := strings.ToLower(args[0].s)
	switch {
	case first == "rows" && len(args) == 3:
		st.assertMode, st.rowsOp = "rows", args[1].s
		if !contains([]string{"=", "==", "!=", "<", "<=", ">", ">="}, st.rowsOp) {
			return fmt.Errorf("assert rows %s: want one of == != < <= > >=", st.rowsOp)
		}
		st.rowsN, err = strconv.Atoi(args[2].s)
		if err != nil || st.rowsN < 0 {
			return fmt.Errorf("assert rows %s %q: want a count", st.rowsOp, args[2].s)
		}
		return nil
	case strings.HasPrefix(first, "rows"):
		return fmt.Errorf("want `assert rows OP N`, e.g. assert rows >= 1 (spaces around the operator)")
	case first == "row":
		st.assertMode = "row"
		args = args[1:]
	case first == "no" && len(args) > 1 && strings.EqualFold(args[1].s, "row"):
		st.assertMode = "norow"
		args = args[2:]
	case first == "all" && len(args) > 1 && strings.EqualFold(args[1].s, "rows"):
		st.assertMode = "allrows"
		args = args[2:]
	default:
		return fmt.Errorf("want `assert rows OP N`, `assert row ...`, `assert no row ...` or `assert all rows ...`")
	}
	if len(args) == 0 {
		return fmt.Errorf("assert %s needs at least one FIELD=VALUE", first)
	}
	st.conds, err = parseConds(args)
	return err
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
