package querytest

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/qmtest"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/quiltcore/store"
)

// MemStore is qmtest.MemStore with the query-history and last-seen parts
// the query layer needs, kept simple (linear scans): for tests only. Real
// stores are held to the same behaviour by store/storetest.
type MemStore struct {
	*qmtest.MemStore
	mu      sync.Mutex
	queries []*quiltv1.QueryRecord
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{MemStore: qmtest.NewMemStore()} }

// PutQuery upserts by id, keeping insertion order for ListQueries.
func (s *MemStore) PutQuery(ctx context.Context, r *quiltv1.QueryRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r = proto.Clone(r).(*quiltv1.QueryRecord)
	for i, q := range s.queries {
		if q.Id == r.Id {
			s.queries[i] = r
			return nil
		}
	}
	s.queries = append(s.queries, r)
	return nil
}

// GetQuery returns store.ErrNotFound for unknown ids.
func (s *MemStore) GetQuery(ctx context.Context, id string) (*quiltv1.QueryRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.queries {
		if q.Id == id {
			return proto.Clone(q).(*quiltv1.QueryRecord), nil
		}
	}
	return nil, store.ErrNotFound
}

// ListQueries is newest first.
func (s *MemStore) ListQueries(ctx context.Context, limit int, requestedBy string) ([]*quiltv1.QueryRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*quiltv1.QueryRecord
	for i := len(s.queries) - 1; i >= 0 && (limit <= 0 || len(out) < limit); i-- {
		if requestedBy == "" || s.queries[i].RequestedBy == requestedBy {
			out = append(out, proto.Clone(s.queries[i]).(*quiltv1.QueryRecord))
		}
	}
	return out, nil
}

// LastSeen groups by group name, else transient name.
func (s *MemStore) LastSeen(ctx context.Context, q store.LastSeenQuery) ([]*quiltv1.LastSeenRow, error) {
	glob := model.CompileGlob(q.User)
	rows := map[string]*quiltv1.LastSeenRow{}
	var order []string
	for _, e := range s.Events() {
		if e.User == nil || (q.User != "" && !glob.MatchProto(e.User)) {
			continue
		}
		if len(q.Sources) > 0 && !contains(q.Sources, e.Source) {
			continue
		}
		key := e.User.Group
		if key == "" {
			key = e.User.Transient
		}
		r := rows[key]
		if r == nil {
			r = &quiltv1.LastSeenRow{}
			rows[key] = r
			order = append(order, key)
		}
		if r.LastEvent == nil || !e.Time.AsTime().Before(r.LastEvent.Time.AsTime()) {
			r.User, r.Source, r.Server, r.Channel, r.Time, r.Kind, r.LastEvent = e.User, e.Source, e.Server, e.Channel, e.Time, e.Kind, e
		}
		switch e.Kind {
		case quiltv1.EventKind_EVENT_KIND_MESSAGE, quiltv1.EventKind_EVENT_KIND_NOTICE, quiltv1.EventKind_EVENT_KIND_ACTION:
			if r.LastMessage == nil || !e.Time.AsTime().Before(r.LastMessage.Time.AsTime()) {
				r.LastMessage = e
			}
		}
	}
	out := make([]*quiltv1.LastSeenRow, 0, len(order))
	for _, k := range order {
		out = append(out, rows[k])
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.AsTime().After(out[j].Time.AsTime()) })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// QueryEvents adds the user, text and regex filters qmtest.MemStore leaves
// out, then pages (the page token is an offset).
func (s *MemStore) QueryEvents(ctx context.Context, q store.EventQuery) (store.EventPage, error) {
	f := proto.Clone(q.Filter).(*quiltv1.EventFilter)
	if f == nil {
		f = &quiltv1.EventFilter{}
	}
	user, text, re := f.User, strings.ToLower(f.Text), f.TextRegex
	f.User, f.Text, f.TextRegex = "", "", ""
	all, err := s.MemStore.QueryEvents(ctx, store.EventQuery{Filter: f, Limit: 1 << 30, OldestFirst: q.OldestFirst})
	if err != nil {
		return store.EventPage{}, err
	}
	var rx *regexp.Regexp
	if re != "" {
		if rx, err = regexp.Compile(re); err != nil {
			return store.EventPage{}, err
		}
	}
	glob := model.CompileGlob(user)
	var keep []*quiltv1.Event
	for _, e := range all.Events {
		if user != "" && (e.User == nil || !glob.MatchProto(e.User)) {
			continue
		}
		if text != "" && !strings.Contains(strings.ToLower(e.Text), text) {
			continue
		}
		if rx != nil && !rx.MatchString(e.Text) {
			continue
		}
		keep = append(keep, e)
	}
	start := 0
	if q.PageToken != "" {
		if start, err = strconv.Atoi(q.PageToken); err != nil {
			return store.EventPage{}, fmt.Errorf("bad page token %q", q.PageToken)
		}
	}
	limit := q.Limit
	if limit <= 0 {
		limit = store.DefaultLimit
	}
	var p store.EventPage
	if start < len(keep) {
		end := min(start+limit, len(keep))
		p.Events = keep[start:end]
		if end < len(keep) {
			p.NextPageToken = strconv.Itoa(end)
		}
	}
	return p, nil
}
