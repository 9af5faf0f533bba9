// Package storetest is the contract every store.Store implementation must
// pass (the litestream RunWithReplicaClient pattern): de-duplication under
// concurrency, every history filter against a reference model, ordering,
// paging, last seen, cursors, desired servers, sources, query records,
// channel info, retention clean-up and restart persistence.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// Storage creates fresh, empty storage for one test and returns a function
// that opens a store on it. Calling open again after Close must reopen the
// same data (restart persistence). open should register t.Cleanup to close
// what it opened; the suite may also Close first.
type Storage func(t *testing.T) (open func(t *testing.T) store.Store)

// Options tune the suite for slow backends.
type Options struct {
	// ConcurrentIDs is how many distinct ids the concurrency test sends
	// (default 400).
	ConcurrentIDs int
}

// Run runs the contract against the implementation behind storage.
func Run(t *testing.T, storage Storage, opts Options) {
	if opts.ConcurrentIDs <= 0 {
		opts.ConcurrentIDs = 400
	}
	fresh := func(t *testing.T) store.Store { return storage(t)(t) }
	t.Run("InsertAndDuplicates", func(t *testing.T) { testInsertAndDuplicates(t, fresh(t)) })
	t.Run("RejectsBadBatches", func(t *testing.T) { testRejects(t, fresh(t)) })
	t.Run("ConcurrentOverlappingBatches", func(t *testing.T) { testConcurrent(t, fresh(t), opts.ConcurrentIDs) })
	t.Run("Filters", func(t *testing.T) { testFilters(t, fresh(t)) })
	t.Run("OrderingTies", func(t *testing.T) { testTies(t, fresh(t)) })
	t.Run("Paging", func(t *testing.T) { testPaging(t, fresh(t)) })
	t.Run("LastSeen", func(t *testing.T) { testLastSeen(t, fresh(t)) })
	t.Run("Cursors", func(t *testing.T) { testCursors(t, fresh(t)) })
	t.Run("DesiredServers", func(t *testing.T) { testDesired(t, fresh(t)) })
	t.Run("Sources", func(t *testing.T) { testSources(t, fresh(t)) })
	t.Run("Queries", func(t *testing.T) { testQueries(t, fresh(t)) })
	t.Run("ChannelInfo", func(t *testing.T) { testChannels(t, fresh(t)) })
	t.Run("Cleanup", func(t *testing.T) { testCleanup(t, fresh(t)) })
	t.Run("RestartPersistence", func(t *testing.T) { testRestart(t, storage(t)) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// T0 is the base time of fixture events; whole seconds far from "now" so
// clean-up by time cannot touch them by accident.
var T0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ev(id string, at time.Duration, kind quiltv1.EventKind, channel, text string, u *quiltv1.User) *quiltv1.Event {
	return &quiltv1.Event{
		Id: id, Server: "net1", Protocol: "test", Kind: kind,
		Time: timestamppb.New(T0.Add(at)), User: u, Channel: channel, Text: text,
	}
}

func ids(evs []*quiltv1.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.GetSource() + "/" + e.GetId()
	}
	return out
}

func insert(t *testing.T, s store.Store, source string, evs ...*quiltv1.Event) store.InsertResult {
	t.Helper()
	r, err := s.InsertEvents(ctx(t), source, evs, nil)
	if err != nil {
		t.Fatalf("InsertEvents(%s, %d events): %v", source, len(evs), err)
	}
	return r
}

func all(t *testing.T, s store.Store, f *quiltv1.EventFilter, oldest bool) []*quiltv1.Event {
	t.Helper()
	var out []*quiltv1.Event
	q := store.EventQuery{Filter: f, Limit: store.MaxLimit, OldestFirst: oldest}
	for i := 0; ; i++ {
		p, err := s.QueryEvents(ctx(t), q)
		if err != nil {
			t.Fatalf("QueryEvents(%v): %v", f, err)
		}
		out = append(out, p.Events...)
		if p.NextPageToken == "" {
			return out
		}
		if i > 1000 {
			t.Fatal("QueryEvents: paging does not end")
		}
		q.PageToken = p.NextPageToken
	}
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}

func testInsertAndDuplicates(t *testing.T, s store.Store) {
	u := &quiltv1.User{Transient: "alice"}
	a := ev("a", 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "one", u)
	b := ev("b", time.Second, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "two", u)
	c := ev("c", 2*time.Second, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "three", u)
	r := insert(t, s, "src", a, b)
	if r.Stored != 2 || len(r.Duplicates) != 0 {
		t.Fatalf("first batch: %+v, want 2 stored", r)
	}
	// Overlapping replay plus a repeated id inside the batch.
	r = insert(t, s, "src", b, c, c, a)
	if r.Stored != 1 {
		t.Errorf("replay stored %d, want 1 (only c)", r.Stored)
	}
	sort.Strings(r.Duplicates)
	equal(t, "duplicates", r.Duplicates, []string{"a", "b", "c"})
	// The same id from another source is another event.
	r = insert(t, s, "other", proto.Clone(a).(*quiltv1.Event))
	if r.Stored != 1 {
		t.Errorf("same id, other source: stored %d, want 1", r.Stored)
	}
	got := all(t, s, nil, true)
	equal(t, "stored", ids(got), []string{"src/a", "other/a", "src/b", "src/c"})
	if got[0].GetSource() != "src" || got[0].GetText() != "one" || got[0].GetUser().GetTransient() != "alice" {
		t.Errorf("stored event lost fields: %v", got[0])
	}
	n, err := s.CountEvents(ctx(t), nil)
	if err != nil || n != 4 {
		t.Errorf("CountEvents = %d, %v; want 4", n, err)
	}
	if r, err := s.InsertEvents(ctx(t), "src", nil, nil); err != nil || r.Stored != 0 {
		t.Errorf("empty batch: %+v, %v", r, err)
	}
}

func testRejects(t *testing.T, s store.Store) {
	u := &quiltv1.User{Transient: "alice"}
	good := ev("good", 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "x", u)
	noID := ev("", 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "y", u)
	_, err := s.InsertEvents(ctx(t), "src", []*quiltv1.Event{good, noID}, nil)
	if err == nil || !strings.Contains(err.Error(), "no id") {
		t.Errorf("batch with an event without id: err = %v, want an error saying it has no id", err)
	}
	wrong := ev("w", 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "y", u)
	wrong.Source = "elsewhere"
	if _, err := s.InsertEvents(ctx(t), "src", []*quiltv1.Event{wrong}, nil); err == nil {
		t.Error("event naming another source was accepted")
	}
	if n, _ := s.CountEvents(ctx(t), nil); n != 0 {
		t.Errorf("%d events stored from rejected batches, want 0", n)
	}
	// The rejected batch did not record "good" as processed.
	if r := insert(t, s, "src", good); r.Stored != 1 {
		t.Errorf("event of a rejected batch: stored %d later, want 1", r.Stored)
	}
	if _, err := s.QueryEvents(ctx(t), store.EventQuery{PageToken: "garbage!"}); err == nil {
		t.Error("bad page token accepted")
	}
	if _, err := s.QueryEvents(ctx(t), store.EventQuery{Filter: &quiltv1.EventFilter{TextRegex: "("}}); err == nil {
		t.Error("bad regex accepted")
	}
}

func testConcurrent(t *testing.T, s store.Store, n int) {
	const workers = 8
	const batch = 50
	u := &quiltv1.User{Transient: "bot"}
	mk := func(i int) *quiltv1.Event {
		return ev(fmt.Sprintf("id%05d", i), time.Duration(i)*time.Millisecond, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", fmt.Sprint("m", i), u)
	}
	var mu sync.Mutex
	stored, dups, sent := 0, 0, 0
	seenDup := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			// Each worker walks all ids from a different offset, in batches
			// that straddle the others', so every id is raced by all.
			off := w * n / workers
			for k := 0; k < n; k += batch {
				var evs []*quiltv1.Event
				for j := k; j < k+batch && j < n; j++ {
					evs = append(evs, mk((off+j)%n))
				}
				r, err := s.InsertEvents(context.Background(), "src", evs, nil)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				stored += r.Stored
				dups += len(r.Duplicates)
				sent += len(evs)
				for _, d := range r.Duplicates {
					seenDup[d]++
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent insert: %v", err)
	}
	if stored != n {
		t.Errorf("stored %d in total, want exactly %d (one copy per id)", stored, n)
	}
	if stored+dups != sent {
		t.Errorf("stored %d + duplicates %d != sent %d", stored, dups, sent)
	}
	for id, c := range seenDup {
		if c != workers-1 {
			t.Errorf("id %s reported duplicate %d times, want %d", id, c, workers-1)
			break
		}
	}
	got := all(t, s, nil, true)
	if len(got) != n {
		t.Fatalf("%d events stored, want %d", len(got), n)
	}
	for i, e := range got {
		if want := fmt.Sprintf("id%05d", i); e.GetId() != want {
			t.Fatalf("event %d is %s, want %s (a copy or a gap)", i, e.GetId(), want)
		}
	}
}

// fixture is a small world with every dimension the filters select on.
func fixture() (bySource map[string][]*quiltv1.Event, order []*quiltv1.Event) {
	alice := &quiltv1.User{Transient: "Alice", Persistent: "alice@host.example", Display: "Alice Liddell", Group: "alice"}
	alice2 := &quiltv1.User{Transient: "alice_", Persistent: "alice@host.example", Display: "Alice", Group: "alice"}
	bob := &quiltv1.User{Transient: "bob", Persistent: "+bob"}
	rob := &quiltv1.User{Transient: "rob", Display: "Robert"}
	carol := &quiltv1.User{Transient: "carol@mail.example", Group: "carol@mail.example"}
	M := quiltv1.EventKind_EVENT_KIND_MESSAGE
	N := quiltv1.EventKind_EVENT_KIND_NOTICE
	J := quiltv1.EventKind_EVENT_KIND_JOIN
	P := quiltv1.EventKind_EVENT_KIND_PART
	A := quiltv1.EventKind_EVENT_KIND_ACTION
	m := time.Minute
	type row struct {
		src string
		e   *quiltv1.Event
	}
	rows := []row{
		{"irc", ev("1", 0, J, "#ops", "", alice)},
		{"irc", ev("2", 1*m, M, "#ops", "the OUTAGE started at 10:00", alice)},
		{"irc", ev("3", 2*m, M, "#ops", "deploy finished", bob)},
		{"irc", ev("4", 2*m, N, "#ops", "50% done (a.b)", bob)},
		{"mx", ev("5", 3*m, M, "!room", "Outages happen; deployed", rob)},
		{"irc", ev("6", 4*m, A, "#dev", "waves at the team", alice2)},
		{"irc", ev("7", 5*m, P, "#dev", "bye", alice2)},
		{"mx", ev("8", 6*m, J, "!room", "", carol)},
		{"mx", ev("9", 7*m, M, "!room", "Ünïcode ÄRGER test", carol)},
		{"irc", ev("10", 8*m, M, "#ops", "ta da", rob)},
		{"irc", ev("11", 9*m, J, "#ops", "", bob)},
		{"mx", ev("12", 9*m, M, "!room", "deployed: outage over", alice)},
	}
	rows[4].e.Server = "matrix.example"
	rows[7].e.Server = "matrix.example"
	rows[8].e.Server = "matrix.example"
	rows[11].e.Server = "matrix.example"
	rows[9].e.Server = "net2"
	bySource = map[string][]*quiltv1.Event{}
	for _, r := range rows {
		r.e.Source = r.src
		bySource[r.src] = append(bySource[r.src], r.e)
		order = append(order, r.e)
	}
	return bySource, order
}

// loadFixture inserts the fixture in order (one event per batch, so the
// insertion order is the fixture's order).
func loadFixture(t *testing.T, s store.Store) []*quiltv1.Event {
	_, order := fixture()
	for _, e := range order {
		insert(t, s, e.GetSource(), e)
	}
	return order
}

func lowerNames(u *quiltv1.User) []string {
	var out []string
	for _, n := range []string{u.GetTransient(), u.GetPersistent(), u.GetDisplay(), u.GetGroup()} {
		if n != "" {
			out = append(out, strings.ToLower(n))
		}
	}
	return out
}

// match is the reference semantics of EventFilter.
func match(e *quiltv1.Event, f *quiltv1.EventFilter) bool {
	if len(f.GetSources()) > 0 {
		ok := false
		for _, s := range f.GetSources() {
			ok = ok || s == e.GetSource()
		}
		if !ok {
			return false
		}
	}
	if f.GetServer() != "" && f.GetServer() != e.GetServer() {
		return false
	}
	if f.GetChannel() != "" && f.GetChannel() != e.GetChannel() {
		return false
	}
	if u := f.GetUser(); u != "" {
		var re *regexp.Regexp
		if strings.ContainsAny(u, "*?") {
			q := regexp.QuoteMeta(strings.ToLower(u))
			q = strings.ReplaceAll(strings.ReplaceAll(q, `\*`, ".*"), `\?`, ".")
			re = regexp.MustCompile("^" + q + "$")
		}
		ok := false
		for _, n := range lowerNames(e.GetUser()) {
			ok = ok || (re == nil && n == strings.ToLower(u)) || (re != nil && re.MatchString(n))
		}
		if !ok {
			return false
		}
	}
	if len(f.GetKinds()) > 0 {
		ok := false
		for _, k := range f.GetKinds() {
			ok = ok || k == e.GetKind()
		}
		if !ok {
			return false
		}
	}
	if f.GetText() != "" && !strings.Contains(strings.ToLower(e.GetText()), strings.ToLower(f.GetText())) {
		return false
	}
	if f.GetTextRegex() != "" && !regexp.MustCompile(f.GetTextRegex()).MatchString(e.GetText()) {
		return false
	}
	t := e.GetTime().AsTime()
	if f.GetSince() != nil && t.Before(f.GetSince().AsTime()) {
		return false
	}
	if f.GetUntil() != nil && !t.Before(f.GetUntil().AsTime()) {
		return false
	}
	return true
}

// expect filters the fixture (in insertion order) and orders it.
func expect(order []*quiltv1.Event, f *quiltv1.EventFilter, oldest bool) []string {
	type x struct {
		e *quiltv1.Event
		i int
	}
	var xs []x
	for i, e := range order {
		if match(e, f) {
			xs = append(xs, x{e, i})
		}
	}
	sort.SliceStable(xs, func(a, b int) bool {
		ta, tb := xs[a].e.GetTime().AsTime(), xs[b].e.GetTime().AsTime()
		if !ta.Equal(tb) {
			return ta.Before(tb) == oldest
		}
		return (xs[a].i < xs[b].i) == oldest
	})
	out := make([]string, len(xs))
	for i, v := range xs {
		out[i] = v.e.GetSource() + "/" + v.e.GetId()
	}
	return out
}

func kinds(k ...quiltv1.EventKind) []quiltv1.EventKind { return k }

func testFilters(t *testing.T, s store.Store) {
	order := loadFixture(t, s)
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(T0.Add(d)) }
	m := time.Minute
	cases := []struct {
		name string
		f    *quiltv1.EventFilter
		min  int // guards against a filter the fixture makes vacuous
	}{
		{"all", nil, 12},
		{"source", &quiltv1.EventFilter{Sources: []string{"mx"}}, 4},
		{"sources", &quiltv1.EventFilter{Sources: []string{"mx", "irc"}}, 12},
		{"unknown source", &quiltv1.EventFilter{Sources: []string{"nope"}}, 0},
		{"server", &quiltv1.EventFilter{Server: "net2"}, 1},
		{"channel", &quiltv1.EventFilter{Channel: "#ops"}, 6},
		{"user transient and group, other case", &quiltv1.EventFilter{User: "ALICE"}, 5},
		{"user persistent", &quiltv1.EventFilter{User: "alice@HOST.example"}, 5},
		{"user display", &quiltv1.EventFilter{User: "robert"}, 2},
		{"user display with space", &quiltv1.EventFilter{User: "alice liddell"}, 3},
		{"user group", &quiltv1.EventFilter{User: "carol@mail.example"}, 2},
		{"user persistent +", &quiltv1.EventFilter{User: "+bob"}, 3},
		{"user glob *", &quiltv1.EventFilter{User: "ali*"}, 5},
		{"user glob ?", &quiltv1.EventFilter{User: "?ob"}, 5},
		{"user glob literal dot", &quiltv1.EventFilter{User: "carol@mail?example"}, 2},
		{"user glob no match", &quiltv1.EventFilter{User: "ali"}, 0},
		{"kind", &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_MESSAGE)}, 6},
		{"kinds", &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_JOIN, quiltv1.EventKind_EVENT_KIND_PART)}, 4},
		{"text word, case", &quiltv1.EventFilter{Text: "outage"}, 3},
		{"text inside a word", &quiltv1.EventFilter{Text: "ploy"}, 3},
		{"text short", &quiltv1.EventFilter{Text: "ta"}, 4},
		{"text specials", &quiltv1.EventFilter{Text: "50% done (a.b"}, 1},
		{"text dot literal", &quiltv1.EventFilter{Text: "a.b"}, 1},
		{"text unicode case", &quiltv1.EventFilter{Text: "ärger"}, 1},
		{"text quote", &quiltv1.EventFilter{Text: `"x`}, 0},
		{"regex", &quiltv1.EventFilter{TextRegex: `^deploy(ed|ing)?\b`}, 2},
		{"regex case-insensitive flag", &quiltv1.EventFilter{TextRegex: `(?i)outage`}, 3},
		{"since", &quiltv1.EventFilter{Since: ts(8 * m)}, 3},
		{"until", &quiltv1.EventFilter{Until: ts(2 * m)}, 2},
		{"since until", &quiltv1.EventFilter{Since: ts(2 * m), Until: ts(5 * m)}, 4},
		{"combined", &quiltv1.EventFilter{Sources: []string{"irc"}, Channel: "#ops", User: "b*", Kinds: kinds(quiltv1.EventKind_EVENT_KIND_MESSAGE, quiltv1.EventKind_EVENT_KIND_NOTICE)}, 2},
		{"user and text", &quiltv1.EventFilter{User: "alice", Text: "outage"}, 2},
		{"user glob and time", &quiltv1.EventFilter{User: "*o*", Since: ts(3 * m)}, 8},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, oldest := range []bool{false, true} {
				want := expect(order, c.f, oldest)
				if len(want) != c.min {
					t.Fatalf("fixture gives %d events for this filter, case says %d: fix the case", len(want), c.min)
				}
				equal(t, fmt.Sprintf("oldest=%v", oldest), ids(all(t, s, c.f, oldest)), want)
			}
			n, err := s.CountEvents(ctx(t), c.f)
			if err != nil || n != int64(c.min) {
				t.Errorf("CountEvents = %d, %v; want %d", n, err, c.min)
			}
		})
	}
}

