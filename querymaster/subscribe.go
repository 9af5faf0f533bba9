package querymaster

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// hub fans stored events out to subscribers. publish never blocks: each
// subscriber has a bounded queue. Events that do not fit are stored
// already, so the subscriber only notes their ids ("missed") and its
// stream sends them from the store once it emptied its queue (catchUp), in
// order, then goes live again: a burst costs a slow subscriber a detour
// through the store, not its stream. One that falls missFactor times its
// queue behind is cut off, which bounds the memory a stuck one holds.
type hub struct {
	size int
	log  *slog.Logger
	mu   sync.RWMutex
	subs map[*subscriber]struct{}
}

func newHub(size int, log *slog.Logger) *hub {
	return &hub{size: size, log: log, subs: map[*subscriber]struct{}{}}
}

// missFactor times the queue is how many missed events a subscriber may
// owe before it is cut off.
const missFactor = 64

type subscriber struct {
	match *eventMatcher
	size  int
	ch    chan *quiltv1.Event
	cut   chan struct{} // closed when the hub cut the subscriber off
	lag   chan struct{} // cap 1: pinged when the subscriber starts missing events
	// mu guards the fields below and serialises delivery to ch, so the
	// replay seam sees a consistent queue.
	mu        sync.Mutex
	replaying bool
	pending   []*quiltv1.Event // live events held back during replay
	// missed are the events that came after those queued (or pending) and
	// did not fit; while it is set every new event joins it, so order is
	// kept. missedSince is the oldest time among them.
	missed      map[eventKey]struct{}
	missedSince time.Time
	behind      int // events owed when cut off
	dead        bool
}

func (h *hub) add(m *eventMatcher, replaying bool) *subscriber {
	s := &subscriber{match: m, size: h.size, ch: make(chan *quiltv1.Event, h.size), cut: make(chan struct{}),
		lag: make(chan struct{}, 1), replaying: replaying}
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

// offer queues the matching events, or notes them missed; it never waits
// for the subscriber.
func (s *subscriber) offer(events []*quiltv1.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range events {
		if s.dead {
			return
		}
		if s.match.match(e) {
			s.deliverLocked(e)
		}
	}
}

func (s *subscriber) deliverLocked(e *quiltv1.Event) {
	switch {
	case s.missed != nil:
		s.missLocked(e)
	case s.replaying:
		if len(s.pending) < s.size {
			s.pending = append(s.pending, e)
		} else {
			s.missLocked(e)
		}
	default:
		select {
		case s.ch <- e:
		default:
			s.missLocked(e)
		}
	}
}

func (s *subscriber) missLocked(e *quiltv1.Event) {
	t := e.GetTime().AsTime()
	if s.missed == nil {
		s.missed = map[eventKey]struct{}{}
		s.missedSince = t
		select {
		case s.lag <- struct{}{}:
		default:
		}
	}
	if len(s.missed) >= missFactor*s.size {
		s.kill(len(s.ch) + len(s.pending) + len(s.missed) + 1)
		return
	}
	s.missed[eventKey{e.Source, e.Id}] = struct{}{}
	if t.Before(s.missedSince) {
		s.missedSince = t
	}
}

func (s *subscriber) kill(behind int) {
	s.dead = true
	s.behind = behind
	s.pending = nil
	s.missed = nil
	close(s.cut)
}

// endReplay releases the live events held back during replay, skipping
// those the replay already sent, and switches to live delivery. Events
// missed meanwhile come after the pending ones: they stay missed, minus
// those the replay sent, for the next catchUp.
func (s *subscriber) endReplay(sent map[eventKey]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replaying = false
	if s.dead {
		return
	}
	missed, since := s.missed, s.missedSince
	for k := range sent {
		delete(missed, k)
	}
	s.missed = nil
	for _, e := range s.pending {
		if s.dead {
			return
		}
		if !sent[eventKey{e.Source, e.Id}] {
			s.deliverLocked(e)
		}
	}
	s.pending = nil
	if len(missed) == 0 || s.dead {
		return
	}
	if s.missed == nil {
		s.missed, s.missedSince = missed, since
		select {
		case s.lag <- struct{}{}:
		default:
		}
		return
	}
	for k := range missed {
		s.missed[k] = struct{}{}
	}
	if since.Before(s.missedSince) {
		s.missedSince = since
	}
}

// takeMissed starts a catch-up: it hands over the missed events and holds
// live ones back as during a replay.
func (s *subscriber) takeMissed() (map[eventKey]struct{}, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	missed, since := s.missed, s.missedSince
	s.missed = nil
	s.replaying = true
	return missed, since
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
		case <-sub.lag:
			// What is queued came before what was missed.
			if err := drain(sub, stream); err != nil {
				return err
			}
			if err := m.catchUp(ctx, req, sub, stream, log); err != nil {
				return err
			}
		case <-sub.cut:
			// Deliver nothing more: a gap must be visible as an error.
			sub.mu.Lock()
			behind := sub.behind
			sub.mu.Unlock()
			log.Warn("subscriber cut off", "behind", behind)
			return status.Errorf(codes.ResourceExhausted,
				"subscriber too slow: %d events behind (buffer %d, [query_master] subscriber_buffer, and %d more sent from the store); resubscribe with replay_since to catch up",
				behind, sub.size, missFactor*sub.size)
		case <-ctx.Done():
			return m.leaderStatus(ctx)
		}
	}
}

