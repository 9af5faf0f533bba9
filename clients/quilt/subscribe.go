package quilt

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// SubscribeOptions shape a subscription.
type SubscribeOptions struct {
	Filter *quiltv1.EventFilter
	// ReplaySince replays stored events from then before going live; zero
	// means live only (for the first stream; re-subscribes always replay
	// from the last event seen).
	ReplaySince time.Time
	// Overlap is how far before the last event seen a re-subscribe replays
	// from (default 5s): events of other sources may be stored slightly out
	// of time order, and the ids seen in the overlap are dropped.
	Overlap time.Duration
	// Remember bounds the event ids kept for de-duplication (default 65536).
	Remember int
	// OnReconnect, when set, is told each time the stream broke and why,
	// before the client re-subscribes.
	OnReconnect func(err error)
}

// ErrStop, returned by a Subscribe callback, ends Subscribe with nil.
var ErrStop = errors.New("quilt: stop subscription")

// Subscribe calls fn for each event matching the filter, in the order the
// query master stores them, until ctx ends, fn returns an error (ErrStop:
// a clean stop) or the master refuses the subscription for a reason a
// retry cannot fix (INVALID_ARGUMENT...). When the stream breaks (master
// restart, leader change, cut off as too slow) it finds the leader again and
// re-subscribes with replay_since just before the last event seen, dropping
// ids already delivered, so fn sees no gap and no duplicate at the seam.
// fn runs on Subscribe's goroutine and may keep the event it is given; a
// slow fn slows the stream (past the master's subscriber buffer the master
// sends what it missed from its store; at the limit it cuts it off, after
// which the re-subscribe's replay catches up).
func (c *Client) Subscribe(ctx context.Context, o SubscribeOptions, fn func(*quiltv1.Event) error) error {
	if o.Overlap <= 0 {
		o.Overlap = 5 * time.Second
	}
	if o.Remember <= 0 {
		o.Remember = 65536
	}
	seen := newIDSet(o.Remember)
	var last time.Time // newest event time delivered
	replay := o.ReplaySince
	backoff := 100 * time.Millisecond
	for {
		req := &quiltv1.SubscribeRequest{Filter: o.Filter, RequestedBy: c.opts.Identity}
		if !replay.IsZero() {
			req.ReplaySince = timestamppb.New(replay)
		}
		qm, addr := c.client()
		sctx, cancel := context.WithCancel(ctx)
		stream, err := qm.Subscribe(sctx, req)
		delivered := false
		for err == nil {
			var e *quiltv1.Event
			e, err = stream.Recv()
			if err != nil {
				break
			}
			key := e.GetSource() + "\x00" + e.GetId()
			if e.GetId() != "" && seen.has(key) {
				continue
			}
			seen.add(key)
			if t := e.GetTime().AsTime(); e.GetTime() != nil && t.After(last) {
				last = t
			}
			delivered = true
			// Each Recv decodes into a new message and the library keeps
			// none of it, so fn owns e without a copy.
			if ferr := fn(e); ferr != nil {
				cancel()
				if errors.Is(ferr, ErrStop) {
					return nil
				}
				return ferr
			}
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented:
			return c.explain(err, addr)
		}
		if o.OnReconnect != nil {
			o.OnReconnect(err)
		}
		c.log.Info("subscription broke; re-subscribing", "addr", addr, "err", err)
		if delivered {
			backoff = 100 * time.Millisecond
		}
		// Replay from just before the newest event seen; without one, from
		// where the first stream was asked to start, or (live-only) from
		// when it broke minus the overlap, so nothing stored meanwhile is
		// lost.
		switch {
		case !last.IsZero():
			replay = last.Add(-o.Overlap)
		case replay.IsZero():
			replay = time.Now().Add(-o.Overlap)
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, 5*time.Second)
		if err := c.connect(ctx, addr); err != nil {
			c.log.Warn("finding the query master", "err", err)
		}
	}
}

// idSet remembers the last n ids in arrival order.
type idSet struct {
	n    int
	m    map[string]struct{}
	ring []string
	pos  int
}

func newIDSet(n int) *idSet {
	return &idSet{n: n, m: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (s *idSet) has(k string) bool { _, ok := s.m[k]; return ok }

func (s *idSet) add(k string) {
	if old := s.ring[s.pos]; old != "" {
		delete(s.m, old)
	}
	s.ring[s.pos] = k
	s.m[k] = struct{}{}
	s.pos = (s.pos + 1) % s.n
}