func testTies(t *testing.T, s store.Store) {
	u := &quiltv1.User{Transient: "x"}
	var want []string
	// Insertion order differs from id order and from source order; all
	// events share one time, so only insertion order can order them.
	for i, id := range []string{"m", "c", "x", "a", "q"} {
		src := []string{"s1", "s2"}[i%2]
		insert(t, s, src, ev(id, 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "same", u))
		want = append(want, src+"/"+id)
	}
	equal(t, "oldest first", ids(all(t, s, nil, true)), want)
	var rev []string
	for i := len(want) - 1; i >= 0; i-- {
		rev = append(rev, want[i])
	}
	equal(t, "newest first", ids(all(t, s, nil, false)), rev)
	// Events without a time sort as the oldest.
	e := ev("untimed", 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "", u)
	e.Time = nil
	insert(t, s, "s1", e)
	got := all(t, s, nil, true)
	if got[0].GetId() != "untimed" {
		t.Errorf("untimed event is at %v, want first oldest-first", ids(got))
	}
}

func testPaging(t *testing.T, s store.Store) {
	u := &quiltv1.User{Transient: "pager"}
	var evs []*quiltv1.Event
	for i := 0; i < 53; i++ {
		// Pairs of equal times make page boundaries fall inside ties.
		evs = append(evs, ev(fmt.Sprint("p", i), time.Duration(i/2)*time.Second, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "x", u))
	}
	insert(t, s, "src", evs...)
	for _, oldest := range []bool{false, true} {
		for _, limit := range []int{1, 7, 10, 53, 100} {
			full := ids(all(t, s, nil, oldest))
			var got []string
			q := store.EventQuery{Limit: limit, OldestFirst: oldest}
			pages := 0
			for {
				p, err := s.QueryEvents(ctx(t), q)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(p.Events) > limit {
					t.Fatalf("page of %d events, limit %d", len(p.Events), limit)
				}
				got = append(got, ids(p.Events)...)
				if p.NextPageToken == "" {
					break
				}
				if len(p.Events) != limit {
					t.Fatalf("short page (%d of %d) with a next token", len(p.Events), limit)
				}
				q.PageToken = p.NextPageToken
				if pages > 100 {
					t.Fatal("paging does not end")
				}
			}
			equal(t, fmt.Sprintf("pages of %d, oldest=%v", limit, oldest), got, full)
			if wantPages := (53 + limit - 1) / limit; pages != wantPages && pages != wantPages+1 {
				t.Errorf("%d pages of %d, want %d", pages, limit, wantPages)
			}
		}
	}
	if p, err := s.QueryEvents(ctx(t), store.EventQuery{}); err != nil || len(p.Events) != 53 {
		t.Errorf("default limit page: %d events, %v", len(p.Events), err)
	}
}