// drain sends what sub has queued, without waiting for more.
func drain(sub *subscriber, stream quiltv1.QueryMaster_SubscribeServer) error {
	for {
		select {
		case e := <-sub.ch:
			if err := stream.Send(e); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// catchUp sends the events sub missed from the store, oldest first, while
// live ones are held back, then releases those. Only the missed ids are
// sent, so the pages stop as soon as they are all found.
func (m *Master) catchUp(ctx context.Context, req *quiltv1.SubscribeRequest, sub *subscriber, stream quiltv1.QueryMaster_SubscribeServer, log *slog.Logger) error {
	want, since := sub.takeMissed()
	n := len(want)
	// want names the events exactly; the filter only narrows the store's
	// walk. Sources, kinds and time keep it on the store's time index: a
	// channel, user or text filter would make the embedded store first
	// wait for its index file to hold the newest events, stalling the
	// stream mid-burst.
	f := &quiltv1.EventFilter{}
	if req.Filter != nil {
		f = &quiltv1.EventFilter{Sources: req.Filter.GetSources(), Kinds: req.Filter.GetKinds(), Since: req.Filter.GetSince(), Until: req.Filter.GetUntil()}
	}
	// A second early: a store that keeps coarser times than the events
	// carry must not leave the oldest missed one out.
	since = since.Add(-time.Second)
	if f.Since == nil || f.Since.AsTime().Before(since) {
		f.Since = timestamppb.New(since)
	}
	if f.Until != nil && !f.Since.AsTime().Before(f.Until.AsTime()) {
		// The live filter let nothing past until through; the store
		// refuses an empty range.
		sub.endReplay(nil)
		return nil
	}
	q := store.EventQuery{Filter: f, Limit: store.MaxLimit, OldestFirst: true}
	for len(want) > 0 {
		page, err := m.opts.Store.QueryEvents(ctx, q)
		if err != nil {
			if ctx.Err() != nil {
				return m.leaderStatus(ctx)
			}
			return status.Errorf(codes.Unavailable, "store: catching up %d events a slow subscriber missed: %v", len(want), err)
		}
		for _, e := range page.Events {
			k := eventKey{e.Source, e.Id}
			if _, ok := want[k]; !ok {
				continue
			}
			delete(want, k)
			if err := stream.Send(e); err != nil {
				return err
			}
		}
		if page.NextPageToken == "" {
			break
		}
		q.PageToken = page.NextPageToken
	}
	if len(want) > 0 {
		// Acked events the store no longer has (retention) or answers
		// differently: nothing to send them from.
		log.Warn("events a slow subscriber missed are not in the store", "missing", len(want), "of", n)
	}
	m.caughtUp.Add(uint64(n - len(want)))
	log.Debug("slow subscriber caught up from the store", "events", n-len(want))
	sub.endReplay(nil)
	return nil
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
