package quilttest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// Client is what the runner needs from the cluster; *quilt.Client has it.
type Client interface {
	Sources(ctx context.Context, includeDetached bool) ([]*quiltv1.SourceInfo, error)
	Act(ctx context.Context, a *quiltv1.Action, timeout time.Duration) (*quiltv1.ActionResult, error)
	QueryAll(ctx context.Context, req *quiltv1.QueryRequest) (*quilt.Answer, error)
	Subscribe(ctx context.Context, o quilt.SubscribeOptions, fn func(*quiltv1.Event) error) error
}

var _ Client = (*quilt.Client)(nil)

// DefaultTimeout bounds an `expect` without `within` (the `timeout` step
// changes it for the rest of its case).
const DefaultTimeout = 10 * time.Second

// Runner runs cases against a cluster.
type Runner struct {
	Client Client
	// Out receives the progress: one line per case and per step. Nil
	// discards it.
	Out io.Writer
	// CaseTimeout bounds one case (default 5m).
	CaseTimeout time.Duration
}

// StepResult is the outcome of one step.
type StepResult struct {
	Step     *Step
	Text     string // the step with its variables expanded
	Passed   bool
	Skipped  bool // an earlier step failed, or this or an earlier require was not met
	Err      error
	Duration time.Duration
}

// CaseResult is the outcome of one case.
type CaseResult struct {
	Case     *Case
	Run      string // the ${RUN} id
	Started  time.Time
	Duration time.Duration
	Steps    []StepResult
	Err      error // the first failure; nil when the case passed or was skipped
	// SkipReason says which `require` was not met; "" unless the case was
	// skipped.
	SkipReason string
}

// Passed reports whether every step passed.
func (r *CaseResult) Passed() bool { return r.Err == nil && r.SkipReason == "" }

// Skipped reports whether a `require` was not met, so the case did not run.
func (r *CaseResult) Skipped() bool { return r.Err == nil && r.SkipReason != "" }

// Report is one round over the selected cases.
type Report struct {
	Started  time.Time
	Duration time.Duration
	Cases    []*CaseResult
}

// Counts returns the passed and failed cases; skipped cases are neither.
func (r *Report) Counts() (passed, failed int) {
	passed, failed, _ = r.Tally()
	return
}

// Tally returns the passed, failed and skipped cases.
func (r *Report) Tally() (passed, failed, skipped int) {
	for _, c := range r.Cases {
		switch {
		case c.Passed():
			passed++
		case c.Skipped():
			skipped++
		default:
			failed++
		}
	}
	return
}

// Summary is the final line: "N passed, N failed", with ", N skipped"
// added when a case was skipped.
func (r *Report) Summary() string {
	p, f, s := r.Tally()
	if s == 0 {
		return fmt.Sprintf("%d passed, %d failed", p, f)
	}
	return fmt.Sprintf("%d passed, %d failed, %d skipped", p, f, s)
}

func (r *Runner) printf(format string, args ...any) {
	if r.Out != nil {
		fmt.Fprintf(r.Out, format, args...)
	}
}

// Run runs the cases one after the other and prints the summary line.
func (r *Runner) Run(ctx context.Context, cases []*Case) *Report {
	rep := &Report{Started: time.Now()}
	for _, c := range cases {
		if ctx.Err() != nil {
			break
		}
		rep.Cases = append(rep.Cases, r.RunCase(ctx, c))
	}
	rep.Duration = time.Since(rep.Started)
	r.printf("%s\n", rep.Summary())
	return rep
}