func testLastSeen(t *testing.T, s store.Store) {
	order := loadFixture(t, s)
	lastSeen := func(q store.LastSeenQuery) []*quiltv1.LastSeenRow {
		t.Helper()
		rows, err := s.LastSeen(ctx(t), q)
		if err != nil {
			t.Fatalf("LastSeen(%+v): %v", q, err)
		}
		return rows
	}
	byID := map[string]*quiltv1.Event{}
	for _, e := range order {
		byID[e.GetSource()+"/"+e.GetId()] = e
	}
	check := func(q store.LastSeenQuery, want [][3]string) {
		t.Helper()
		rows := lastSeen(q)
		var got [][3]string
		for _, r := range rows {
			msg := ""
			if r.GetLastMessage() != nil {
				msg = r.GetLastMessage().GetSource() + "/" + r.GetLastMessage().GetId()
			}
			got = append(got, [3]string{strings.ToLower(r.GetUser().GetGroup() + "|" + r.GetUser().GetTransient()), r.GetLastEvent().GetSource() + "/" + r.GetLastEvent().GetId(), msg})
			if !r.GetTime().AsTime().Equal(r.GetLastEvent().GetTime().AsTime()) || r.GetChannel() != r.GetLastEvent().GetChannel() || r.GetKind() != r.GetLastEvent().GetKind() || r.GetSource() != r.GetLastEvent().GetSource() {
				t.Errorf("row fields do not describe its last event: %v", r)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("LastSeen(%+v):\n got  %v\n want %v", q, got, want)
		}
	}
	// alice: two transients, one group; newest event mx/12 (a message).
	check(store.LastSeenQuery{User: "alice"}, [][3]string{{"alice|alice", "mx/12", "mx/12"}})
	// On irc alone: alice_ is the same user (group alice); the row shows
	// the user of the newest event, irc/7 (a PART); the newest message is
	// irc/6 (an ACTION counts as said).
	check(store.LastSeenQuery{User: "alice", Sources: []string{"irc"}}, [][3]string{{"alice|alice_", "irc/7", "irc/6"}})
	// bob's newest is a JOIN; his newest message is a NOTICE that ties on
	// time with a MESSAGE inserted before it.
	check(store.LastSeenQuery{User: "BOB"}, [][3]string{{"|bob", "irc/11", "irc/4"}})
	// A glob matching several users: newest first.
	// (alice matches through alice@host.example; her mx/12 ties bob's
	// irc/11 on time and was inserted later.)
	check(store.LastSeenQuery{User: "*o*"}, [][3]string{{"alice|alice", "mx/12", "mx/12"}, {"|bob", "irc/11", "irc/4"}, {"|rob", "irc/10", "irc/10"}, {"carol@mail.example|carol@mail.example", "mx/9", "mx/9"}})
	check(store.LastSeenQuery{User: "*o*", Limit: 2}, [][3]string{{"alice|alice", "mx/12", "mx/12"}, {"|bob", "irc/11", "irc/4"}})
	check(store.LastSeenQuery{User: "?ob"}, [][3]string{{"|bob", "irc/11", "irc/4"}, {"|rob", "irc/10", "irc/10"}})
	check(store.LastSeenQuery{User: "nobody"}, nil)
	// A user seen only joining has no last message.
	u := &quiltv1.User{Transient: "lurker"}
	insert(t, s, "irc", ev("l1", time.Hour, quiltv1.EventKind_EVENT_KIND_JOIN, "#ops", "", u))
	rows := lastSeen(store.LastSeenQuery{User: "lurker"})
	if len(rows) != 1 || rows[0].GetLastMessage() != nil || rows[0].GetLastEvent().GetId() != "l1" {
		t.Errorf("lurker: %v", rows)
	}
}

func testCursors(t *testing.T, s store.Store) {
	c := func(server, name, value string) *quiltv1.Cursor {
		return &quiltv1.Cursor{Server: server, Name: name, Value: value}
	}
	u := &quiltv1.User{Transient: "x"}
	e1 := ev("e1", 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "x", u)
	if _, err := s.InsertEvents(ctx(t), "mx", []*quiltv1.Event{e1}, []*quiltv1.Cursor{c("hs1", "since", "t1"), c("hs2", "since", "u1")}); err != nil {
		t.Fatal(err)
	}
	// A batch of only duplicates still advances its cursors: the cursor
	// says how far the source has read, whatever the store kept.
	r, err := s.InsertEvents(ctx(t), "mx", []*quiltv1.Event{e1}, []*quiltv1.Cursor{c("hs1", "since", "t2")})
	if err != nil || r.Stored != 0 {
		t.Fatalf("dup batch with cursor: %+v, %v", r, err)
	}
	// Cursors alone.
	if _, err := s.InsertEvents(ctx(t), "mx", nil, []*quiltv1.Cursor{c("hs3", "since", "v1")}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Cursors(ctx(t), "mx")
	if err != nil {
		t.Fatal(err)
	}
	var gs []string
	for _, x := range got {
		gs = append(gs, x.GetServer()+"/"+x.GetName()+"="+x.GetValue())
	}
	sort.Strings(gs)
	equal(t, "cursors", gs, []string{"hs1/since=t2", "hs2/since=u1", "hs3/since=v1"})
	if got, _ := s.Cursors(ctx(t), "other"); len(got) != 0 {
		t.Errorf("cursors of another source: %v", got)
	}
	// A rejected batch stores none of its cursors.
	bad := ev("", 0, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", "x", u)
	if _, err := s.InsertEvents(ctx(t), "mx", []*quiltv1.Event{bad}, []*quiltv1.Cursor{c("hs1", "since", "BAD")}); err == nil {
		t.Fatal("batch without id accepted")
	}
	got, _ = s.Cursors(ctx(t), "mx")
	for _, x := range got {
		if x.GetValue() == "BAD" {
			t.Error("cursor of a rejected batch was stored")
		}
	}
}

func testDesired(t *testing.T, s store.Store) {
	set := func(src, server string, en, rc bool) {
		t.Helper()
		if err := s.SetDesiredServer(ctx(t), src, &quiltv1.DesiredServer{Server: server, Enabled: en, Reconnect: rc}); err != nil {
			t.Fatal(err)
		}
	}
	set("irc", "libera", true, false)
	set("irc", "oftc", false, false)
	set("irc", "libera", true, true)
	set("mx", "hs", true, false)
	got, err := s.DesiredServers(ctx(t), "irc")
	if err != nil {
		t.Fatal(err)
	}
	var gs []string
	for _, d := range got {
		gs = append(gs, fmt.Sprintf("%s:%v:%v", d.GetServer(), d.GetEnabled(), d.GetReconnect()))
	}
	equal(t, "desired", gs, []string{"libera:true:true", "oftc:false:false"})
	if got, _ := s.DesiredServers(ctx(t), "none"); len(got) != 0 {
		t.Errorf("desired of unknown source: %v", got)
	}
}

func testSources(t *testing.T, s store.Store) {
	t1 := T0
	t2 := T0.Add(time.Hour)
	put := func(r store.SourceRecord) {
		t.Helper()
		if err := s.PutSource(ctx(t), r); err != nil {
			t.Fatal(err)
		}
	}
	put(store.SourceRecord{Name: "irc", Protocol: "irc", Version: "1", Node: "n1", FirstAttached: t1, LastAttached: t1,
		Servers: []*quiltv1.ServerStatus{{Name: "libera", State: quiltv1.ServerState_SERVER_STATE_CONNECTED, Lag: durationpb.New(time.Millisecond)}}})
	put(store.SourceRecord{Name: "irc", Protocol: "irc", Version: "2", Node: "n2", FirstAttached: t2, LastAttached: t2, DetachedAt: t2.Add(time.Minute)})
	put(store.SourceRecord{Name: "a-mx", Protocol: "matrix", FirstAttached: t2, LastAttached: t2})
	r, err := s.GetSource(ctx(t), "irc")
	if err != nil {
		t.Fatal(err)
	}
	if !r.FirstAttached.Equal(t1) || !r.LastAttached.Equal(t2) || r.Version != "2" || r.Node != "n2" || !r.DetachedAt.Equal(t2.Add(time.Minute)) || len(r.Servers) != 0 {
		t.Errorf("irc after second put: %+v (first attached must stay %v)", r, t1)
	}
	if _, err := s.GetSource(ctx(t), "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetSource(nope) = %v, want ErrNotFound", err)
	}
	all, err := s.Sources(ctx(t))
	if err != nil || len(all) != 2 || all[0].Name != "a-mx" || all[1].Name != "irc" {
		t.Fatalf("Sources = %+v, %v", all, err)
	}
	if !all[0].DetachedAt.IsZero() {
		t.Errorf("a-mx DetachedAt = %v, want zero", all[0].DetachedAt)
	}
	put(store.SourceRecord{Name: "a-mx", Protocol: "matrix", FirstAttached: t2.Add(time.Hour), LastAttached: t2.Add(time.Hour),
		Servers: []*quiltv1.ServerStatus{{Name: "hs", Enabled: true}}})
	r, _ = s.GetSource(ctx(t), "a-mx")
	if !r.FirstAttached.Equal(t2) || len(r.Servers) != 1 || r.Servers[0].GetName() != "hs" || !r.Servers[0].GetEnabled() {
		t.Errorf("a-mx: %+v", r)
	}
}

func testQueries(t *testing.T, s store.Store) {
	put := func(id, by string, at time.Duration, state quiltv1.QueryState) {
		t.Helper()
		r := &quiltv1.QueryRecord{Id: id, Kind: "events", RequestedBy: by, Started: timestamppb.New(T0.Add(at)), State: state,
			Vars: map[string]string{"user": "alice"}, Request: &quiltv1.QueryRequest{Kind: "events", Limit: 5}}
		if err := s.PutQuery(ctx(t), r); err != nil {
			t.Fatal(err)
		}
	}
	put("q1", "ops", 0, quiltv1.QueryState_QUERY_STATE_RUNNING)
	put("q2", "bot", time.Second, quiltv1.QueryState_QUERY_STATE_DONE)
	put("q3", "ops", 2*time.Second, quiltv1.QueryState_QUERY_STATE_DONE)
	put("q1", "ops", 0, quiltv1.QueryState_QUERY_STATE_FAILED) // update
	r, err := s.GetQuery(ctx(t), "q1")
	if err != nil || r.GetState() != quiltv1.QueryState_QUERY_STATE_FAILED || r.GetVars()["user"] != "alice" || r.GetRequest().GetLimit() != 5 {
		t.Errorf("GetQuery(q1) = %v, %v", r, err)
	}
	if _, err := s.GetQuery(ctx(t), "zz"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetQuery(zz) = %v, want ErrNotFound", err)
	}
	list := func(limit int, by string) []string {
		rs, err := s.ListQueries(ctx(t), limit, by)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			out = append(out, r.GetId())
		}
		return out
	}
	equal(t, "all", list(0, ""), []string{"q3", "q2", "q1"})
	equal(t, "limit", list(2, ""), []string{"q3", "q2"})
	equal(t, "by ops", list(10, "ops"), []string{"q3", "q1"})
	equal(t, "by nobody", list(10, "nobody"), nil)
}

func testChannels(t *testing.T, s store.Store) {
	put := func(src, server string, info *quiltv1.ChannelInfo) {
		t.Helper()
		if err := s.PutChannelInfo(ctx(t), src, server, info); err != nil {
			t.Fatal(err)
		}
	}
	put("mx", "hs1", &quiltv1.ChannelInfo{Name: "!b:hs1", DisplayName: "B"})
	put("mx", "hs1", &quiltv1.ChannelInfo{Name: "!a:hs1", DisplayName: "A", Topic: "t"})
	put("mx", "hs2", &quiltv1.ChannelInfo{Name: "!c:hs2", Attrs: map[string]string{"k": "v"}})
	put("mx", "hs1", &quiltv1.ChannelInfo{Name: "!a:hs1", DisplayName: "A2", Topic: "t2", MemberCount: 3})
	put("irc", "libera", &quiltv1.ChannelInfo{Name: "#ops"})
	rows, err := s.ChannelInfos(ctx(t), "mx", "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("%s/%s/%s/%s/%d/%s", r.GetSource(), r.GetServer(), r.GetInfo().GetName(), r.GetInfo().GetDisplayName(), r.GetInfo().GetMemberCount(), r.GetInfo().GetAttrs()["k"]))
	}
	equal(t, "channels of mx", got, []string{"mx/hs1/!a:hs1/A2/3/", "mx/hs1/!b:hs1/B/0/", "mx/hs2/!c:hs2//0/v"})
	rows, _ = s.ChannelInfos(ctx(t), "mx", "hs2")
	if len(rows) != 1 || rows[0].GetInfo().GetName() != "!c:hs2" {
		t.Errorf("channels of mx/hs2: %v", rows)
	}
}

func testCleanup(t *testing.T, s store.Store) {
	u := &quiltv1.User{Transient: "old", Display: "Old Timer"}
	var evs []*quiltv1.Event
	for i := 0; i < 30; i++ {
		evs = append(evs, ev(fmt.Sprint("c", i), time.Duration(i)*time.Hour, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#c", fmt.Sprint("findme number ", i), u))
	}
	insert(t, s, "src", evs...)
	cut := T0.Add(10 * time.Hour)
	// Events only: the 10 older events go, processed ids stay.
	r, err := s.Cleanup(ctx(t), cut, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Events != 10 || r.Processed != 0 {
		t.Errorf("Cleanup(events) = %+v, want 10 events, 0 processed", r)
	}
	left := all(t, s, nil, true)
	if len(left) != 20 || left[0].GetId() != "c10" {
		t.Fatalf("after clean-up: %v", ids(left))
	}
	// Every index forgets the removed events.
	for _, f := range []*quiltv1.EventFilter{{User: "old"}, {User: "old*"}, {Text: "findme"}, {Channel: "#c"}, {Sources: []string{"src"}}} {
		if n, err := s.CountEvents(ctx(t), f); err != nil || n != 20 {
			t.Errorf("CountEvents(%v) after clean-up = %d, %v; want 20", f, n, err)
		}
	}
	if rows, _ := s.LastSeen(ctx(t), store.LastSeenQuery{User: "old timer"}); len(rows) != 1 || rows[0].GetLastEvent().GetId() != "c29" {
		t.Errorf("LastSeen after clean-up: %v", rows)
	}
	// Replay of a removed event: its id is still processed, so it stays out.
	if r := insert(t, s, "src", evs[0]); r.Stored != 0 {
		t.Errorf("replay of a cleaned-up event stored %d before processed clean-up, want 0", r.Stored)
	}
	if n, _ := s.CountEvents(ctx(t), nil); n != 20 {
		t.Errorf("replay of a cleaned-up event reported duplicate but %d events are stored, want 20", n)
	}
	// Processed ids older than now+1h: all of them.
	r, err = s.Cleanup(ctx(t), time.Time{}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if r.Processed != 30 || r.Events != 0 {
		t.Errorf("Cleanup(processed) = %+v, want 30 processed, 0 events", r)
	}
	// Now a replay is stored again (seed 002: the window of de-duplication
	// is the processed retention).
	if r := insert(t, s, "src", evs[0]); r.Stored != 1 {
		t.Errorf("replay after processed clean-up stored %d, want 1", r.Stored)
	}
	// Processed ids newer than the cut stay: nothing more to remove.
	r, err = s.Cleanup(ctx(t), T0, time.Now().Add(-time.Hour))
	if err != nil || r.Processed != 0 || r.Events != 0 {
		t.Errorf("Cleanup with nothing old = %+v, %v", r, err)
	}
	// Remove everything.
	r, err = s.Cleanup(ctx(t), T0.Add(1000*time.Hour), time.Now().Add(time.Hour))
	if err != nil || r.Events != 21 || r.Processed != 1 {
		t.Errorf("Cleanup(all) = %+v, %v; want 21 events, 1 processed", r, err)
	}
	if n, _ := s.CountEvents(ctx(t), &quiltv1.EventFilter{Text: "findme"}); n != 0 {
		t.Errorf("text index still finds %d removed events", n)
	}
}

func testRestart(t *testing.T, open func(t *testing.T) store.Store) {
	s := open(t)
	order := loadFixture(t, s)
	if _, err := s.InsertEvents(ctx(t), "mx", nil, []*quiltv1.Cursor{{Server: "hs", Name: "since", Value: "s9"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDesiredServer(ctx(t), "irc", &quiltv1.DesiredServer{Server: "libera", Enabled: false}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSource(ctx(t), store.SourceRecord{Name: "irc", Protocol: "irc", FirstAttached: T0}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutQuery(ctx(t), &quiltv1.QueryRecord{Id: "q", Started: timestamppb.New(T0)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutChannelInfo(ctx(t), "mx", "hs", &quiltv1.ChannelInfo{Name: "!r"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = open(t)
	equal(t, "events after restart", ids(all(t, s, nil, false)), expect(order, nil, false))
	equal(t, "text search after restart", ids(all(t, s, &quiltv1.EventFilter{Text: "outage"}, false)), expect(order, &quiltv1.EventFilter{Text: "outage"}, false))
	// De-duplication survives the restart, and new events continue the
	// insertion order.
	r := insert(t, s, "irc", order[0], ev("new", 9*time.Minute, quiltv1.EventKind_EVENT_KIND_MESSAGE, "#ops", "", &quiltv1.User{Transient: "bob"}))
	if r.Stored != 1 || len(r.Duplicates) != 1 {
		t.Errorf("insert after restart: %+v, want 1 stored 1 duplicate", r)
	}
	got := all(t, s, &quiltv1.EventFilter{Since: timestamppb.New(T0.Add(9 * time.Minute))}, true)
	equal(t, "ties after restart", ids(got), []string{"irc/11", "mx/12", "irc/new"})
	if c, _ := s.Cursors(ctx(t), "mx"); len(c) != 1 || c[0].GetValue() != "s9" {
		t.Errorf("cursors after restart: %v", c)
	}
	if d, _ := s.DesiredServers(ctx(t), "irc"); len(d) != 1 || d[0].GetEnabled() {
		t.Errorf("desired after restart: %v", d)
	}
	if r, err := s.GetSource(ctx(t), "irc"); err != nil || !r.FirstAttached.Equal(T0) {
		t.Errorf("source after restart: %+v, %v", r, err)
	}
	if _, err := s.GetQuery(ctx(t), "q"); err != nil {
		t.Errorf("query after restart: %v", err)
	}
	if c, _ := s.ChannelInfos(ctx(t), "mx", ""); len(c) != 1 {
		t.Errorf("channels after restart: %v", c)
	}
}
