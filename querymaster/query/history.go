package query

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// runningRecordAfter is how long a query runs before its "running" record
// is written. A query that answers sooner is recorded once, when done: a
// history write is a store transaction, and writing two per query put
// store commits (and the WAL checkpoints they trigger) on the path of
// every fast live query.
const runningRecordAfter = 100 * time.Millisecond

// historyPutTimeout bounds one history write.
const historyPutTimeout = 5 * time.Second

// recorder writes query history off the answer path: the client has its
// last row before the record is stored. ListQueries and GetQuery wait for
// records of finished queries still being written (flush), so a caller
// who ran a query and then asks this master for history sees it.
type recorder struct {
	s *Server

	mu sync.Mutex
	// writing: one entry per query whose final record is handed over and
	// not yet stored; the channel closes once it is.
	writing map[string]chan struct{}
	wg      sync.WaitGroup // every record goroutine
}

// entry is one query's history: begin it when the query has an id, end it
// exactly once with the final record.
type entry struct {
	rc    *recorder
	id    string
	final chan *quiltv1.QueryRecord // cap 1
}

// begin starts recording query id. running, a snapshot the caller no
// longer changes, is written if the query is still running after
// runningRecordAfter (nil: never, for a query refused at once); then the
// final record, always last.
func (rc *recorder) begin(id string, running *quiltv1.QueryRecord) *entry {
	e := &entry{rc: rc, id: id, final: make(chan *quiltv1.QueryRecord, 1)}
	rc.wg.Add(1)
	go func() {
		defer rc.wg.Done()
		var final *quiltv1.QueryRecord
		if running == nil {
			final = <-e.final
		} else {
			t := time.NewTimer(runningRecordAfter)
			select {
			case final = <-e.final:
				t.Stop()
			case <-t.C:
				rc.put(running)
				final = <-e.final
			}
		}
		rc.put(final)
		rc.mu.Lock()
		if ch := rc.writing[e.id]; ch != nil {
			close(ch)
			delete(rc.writing, e.id)
		}
		rc.mu.Unlock()
	}()
	return e
}

// end hands over the final record (the recorder owns it from now on).
func (e *entry) end(final *quiltv1.QueryRecord) {
	e.rc.mu.Lock()
	if e.rc.writing == nil {
		e.rc.writing = map[string]chan struct{}{}
	}
	e.rc.writing[e.id] = make(chan struct{})
	e.rc.mu.Unlock()
	e.final <- final
}

// put stores rec; history is best effort, a query still answers when the
// store cannot record it.
func (rc *recorder) put(rec *quiltv1.QueryRecord) {
	ctx, cancel := context.WithTimeout(context.Background(), historyPutTimeout)
	defer cancel()
	if err := rc.s.opts.Store.PutQuery(ctx, rec); err != nil {
		rc.s.log.Warn("recording query history", "query_id", rec.GetId(), "state", rec.GetState().String(), "err", err)
	}
}

// flush waits until every query that finished before the call has its
// final record stored, or ctx ends.
func (rc *recorder) flush(ctx context.Context) error {
	rc.mu.Lock()
	chs := make([]chan struct{}, 0, len(rc.writing))
	for _, ch := range rc.writing {
		chs = append(chs, ch)
	}
	rc.mu.Unlock()
	for _, ch := range chs {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Close waits until the history of every query is stored, queries still
// running included, or ctx ends. Call it after the gRPC server stopped and
// before closing the store, so the last queries' records are not lost.
func (s *Server) Close(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.rec.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func cloneRecord(r *quiltv1.QueryRecord) *quiltv1.QueryRecord {
	return proto.Clone(r).(*quiltv1.QueryRecord)
}
