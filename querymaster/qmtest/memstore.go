// Package qmtest has stores and helpers for testing and benchmarking the
// query master without a database: MemStore (an in-memory store.Store with
// the de-duplication contract), Discard (stores nothing, for measuring the
// pipeline alone) and Gate (holds InsertEvents until released, to prove
// acks wait for the store).
package qmtest

import (
	"context"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// MemStore keeps everything in maps. Queries are deliberately simple: it
// filters by source, server, channel, kinds and time only, oldest first
// paging by position; enough for replay and counting in tests.
type MemStore struct {
	mu        sync.Mutex
	events    []*quiltv1.Event
	seen      map[[2]string]bool
	cursors   map[string]map[[2]string]*quiltv1.Cursor
	desired   map[string]map[string]*quiltv1.DesiredServer
	sources   map[string]store.SourceRecord
	queries   map[string]*quiltv1.QueryRecord
	inserts   int
	insertErr error
}

var _ store.Store = (*MemStore)(nil)

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{
		seen:    map[[2]string]bool{},
		cursors: map[string]map[[2]string]*quiltv1.Cursor{},
		desired: map[string]map[string]*quiltv1.DesiredServer{},
		sources: map[string]store.SourceRecord{},
		queries: map[string]*quiltv1.QueryRecord{},
	}
}

// FailInserts makes InsertEvents fail with err (nil: succeed again).
func (s *MemStore) FailInserts(err error) {
	s.mu.Lock()
	s.insertErr = err
	s.mu.Unlock()
}

// Events returns a copy of every stored event in insertion order.
func (s *MemStore) Events() []*quiltv1.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*quiltv1.Event(nil), s.events...)
}

// Inserts counts InsertEvents calls that succeeded.
func (s *MemStore) Inserts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inserts
}

func (s *MemStore) InsertEvents(ctx context.Context, source string, events []*quiltv1.Event, cursors []*quiltv1.Cursor) (store.InsertResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.insertErr != nil {
		return store.InsertResult{}, s.insertErr
	}
	if err := ctx.Err(); err != nil {
		return store.InsertResult{}, err
	}
	var r store.InsertResult
	for _, e := range events {
		k := [2]string{source, e.Id}
		if s.seen[k] {
			r.Duplicates = append(r.Duplicates, e.Id)
			continue
		}
		s.seen[k] = true
		s.events = append(s.events, proto.Clone(e).(*quiltv1.Event))
		r.Stored++
	}
	if len(cursors) > 0 && s.cursors[source] == nil {
		s.cursors[source] = map[[2]string]*quiltv1.Cursor{}
	}
	for _, c := range cursors {
		s.cursors[source][[2]string{c.Server, c.Name}] = proto.Clone(c).(*quiltv1.Cursor)
	}
	s.inserts++
	return r, nil
}

func matches(f *quiltv1.EventFilter, e *quiltv1.Event) bool {
	if f == nil {
		return true
	}
	if len(f.Sources) > 0 {
		ok := false
		for _, x := range f.Sources {
			ok = ok || x == e.Source
		}
		if !ok {
			return false
		}
	}
	if f.Server != "" && f.Server != e.Server {
		return false
	}
	if f.Channel != "" && f.Channel != e.Channel {
		return false
	}
	if len(f.Kinds) > 0 {
		ok := false
		for _, k := range f.Kinds {
			ok = ok || k == e.Kind
		}
		if !ok {
			return false
		}
	}
	if f.Since != nil && e.Time != nil && e.Time.AsTime().Before(f.Since.AsTime()) {
		return false
	}
	if f.Until != nil && e.Time != nil && !e.Time.AsTime().Before(f.Until.AsTime()) {
		return false
	}
	return true
}

func (s *MemStore) QueryEvents(ctx context.Context, q store.EventQuery) (store.EventPage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []*quiltv1.Event
	for _, e := range s.events {
		if matches(q.Filter, e) {
			all = append(all, e)
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].GetTime().AsTime().Before(all[j].GetTime().AsTime()) })
	if !q.OldestFirst {
		for i, j := 0, len(all)-1; i < j; i, j = i+1, j-1 {
			all[i], all[j] = all[j], all[i]
		}
	}
	start := 0
	if q.PageToken != "" {
		for _, c := range q.PageToken {
			start = start*10 + int(c-'0')
		}
	}
	limit := q.Limit
	if limit <= 0 {
		limit = store.DefaultLimit
	}
	var p store.EventPage
	if start < len(all) {
		end := min(start+limit, len(all))
		p.Events = all[start:end]
		if end < len(all) {
			p.NextPageToken = itoa(end)
		}
	}
	return p, nil
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func (s *MemStore) LastSeen(ctx context.Context, q store.LastSeenQuery) ([]*quiltv1.LastSeenRow, error) {
	return nil, nil
}

