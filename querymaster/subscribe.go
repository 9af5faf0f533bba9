package querymaster

import (
	"context"
	"log/slog"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// hub fans stored events out to subscribers. publish never blocks: each
// subscriber has a bounded queue, and one that is full is cut off.
type hub struct {
	size int
	log  *slog.Logger
	mu   sync.RWMutex
	subs map[*subscriber]struct{}
}

func newHub(size int, log *slog.Logger) *hub {
	return &hub{size: size, log: log, subs: map[*subscriber]struct{}{}}
}

type subscriber struct {
	match *eventMatcher
	size  int
	ch    chan *quiltv1.Event
	cut   chan struct{} // closed when the hub cut the subscriber off
	// mu guards the fields below and serialises delivery to ch, so the
	// replay seam sees a consistent queue.
	mu        sync.Mutex
	replaying bool
	pending   []*quiltv1.Event // live events held back during replay
	behind    int              // events queued when cut off
	dead      bool
}

func (h *hub) add(m *eventMatcher, replaying bool) *subscriber {
	s := &subscriber{match: m, size: h.size, ch: make(chan *quiltv1.Event, h.size), cut: make(chan struct{}), replaying: replaying}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s
}

func (h *hub) remove(s *subscriber) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

func (h *hub) count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.subs)
}

func (h *hub) publish(events []*quiltv1.Event) {
	if len(events) == 0 {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs {
		s.offer(events)
	}
}

// offer queues the matching events or cuts the subscriber off; it never
// waits for the subscriber.
func (s *subscriber) offer(events []*quiltv1.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return
	}
	for _, e := range events {
		if !s.match.match(e) {
			continue
		}
		if s.replaying {
			if len(s.pending) >= s.size {
				s.kill(len(s.pending) + 1)
				return
			}
			s.pending = append(s.pending, e)
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.kill(len(s.ch) + 1)
			return
		}
	}
}

func (s *subscriber) kill(behind int) {
	s.dead = true
	s.behind = behind
	s.pending = nil
	close(s.cut)
}

// endReplay releases the live events held back during replay, skipping
// those the replay already sent, and switches to live delivery.
func (s *subscriber) endReplay(sent map[eventKey]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaying = false
	if s.dead {
		return
	}
	for _, e := range s.pending {
		if sent[eventKey{e.Source, e.Id}] {
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.kill(len(s.ch) + 1)
			return
		}
	}
	s.pending = nil
}

type eventKey struct{ source, id string }

// Subscribe streams events as they are stored. With replay_since it first
// pages through the store (oldest first), then goes live; live events that
// arrive during the replay are held back and released after it, minus the
// ones the replay already sent, so the seam has neither gap nor duplicate.
// The ids replayed are kept in memory until the seam, so a replay is
// bounded by memory: ask Query for deep history.
func (m *Master) Subscribe(req *quiltv1.SubscribeRequest, stream quiltv1.QueryMaster_SubscribeServer) error {
	epoch, err := m.leaderEpoch(stream.Context())
	if err != nil {
		return err
	}
	match, err := compileFilter(req.Filter)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	stop := context.AfterFunc(epoch, func() { cancel(context.Cause(epoch)) })
	defer stop()

	replay := req.ReplaySince != nil
	sub := m.hub.add(match, replay)
	defer m.hub.remove(sub)
	log := m.log.With("subscriber", req.RequestedBy)
	log.Debug("subscribed", "replay", replay)

	if replay {
		sent, err := m.replay(ctx, req, match, stream)
		if err != nil {
			return err
		}
		sub.endReplay(sent)
	}
	for {
		select {
		case e := <-sub.ch:
			if err := stream.Send(e); err != nil {
				return err
			}
		case <-sub.cut:
			// Deliver nothing more: a gap must be visible as an error.
			sub.mu.Lock()
			behind := sub.behind
			sub.mu.Unlock()
			log.Warn("subscriber cut off", "behind", behind)
			return status.Errorf(codes.ResourceExhausted,
				"subscriber too slow: %d events behind (buffer %d, [query_master] subscriber_buffer); resubscribe with replay_since to catch up",
				behind, sub.size)
		case <-ctx.Done():
			return m.leaderStatus(ctx)
		}
	}
}

func (m *Master) replay(ctx context.Context, req *quiltv1.SubscribeRequest, match *eventMatcher, stream quiltv1.QueryMaster_SubscribeServer) (map[eventKey]bool, error) {
	f := &quiltv1.EventFilter{}
	if req.Filter != nil {
		f = cloneFilter(req.Filter)
	}
	if f.Since == nil || f.Since.AsTime().Before(req.ReplaySince.AsTime()) {
		f.Since = req.ReplaySince
	}
	sent := map[eventKey]bool{}
	q := store.EventQuery{Filter: f, Limit: store.MaxLimit, OldestFirst: true}
	for {
		page, err := m.opts.Store.QueryEvents(ctx, q)
		if err != nil {
			if ctx.Err() != nil {
				return nil, m.leaderStatus(ctx)
			}
			return nil, status.Errorf(codes.Unavailable, "store: replaying events: %v", err)
		}
		for _, e := range page.Events {
			k := eventKey{e.Source, e.Id}
			// The store's own filtering (full text) may differ from
			// ours at the edges; the live path decides what a
			// subscriber sees, so the replay uses it too.
			if sent[k] || !match.match(e) {
				continue
			}
			sent[k] = true
			if err := stream.Send(e); err != nil {
				return nil, err
			}
		}
		if page.NextPageToken == "" {
			return sent, nil
		}
		q.PageToken = page.NextPageToken
	}
}

func cloneFilter(f *quiltv1.EventFilter) *quiltv1.EventFilter {
	return proto.Clone(f).(*quiltv1.EventFilter)
}
