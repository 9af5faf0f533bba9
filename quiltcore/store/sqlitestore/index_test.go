package sqlitestore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

func ixEvents(prefix string, n int, channel string, at time.Time) []*quiltv1.Event {
	evs := make([]*quiltv1.Event, n)
	for i := range evs {
		evs[i] = &quiltv1.Event{Id: fmt.Sprintf("%s-%d", prefix, i), Source: "irc", Server: "net", Protocol: "irc",
			Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE, Time: timestamppb.New(at.Add(time.Duration(i) * time.Second)),
			User:    &quiltv1.User{Transient: fmt.Sprintf("nick%d", i%3), Group: fmt.Sprintf("nick%d", i%3)},
			Channel: channel, Text: fmt.Sprintf("%s says hello number %d", prefix, i)}
	}
	return evs
}

func openT(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustInsert(t *testing.T, s *Store, evs []*quiltv1.Event) {
	t.Helper()
	r, err := s.InsertEvents(context.Background(), "irc", evs, nil)
	if err != nil || r.Stored != len(evs) {
		t.Fatalf("insert: %+v, %v", r, err)
	}
}

// ids returns the event ids a filter finds, newest first.
func ids(t *testing.T, s *Store, f *quiltv1.EventFilter) []string {
	t.Helper()
	p, err := s.QueryEvents(context.Background(), store.EventQuery{Filter: f, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range p.Events {
		out = append(out, e.GetId())
	}
	return out
}

func sameIDs(t *testing.T, what string, got, want []string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: got %v, want %v", what, got, want)
	}
}

// The index file is derived data: deleted, or taken from another store,
// it is rebuilt and every query answers as before.
func TestIndexFileRebuilt(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := openT(t, dir)
	mustInsert(t, s, ixEvents("a", 30, "#a", at))
	mustInsert(t, s, ixEvents("b", 30, "#b", at.Add(time.Hour)))
	filters := []*quiltv1.EventFilter{{Channel: "#a"}, {User: "nick1"}, {Text: "b says"}, {Channel: "#b", User: "nick2", Text: "number 2"}}
	var want [][]string
	for _, f := range filters {
		want = append(want, ids(t, s, f))
	}
	if len(want[0]) != 30 || len(want[1]) != 20 || len(want[2]) != 30 || len(want[3]) == 0 {
		t.Fatalf("unexpected baseline %v", want)
	}
	s.Close()

	other := t.TempDir()
	o := openT(t, other)
	mustInsert(t, o, ixEvents("x", 50, "#a", at))
	o.Close()

	for _, step := range []struct {
		name string
		do   func() error
	}{
		{"deleted", func() error { return os.Remove(filepath.Join(dir, IndexFileName)) }},
		{"another store's", func() error {
			b, err := os.ReadFile(filepath.Join(other, IndexFileName))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, IndexFileName), b, 0o600)
		}},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		s := openT(t, dir)
		for i, f := range filters {
			sameIDs(t, fmt.Sprintf("index file %s, filter %v", step.name, f), ids(t, s, f), want[i])
		}
		s.Close()
	}
}

// Cleanup never lets a new event take a removed event's id: an index entry
// left behind must not point at it.
func TestIdsNotReusedAfterCleanup(t *testing.T) {
	dir := t.TempDir()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := openT(t, dir)
	mustInsert(t, s, ixEvents("old", 10, "#old", at))
	if _, err := s.Cleanup(context.Background(), at.Add(24*time.Hour), time.Time{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, dir)
	defer s.Close()
	mustInsert(t, s, ixEvents("new", 1, "#new", at.Add(48*time.Hour)))
	var id int64
	if err := s.rdb.QueryRow("SELECT id FROM events").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if id <= 10 {
		t.Fatalf("new event got id %d, reusing a removed one (1..10)", id)
	}
	sameIDs(t, "removed channel", ids(t, s, &quiltv1.EventFilter{Channel: "#old"}), nil)
	sameIDs(t, "new channel", ids(t, s, &quiltv1.EventFilter{Channel: "#new"}), []string{"new-0"})
}

// The writer holds a batch back while the indexer is too far behind, and
// a query by channel waits for the index to hold what was acknowledged.
func TestIndexBackPressure(t *testing.T) {
	s := openT(t, t.TempDir())
	defer s.Close()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old := maxIndexLag
	maxIndexLag = 5
	defer func() { maxIndexLag = old }()
	s.ixMu.Lock() // the indexer stalls
	mustInsert(t, s, ixEvents("a", 10, "#a", at))
	done := make(chan error, 1)
	go func() {
		_, err := s.InsertEvents(context.Background(), "irc", ixEvents("b", 10, "#a", at.Add(time.Hour)), nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("second batch went in with the index 10 events behind (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := s.QueryEvents(ctx, store.EventQuery{Filter: &quiltv1.EventFilter{Channel: "#a"}})
	cancel()
	if err == nil {
		t.Fatal("a channel query answered while the index missed acknowledged events")
	}
	s.ixMu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := ids(t, s, &quiltv1.EventFilter{Channel: "#a"}); len(got) != 20 {
		t.Fatalf("channel query after the indexer caught up: %d events, want 20", len(got))
	}
}

// Cleanup of processed ids walks the table in chunks; every old id goes,
// every recent one stays, in every chunk.
func TestCleanupProcessedInChunks(t *testing.T) {
	old := processedScanChunk
	processedScanChunk = 7
	defer func() { processedScanChunk = old }()
	s := openT(t, t.TempDir())
	defer s.Close()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ctx := context.Background()
	insert := func(src, prefix string, n int) {
		evs := ixEvents(prefix, n, "#c", at)
		for _, e := range evs {
			e.Source = src
		}
		if _, err := s.InsertEvents(ctx, src, evs, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, src := range []string{"a", "b"} {
		insert(src, "old-"+src, 20)
	}
	cut := time.Now()
	time.Sleep(10 * time.Millisecond)
	for _, src := range []string{"a", "b"} {
		insert(src, "new-"+src, 15)
	}
	r, err := s.Cleanup(ctx, time.Time{}, cut)
	if err != nil {
		t.Fatal(err)
	}
	if r.Processed != 40 {
		t.Errorf("removed %d processed ids, want 40", r.Processed)
	}
	var left, leftNew int
	if err := s.rdb.QueryRow("SELECT count(*), count(*) FILTER (WHERE id LIKE 'new-%') FROM processed").Scan(&left, &leftNew); err != nil {
		t.Fatal(err)
	}
	if left != 30 || leftNew != 30 {
		t.Errorf("%d processed ids left (%d new), want the 30 new ones", left, leftNew)
	}
}

// New files get pageSize; the writer's connection would otherwise fix
// SQLite's default when it turns WAL on.
func TestNewFilesPageSize(t *testing.T) {
	s := openT(t, t.TempDir())
	defer s.Close()
	for _, schema := range []string{"main", "ix"} {
		var size int
		if err := s.rdb.QueryRow("PRAGMA " + schema + ".page_size").Scan(&size); err != nil {
			t.Fatal(err)
		}
		if size != pageSize {
			t.Errorf("%s: page size %d, want %d", schema, size, pageSize)
		}
	}
}