// NewRunID returns a short id unique to one run of a case, for ${RUN}:
// repeated runs never match each other's events.
func NewRunID() string {
	const alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// caseRun is the state of one case while it runs.
type caseRun struct {
	r       *Runner
	c       *Case
	vars    map[string]string
	source  string
	server  string // "" until `use SOURCE/SERVER` or resolved from the sources
	timeout time.Duration
	start   time.Time

	mu       sync.Mutex
	events   []*quiltv1.Event
	consumed []bool
	notify   chan struct{} // closed and replaced when events arrive
	subErr   error

	lastReq    *quiltv1.QueryRequest
	lastAnswer *quilt.Answer
	lastErr    error // the last query's failure or partial answer
	next       *Step // the step after the running one
}

// RunCase runs one case. A failing step fails the case; the steps after it
// are reported as skipped.
func (r *Runner) RunCase(ctx context.Context, c *Case) *CaseResult {
	limit := r.CaseTimeout
	if limit <= 0 {
		limit = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	res := &CaseResult{Case: c, Run: NewRunID(), Started: time.Now()}
	cr := &caseRun{r: r, c: c, timeout: DefaultTimeout, start: res.Started, notify: make(chan struct{}),
		vars: map[string]string{"RUN": res.Run, "CASE": c.Name}}
	where := c.File
	if where == "" {
		where = "-"
	}
	r.printf("=== %s (%s) run %s\n", c.Name, where, res.Run)

	// Subscribe before the first step that touches the cluster (after the
	// requires, so a skipped case opens no stream), replaying from the
	// case's start, so an event caused by a step is seen however late the
	// stream is set up.
	subCtx, stopSub := context.WithCancel(ctx)
	subDone := make(chan struct{})
	subscribed := false
	subscribe := func() {
		subscribed = true
		if !needsEvents(c) {
			close(subDone)
			return
		}
		go func() {
			defer close(subDone)
			err := r.Client.Subscribe(subCtx, quilt.SubscribeOptions{ReplaySince: cr.start}, func(e *quiltv1.Event) error {
				cr.mu.Lock()
				cr.events = append(cr.events, e)
				cr.consumed = append(cr.consumed, false)
				close(cr.notify)
				cr.notify = make(chan struct{})
				cr.mu.Unlock()
				return nil
			})
			cr.mu.Lock()
			if err != nil && subCtx.Err() == nil {
				cr.subErr = err
			}
			close(cr.notify)
			cr.notify = make(chan struct{})
			cr.mu.Unlock()
		}()
	}
	defer func() {
		stopSub()
		if subscribed {
			<-subDone
		}
	}()

	failed, skipped := false, false
	for i, st := range c.Steps {
		cr.next = nil
		if i+1 < len(c.Steps) {
			cr.next = c.Steps[i+1]
		}
		sr := StepResult{Step: st, Text: cr.expandBest(st.Text)}
		if failed || skipped {
			sr.Skipped = true
			res.Steps = append(res.Steps, sr)
			r.printf("  - %-60s skipped\n", sr.Text)
			continue
		}
		if !subscribed && !setupVerb(st.Verb) {
			subscribe()
		}
		t0 := time.Now()
		err := cr.step(ctx, st)
		sr.Duration = time.Since(t0)
		sr.Text = cr.expandBest(st.Text) // `set` and `use` change what later text means
		var unmet *unmetError
		if errors.As(err, &unmet) {
			skipped = true
			sr.Skipped = true
			res.SkipReason = unmet.reason
			r.printf("  - %-60s %s\n", sr.Text, fmtDur(sr.Duration))
			r.printf("      not met: %s\n", unmet.reason)
		} else if err != nil {
			failed = true
			sr.Err = err
			res.Err = fmt.Errorf("line %d: %s: %w", st.Line, sr.Text, err)
			r.printf("  ✗ %-60s %s\n", sr.Text, fmtDur(sr.Duration))
			for _, l := range strings.Split(err.Error(), "\n") {
				r.printf("      %s\n", l)
			}
		} else {
			sr.Passed = true
			r.printf("  ✓ %-60s %s\n", sr.Text, fmtDur(sr.Duration))
		}
		res.Steps = append(res.Steps, sr)
	}
	res.Duration = time.Since(res.Started)
	switch {
	case failed:
		r.printf("--- FAIL %s (%s)\n", c.Name, fmtDur(res.Duration))
	case skipped:
		r.printf("--- SKIP %s (%s): %s\n", c.Name, fmtDur(res.Duration), res.SkipReason)
	default:
		r.printf("--- PASS %s (%s)\n", c.Name, fmtDur(res.Duration))
	}
	return res
}

// unmetError is a `require` the cluster does not meet: the case is
// skipped, not failed.
type unmetError struct{ reason string }

func (e *unmetError) Error() string { return e.reason }

// require checks that the query master knows the source (attached or
// not) and, when named, its server. A source it does not know is a
// cluster without that protocol: the case is skipped. A known source that
// is detached is not skipped: the steps that follow fail, which is what a
// canary is for.
func (cr *caseRun) require(ctx context.Context, st *Step) error {
	src, err := cr.expand(st.source, false)
	if err != nil {
		return err
	}
	srv, err := cr.expand(st.server, false)
	if err != nil {
		return err
	}
	sources, err := cr.r.Client.Sources(ctx, true)
	if err != nil {
		return fmt.Errorf("listing sources to check %q: %w", src, err)
	}
	var known []string
	for _, s := range sources {
		known = append(known, s.GetName())
		if s.GetName() != src {
			continue
		}
		if srv == "" {
			return nil
		}
		var servers []string
		for _, x := range s.GetServers() {
			if x.GetName() == srv {
				return nil
			}
			servers = append(servers, x.GetName())
		}
		return &unmetError{fmt.Sprintf("source %q has no server %q (servers: %s)", src, srv, orNone(servers))}
	}
	return &unmetError{fmt.Sprintf("the query master knows no source %q (sources: %s)", src, orNone(known))}
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(10 * time.Millisecond).String()
}

func needsEvents(c *Case) bool {
	for _, s := range c.Steps {
		if s.Verb == "expect" {
			return true
		}
	}
	return false
}

// expand replaces ${NAME}; quoteRE regexp-quotes the inserted values, so
// a variable inside a ~ pattern matches its text literally.
func (cr *caseRun) expand(s string, quoteRE bool) (string, error) {
	var missing []string
	out := varRef.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		v, ok := cr.vars[name]
		if !ok {
			switch name {
			case "SOURCE":
				v, ok = cr.source, cr.source != ""
			case "SERVER":
				v, ok = cr.server, cr.server != ""
			}
		}
		if !ok {
			missing = append(missing, name)
			return m
		}
		if quoteRE {
			return regexp.QuoteMeta(v)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("${%s} is not set yet (SOURCE and SERVER come from `use`)", missing[0])
	}
	return out, nil
}

func (cr *caseRun) expandBest(s string) string {
	out, err := cr.expand(s, false)
	if err != nil {
		return s
	}
	return out
}

func (cr *caseRun) compile(cs []cond) ([]compiled, error) {
	out := make([]compiled, 0, len(cs))
	for _, c := range cs {
		re := c.Op == "~" || c.Op == "!~"
		v, err := cr.expand(c.Value, re)
		if err != nil {
			return nil, err
		}
		cc := compiled{cond: cond{Field: c.Field, Op: c.Op, Value: v}}
		if re {
			if cc.re, err = regexp.Compile(v); err != nil {
				return nil, fmt.Errorf("%s~%q: %v", c.Field, v, err)
			}
		}
		out = append(out, cc)
	}
	return out, nil
}

func (cr *caseRun) step(ctx context.Context, st *Step) error {
	switch st.Verb {
	case "use":
		cr.source, cr.server = st.source, st.server
		return nil
	case "require":
		return cr.require(ctx, st)
	case "set":
		v, err := cr.expand(st.varValue, false)
		if err != nil {
			return err
		}
		cr.vars[st.varName] = v
		return nil
	case "timeout":
		cr.timeout = st.wait
		return nil
	case "wait":
		t := time.NewTimer(st.wait)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	case "act":
		return cr.act(ctx, st)
	case "expect":
		return cr.expect(ctx, st)
	case "query":
		return cr.query(ctx, st)
	case "assert":
		return cr.assert(ctx, st)
	}
	return fmt.Errorf("unknown step %q", st.Verb)
}

// target returns the source and server an action or default filter uses:
// the step's source=/server= options, else `use`; a source with a single
// server needs no server named.
func (cr *caseRun) target(ctx context.Context, opts map[string]string, needServer bool) (string, string, error) {
	src, srv := cr.source, cr.server
	if v, ok := opts["source"]; ok {
		src, srv = v, ""
	}
	if v, ok := opts["server"]; ok {
		srv = v
	}
	var err error
	if src, err = cr.expand(src, false); err != nil {
		return "", "", err
	}
	if srv, err = cr.expand(srv, false); err != nil {
		return "", "", err
	}
	if src == "" {
		return "", "", errors.New("no source: add `use SOURCE[/SERVER]` before this step, or source=NAME")
	}
	if srv != "" || !needServer {
		return src, srv, nil
	}
	sources, err := cr.r.Client.Sources(ctx, false)
	if err != nil {
		return "", "", fmt.Errorf("listing sources to find the server of %q: %w", src, err)
	}
	var have []string
	for _, s := range sources {
		have = append(have, s.GetName())
		if s.GetName() != src {
			continue
		}
		switch len(s.GetServers()) {
		case 1:
			srv = s.GetServers()[0].GetName()
			if opts["source"] == "" && opts["server"] == "" {
				cr.server = srv // ${SERVER} from now on
			}
			return src, srv, nil
		case 0:
			return "", "", fmt.Errorf("source %q has no servers", src)
		default:
			var sv []string
			for _, x := range s.GetServers() {
				sv = append(sv, x.GetName())
			}
			return "", "", fmt.Errorf("source %q has several servers (%s): name one with `use %s/SERVER` or server=NAME", src, strings.Join(sv, ", "), src)
		}
	}
	return "", "", fmt.Errorf("source %q is not attached (attached: %s)", src, strings.Join(have, ", "))
}

func (cr *caseRun) act(ctx context.Context, st *Step) error {
	src, srv, err := cr.target(ctx, st.actOpts, true)
	if err != nil {
		return err
	}
	args := make([]string, len(st.actArgs))
	for i, a := range st.actArgs {
		if args[i], err = cr.expand(a, false); err != nil {
			return err
		}
	}
	opt := func(k string) (string, error) { return cr.expand(st.actOpts[k], false) }
	a := &quiltv1.Action{Source: src, Server: srv}
	switch st.actKind {
	case "send":
		a.Kind, a.Target, a.Text = quiltv1.ActionKind_ACTION_KIND_SEND, args[0], args[1]
		switch st.actOpts["style"] {
		case "notice":
			a.Style = quiltv1.SendStyle_SEND_STYLE_NOTICE
		case "emote":
			a.Style = quiltv1.SendStyle_SEND_STYLE_EMOTE
		}
	case "join":
		a.Kind, a.Target = quiltv1.ActionKind_ACTION_KIND_JOIN, args[0]
		if a.Key, err = opt("key"); err != nil {
			return err
		}
	case "part":
		a.Kind, a.Target = quiltv1.ActionKind_ACTION_KIND_PART, args[0]
		if len(args) > 1 {
			a.Text = args[1]
		}
	case "kick":
		a.Kind, a.Target, a.User = quiltv1.ActionKind_ACTION_KIND_KICK, args[0], args[1]
		if len(args) > 2 {
			a.Text = args[2]
		}
	case "topic":
		a.Kind, a.Target, a.Text = quiltv1.ActionKind_ACTION_KIND_TOPIC, args[0], args[1]
	case "raw":
		a.Kind, a.Text = quiltv1.ActionKind_ACTION_KIND_RAW, args[0]
	case "reconnect":
		a.Kind = quiltv1.ActionKind_ACTION_KIND_RECONNECT
	}
	var timeout time.Duration
	if s, ok := st.actOpts["timeout"]; ok {
		timeout, _ = parseDuration(s) // checked by the parser
	}
	res, err := cr.r.Client.Act(ctx, a, timeout)
	if err != nil {
		return fmt.Errorf("%s on %s/%s: %w", st.actKind, src, srv, err)
	}
	if !res.GetOk() {
		return fmt.Errorf("%s on %s/%s failed: %s", st.actKind, src, srv, res.GetError())
	}
	return nil
}

// expect waits for an unconsumed event (since the case started) matching
// every condition, and consumes it; `expect no event` fails if one arrives
// within the window. Conditions default to the `use` source and server.
func (cr *caseRun) expect(ctx context.Context, st *Step) error {
	conds, err := cr.compile(cr.withDefaults(st.conds))
	if err != nil {
		return err
	}
	within := st.within
	if within <= 0 {
		within = cr.timeout
	}
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	next := 0
	for {
		cr.mu.Lock()
		found := -1
		for i := next; i < len(cr.events); i++ {
			if !cr.consumed[i] && allHold(conds, eventFieldsOf(cr.events[i])) {
				found = i
				break
			}
		}
		next = len(cr.events)
		if found >= 0 && !st.not {
			cr.consumed[found] = true
		}
		var ev *quiltv1.Event
		if found >= 0 {
			ev = cr.events[found]
		}
		seen, subErr, notify := len(cr.events), cr.subErr, cr.notify
		cr.mu.Unlock()
		switch {
		case found >= 0 && st.not:
			return fmt.Errorf("an event matched: %s", describe(eventFieldsOf(ev), eventFields))
		case found >= 0:
			return nil
		case subErr != nil:
			return fmt.Errorf("the event subscription failed: %w", subErr)
		}
		select {
		case <-notify:
		case <-deadline.C:
			if st.not {
				return nil
			}
			return fmt.Errorf("no matching event within %s (%d events seen since the case started)%s", within, seen, cr.nearest(conds))
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// withDefaults adds source= and server= from `use` unless the step names
// them (source=* or server=* matches any).
func (cr *caseRun) withDefaults(cs []cond) []cond {
	has := map[string]bool{}
	var out []cond
	for _, c := range cs {
		has[c.Field] = true
		if (c.Field == "source" || c.Field == "server") && c.Op == "=" && c.Value == "*" {
			continue
		}
		out = append(out, c)
	}
	if !has["source"] && cr.source != "" {
		out = append(out, cond{Field: "source", Op: "=", Value: cr.source})
		if !has["server"] && cr.server != "" {
			out = append(out, cond{Field: "server", Op: "=", Value: cr.server})
		}
	}
	return out
}

// nearest shows the event that matched the most conditions, to make a
// failure readable.
func (cr *caseRun) nearest(conds []compiled) string {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	best, score := -1, 0
	for i, e := range cr.events {
		f := eventFieldsOf(e)
		n := 0
		for _, c := range conds {
			if c.holds(f) {
				n++
			}
		}
		if n > score {
			best, score = i, n
		}
	}
	if best < 0 {
		return ""
	}
	return fmt.Sprintf("\nclosest (%d of %d conditions): %s", score, len(conds), describe(eventFieldsOf(cr.events[best]), eventFields))
}

func (cr *caseRun) query(ctx context.Context, st *Step) error {
	req := &quiltv1.QueryRequest{Kind: st.queryKind, Pattern: st.pattern, Filter: &quiltv1.EventFilter{}}
	f := req.Filter
	sourceSet := false
	for _, c := range st.queryParams {
		v, err := cr.expand(c.Value, false)
		if err != nil {
			return err
		}
		if st.pattern != "" {
			if req.Vars == nil {
				req.Vars = map[string]string{}
			}
			req.Vars[c.Field] = v
			continue
		}
		switch c.Field {
		case "source":
			sourceSet = true
			if v != "*" {
				f.Sources = strings.Split(v, ",")
			}
		case "server":
			f.Server = v
		case "channel":
			f.Channel = v
		case "user":
			f.User = v
		case "kind":
			for _, k := range strings.Split(v, ",") {
				ek, ok := eventKind(k)
				if !ok {
					return fmt.Errorf("kind=%q: want %s", v, strings.Join(eventKindNames(), ", "))
				}
				f.Kinds = append(f.Kinds, ek)
			}
		case "text":
			if c.Op == "~" {
				f.TextRegex = v
			} else {
				f.Text = v
			}
		case "since", "until":
			t, err := cr.when(v)
			if err != nil {
				return fmt.Errorf("%s=%q: %w", c.Field, v, err)
			}
			if c.Field == "since" {
				f.Since = timestamppb.New(t)
			} else {
				f.Until = timestamppb.New(t)
			}
		case "limit":
			n, _ := strconv.Atoi(v)
			req.Limit = int32(n)
		case "oldest":
			req.OldestFirst = v == "true" || v == "yes" || v == "1"
		}
	}
	if st.pattern == "" && !sourceSet && cr.source != "" && st.queryKind != "sources" {
		f.Sources = []string{cr.source}
		if f.Server == "" && cr.server != "" {
			f.Server = cr.server
		}
	}
	if st.pattern != "" {
		req.Filter = nil
	}
	cr.lastReq = req
	err := cr.runQuery(ctx)
	if err != nil && cr.next != nil && cr.next.Verb == "assert" && cr.next.within > 0 {
		// The assert re-runs the query until it holds: a source still
		// attaching is not a failure yet.
		return nil
	}
	return err
}

func (cr *caseRun) when(v string) (time.Time, error) {
	if v == "case" {
		return cr.start, nil
	}
	if d, err := parseDuration(v); err == nil {
		return time.Now().Add(-d), nil
	}
	return time.Parse(time.RFC3339, v)
}

func (cr *caseRun) runQuery(ctx context.Context) error {
	a, err := cr.r.Client.QueryAll(ctx, cr.lastReq)
	cr.lastAnswer, cr.lastErr = a, err
	if err != nil {
		return err
	}
	if len(a.Problems) > 0 {
		var ps []string
		for _, p := range a.Problems {
			ps = append(ps, fmt.Sprintf("%s: %s %s", p.GetSource(), p.GetReason(), p.GetError()))
		}
		cr.lastErr = fmt.Errorf("partial answer, some sources did not answer: %s", strings.Join(ps, "; "))
	}
	return cr.lastErr
}

// assert checks the last query's rows; with `within` it re-runs the query
// until the assertion holds or the time is up.
func (cr *caseRun) assert(ctx context.Context, st *Step) error {
	if cr.lastReq == nil {
		return errors.New("no query to assert on: put a `query` step before it")
	}
	conds, err := cr.compile(st.conds)
	if err != nil {
		return err
	}
	var deadline time.Time
	if st.within > 0 {
		deadline = time.Now().Add(st.within)
	}
	for {
		err := cr.check(st, conds)
		if err == nil || deadline.IsZero() || time.Now().After(deadline) {
			return err
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("%w while retrying; last: %v", ctx.Err(), err)
		}
		cr.runQuery(ctx) // check reports its failure
	}
}

func (cr *caseRun) check(st *Step, conds []compiled) error {
	a := cr.lastAnswer
	if cr.lastErr != nil {
		return fmt.Errorf("the query failed: %w", cr.lastErr)
	}
	if st.assertMode == "rows" {
		if compare(float64(len(a.Rows)), st.rowsOp, float64(st.rowsN)) {
			return nil
		}
		return fmt.Errorf("%d rows, want %s %d", len(a.Rows), st.rowsOp, st.rowsN)
	}
	matched := 0
	var firstMiss, firstHit string
	for _, row := range a.Rows {
		f, kind, known := rowFields(row)
		if err := checkFields(st.conds, known); err != nil {
			return fmt.Errorf("%s rows: %w", kind, err)
		}
		if allHold(conds, f) {
			matched++
			if firstHit == "" {
				firstHit = describe(f, known)
			}
		} else if firstMiss == "" {
			firstMiss = describe(f, known)
		}
	}
	switch st.assertMode {
	case "row":
		if matched > 0 {
			return nil
		}
		return fmt.Errorf("none of %d rows matches%s", len(a.Rows), sample(a))
	case "norow":
		if matched == 0 {
			return nil
		}
		return fmt.Errorf("%d of %d rows match, e.g. %s", matched, len(a.Rows), firstHit)
	case "allrows":
		if matched == len(a.Rows) {
			return nil
		}
		return fmt.Errorf("%d of %d rows do not match, e.g. %s", len(a.Rows)-matched, len(a.Rows), firstMiss)
	}
	return fmt.Errorf("unknown assert %q", st.assertMode)
}

// sample lists a few rows of an answer for a failure message.
func sample(a *quilt.Answer) string {
	var b strings.Builder
	for i, row := range a.Rows {
		if i == 5 {
			fmt.Fprintf(&b, "\n  ... %d more", len(a.Rows)-i)
			break
		}
		f, _, known := rowFields(row)
		fmt.Fprintf(&b, "\n  row: %s", describe(f, known))
	}
	return b.String()
}
