package query_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
)

// slowHistory is a store whose history writes take a while, as a busy
// SQLite writer's do, and which remembers the state of every write.
type slowHistory struct {
	*querytest.MemStore
	delay time.Duration

	mu     sync.Mutex
	states map[string][]quiltv1.QueryState
}

func (s *slowHistory) PutQuery(ctx context.Context, r *quiltv1.QueryRecord) error {
	time.Sleep(s.delay)
	s.mu.Lock()
	s.states[r.Id] = append(s.states[r.Id], r.State)
	s.mu.Unlock()
	return s.MemStore.PutQuery(ctx, r)
}

func (s *slowHistory) written(id string) []quiltv1.QueryState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]quiltv1.QueryState(nil), s.states[id]...)
}

// A query's answer does not wait for its history write, yet history read
// from the same master right after the answer shows the query done; a
// fast query is written once.
func TestHistoryOffTheAnswerPath(t *testing.T) {
	st := &slowHistory{MemStore: querytest.NewMemStore(), delay: 300 * time.Millisecond, states: map[string][]quiltv1.QueryState{}}
	c := querytest.Start(t, querytest.Options{Store: st, Sources: []querytest.Source{{Name: "alpha"}}})
	qm := client(t, c)

	start := time.Now()
	a := mustRun(t, qm, &quiltv1.QueryRequest{Kind: "presence", Filter: &quiltv1.EventFilter{User: "user1"}})
	if el := time.Since(start); el >= st.delay {
		t.Errorf("presence took %s: the answer waited for the %s history write", el, st.delay)
	}
	if len(a.rows) != 1 {
		t.Errorf("rows = %d, want 1", len(a.rows))
	}
	id := a.header.QueryId
	rec, err := qm.GetQuery(context.Background(), &quiltv1.GetQueryRequest{Id: id})
	if err != nil {
		t.Fatalf("GetQuery right after the answer: %v", err)
	}
	if rec.State != quiltv1.QueryState_QUERY_STATE_DONE || rec.Rows != 1 {
		t.Errorf("record = %v, want done with 1 row", rec)
	}
	if got := st.written(id); len(got) != 1 || got[0] != quiltv1.QueryState_QUERY_STATE_DONE {
		t.Errorf("history writes = %v, want one DONE", got)
	}
	if err := c.Query.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// A query that runs longer than a moment is in history as running while
// it runs, and done after; the done record is never overwritten by the
// running one.
func TestHistoryRunningQuery(t *testing.T) {
	st := &slowHistory{MemStore: querytest.NewMemStore(), states: map[string][]quiltv1.QueryState{}}
	c := querytest.Start(t, querytest.Options{Store: st, Sources: []querytest.Source{{Name: "alpha"}}})
	qm := client(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	attachMute(t, c.Addr)

	qs, err := qm.Query(ctx, &quiltv1.QueryRequest{Kind: "servers", SourceTimeout: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	first, err := qs.Recv()
	if err != nil || first.GetHeader() == nil {
		t.Fatalf("first result %v, %v; want the header", first, err)
	}
	id := first.GetHeader().QueryId
	deadline := time.Now().Add(800 * time.Millisecond)
	for {
		rec, err := qm.GetQuery(ctx, &quiltv1.GetQueryRequest{Id: id})
		if err == nil && rec.State == quiltv1.QueryState_QUERY_STATE_RUNNING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("query %s not in history as running while it waits for mute: %v %v", id, rec, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		if _, err := qs.Recv(); err != nil {
			break
		}
	}
	rec, err := qm.GetQuery(ctx, &quiltv1.GetQueryRequest{Id: id})
	if err != nil || rec.State != quiltv1.QueryState_QUERY_STATE_DONE || len(rec.Problems) != 1 {
		t.Errorf("record after the answer = %v, %v; want done with mute's timeout", rec, err)
	}
	if got := st.written(id); len(got) != 2 || got[0] != quiltv1.QueryState_QUERY_STATE_RUNNING || got[1] != quiltv1.QueryState_QUERY_STATE_DONE {
		t.Errorf("history writes = %v, want RUNNING then DONE", got)
	}
}