func (s *MemStore) CountEvents(ctx context.Context, f *quiltv1.EventFilter) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, e := range s.events {
		if matches(f, e) {
			n++
		}
	}
	return n, nil
}

func (s *MemStore) Cursors(ctx context.Context, source string) ([]*quiltv1.Cursor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*quiltv1.Cursor
	for _, c := range s.cursors[source] {
		out = append(out, proto.Clone(c).(*quiltv1.Cursor))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Server+"\x00"+out[i].Name < out[j].Server+"\x00"+out[j].Name })
	return out, nil
}

func (s *MemStore) SetDesiredServer(ctx context.Context, source string, d *quiltv1.DesiredServer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.desired[source] == nil {
		s.desired[source] = map[string]*quiltv1.DesiredServer{}
	}
	s.desired[source][d.Server] = proto.Clone(d).(*quiltv1.DesiredServer)
	return nil
}

func (s *MemStore) DesiredServers(ctx context.Context, source string) ([]*quiltv1.DesiredServer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*quiltv1.DesiredServer
	for _, d := range s.desired[source] {
		out = append(out, proto.Clone(d).(*quiltv1.DesiredServer))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Server < out[j].Server })
	return out, nil
}

func (s *MemStore) PutSource(ctx context.Context, r store.SourceRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.sources[r.Name]; ok && !old.FirstAttached.IsZero() {
		r.FirstAttached = old.FirstAttached
	}
	s.sources[r.Name] = r
	return nil
}

func (s *MemStore) GetSource(ctx context.Context, name string) (store.SourceRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.sources[name]
	if !ok {
		return store.SourceRecord{}, store.ErrNotFound
	}
	return r, nil
}

func (s *MemStore) Sources(ctx context.Context) ([]store.SourceRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.SourceRecord
	for _, r := range s.sources {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *MemStore) PutQuery(ctx context.Context, r *quiltv1.QueryRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries[r.Id] = proto.Clone(r).(*quiltv1.QueryRecord)
	return nil
}

func (s *MemStore) GetQuery(ctx context.Context, id string) (*quiltv1.QueryRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.queries[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return r, nil
}

func (s *MemStore) ListQueries(ctx context.Context, limit int, requestedBy string) ([]*quiltv1.QueryRecord, error) {
	return nil, nil
}

func (s *MemStore) PutChannelInfo(ctx context.Context, source, server string, info *quiltv1.ChannelInfo) error {
	return nil
}

func (s *MemStore) ChannelInfos(ctx context.Context, source, server string) ([]*quiltv1.ChannelRow, error) {
	return nil, nil
}

func (s *MemStore) Cleanup(ctx context.Context, eventsBefore, processedBefore time.Time) (store.CleanupResult, error) {
	return store.CleanupResult{}, nil
}

func (s *MemStore) Kind() string { return "memory" }
func (s *MemStore) Close() error { return nil }

// Discard is a MemStore whose InsertEvents keeps nothing and reports every
// event stored: it measures the pipeline without a database.
type Discard struct {
	*MemStore
	mu     sync.Mutex
	stored int64
}

// NewDiscard returns a discarding store.
func NewDiscard() *Discard { return &Discard{MemStore: NewMemStore()} }

func (d *Discard) InsertEvents(ctx context.Context, source string, events []*quiltv1.Event, cursors []*quiltv1.Cursor) (store.InsertResult, error) {
	d.mu.Lock()
	d.stored += int64(len(events))
	d.mu.Unlock()
	return store.InsertResult{Stored: len(events)}, nil
}

// Stored counts events InsertEvents accepted.
func (d *Discard) Stored() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stored
}

// Gate wraps a store so InsertEvents waits until Open (or its ctx ends);
// Entered receives once per call that reached the gate.
type Gate struct {
	store.Store
	open    chan struct{}
	once    sync.Once
	Entered chan struct{}
}

// NewGate returns a closed gate around s.
func NewGate(s store.Store) *Gate {
	return &Gate{Store: s, open: make(chan struct{}), Entered: make(chan struct{}, 1024)}
}

// Open lets every waiting and future InsertEvents through.
func (g *Gate) Open() { g.once.Do(func() { close(g.open) }) }

func (g *Gate) InsertEvents(ctx context.Context, source string, events []*quiltv1.Event, cursors []*quiltv1.Cursor) (store.InsertResult, error) {
	select {
	case g.Entered <- struct{}{}:
	default:
	}
	select {
	case <-g.open:
	case <-ctx.Done():
		return store.InsertResult{}, ctx.Err()
	}
	return g.Store.InsertEvents(ctx, source, events, cursors)
}
