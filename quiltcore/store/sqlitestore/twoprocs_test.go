package sqlitestore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestTwoStoresOneFile: two quilt-qmd on one data_dir (a leader and a
// standby on one machine) each open the file; whichever writes must not
// reuse the other's row ids or re-store its events. Found by the
// real-binary failover test: the standby, once leading, failed every
// insert with "UNIQUE constraint failed: events.id".
func TestTwoStoresOneFile(t *testing.T) {
	dir := t.TempDir()
	open := func() store.Store {
		s, err := sqlitestore.Open(dir, sqlitestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a, b := open(), open()
	ctx := context.Background()
	batch := func(from, n int) []*quiltv1.Event {
		evs := make([]*quiltv1.Event, n)
		for i := range evs {
			evs[i] = &quiltv1.Event{Id: fmt.Sprintf("s:%d", from+i), Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE,
				Time: timestamppb.New(time.Unix(1700000000, 0)), Server: "net", Channel: "#c",
				User: &quiltv1.User{Transient: "user1"}, Text: "hi"}
		}
		return evs
	}
	insert := func(s store.Store, from, n, wantFresh int) {
		t.Helper()
		res, err := s.InsertEvents(ctx, "src", batch(from, n), nil)
		if err != nil {
			t.Fatalf("insert %d..%d: %v", from, from+n-1, err)
		}
		if got := n - len(res.Duplicates); got != wantFresh {
			t.Fatalf("insert %d..%d: %d stored, want %d", from, from+n-1, got, wantFresh)
		}
	}
	insert(a, 1, 100, 100) // a writes first: b's cached next id is stale
	insert(b, 51, 100, 50) // overlaps a's: 50 duplicates
	insert(a, 151, 10, 10) // and back
	insert(b, 1, 160, 0)   // everything is a duplicate
	n, err := b.CountEvents(ctx, &quiltv1.EventFilter{Sources: []string{"src"}})
	if err != nil {
		t.Fatal(err)
	}
	if n != 160 {
		t.Fatalf("%d events stored, want 160", n)
	}
}
