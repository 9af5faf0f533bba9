package quilt

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// ErrActLost wraps the outcome of an action whose stream broke (master
// restart, leader change, network) after the action was sent and before
// its result came back: it may or may not have run. Only the caller can
// tell, e.g. by looking for its effect (the relay example looks for its
// messages in the destination's history).
var ErrActLost = errors.New("quilt: action stream broke before the result came back")

// ActOutcome is how one action sent on an ActStream ended: Result when the
// source manager answered (Ok or not), else Err: a status error (NOT_FOUND,
// UNAVAILABLE, DEADLINE_EXCEEDED, INVALID_ARGUMENT...) when the master
// answered that the action got no result, or one wrapping ErrActLost.
type ActOutcome struct {
	Ref    uint64
	Result *quiltv1.ActionResult
	Err    error
	// MayHaveRun is set with Err when the action had reached its source
	// manager (DEADLINE_EXCEEDED, detached before answering) or its stream
	// broke (ErrActLost); unset with Err, the action surely did not run.
	MayHaveRun bool
}

// ActStream pipelines actions over the QueryMaster ActStream RPC: Send
// does not wait for results, actions for one server run in the order they
// were sent, and each outcome comes back on Outcomes keyed by the ref the
// caller chose. When the stream breaks every action still without an
// outcome gets one wrapping ErrActLost, and the next Send opens a new
// stream to the leader (found again through the registrar, as the other
// calls do). Send may be called from several goroutines (they are
// serialised); read Outcomes from another goroutine than the one that
// sends, or a full outcome queue stops the stream.
type ActStream struct {
	c        *Client
	ctx      context.Context
	cancel   context.CancelFunc
	outcomes chan ActOutcome

	mu  sync.Mutex // serialises Send and guards cur
	cur *actConn
	// opened counts streams opened, for tests and logs.
	opened int
}

// actConn is one ActStream RPC.
type actConn struct {
	stream quiltv1.QueryMaster_ActStreamClient
	cancel context.CancelFunc
	addr   string

	mu       sync.Mutex
	inflight map[uint64]uint64 // ref -> send order, to report losses in order
	n        uint64
	broken   bool
}

// ActStreamBuffer is the capacity of ActStream.Outcomes.
const ActStreamBuffer = 4096

// ActStream returns a pipelined action stream; it connects on the first
// Send. Close it when done.
func (c *Client) ActStream(ctx context.Context) *ActStream {
	ctx, cancel := context.WithCancel(ctx)
	return &ActStream{c: c, ctx: ctx, cancel: cancel, outcomes: make(chan ActOutcome, ActStreamBuffer)}
}

// Outcomes delivers one outcome per action sent. It is never closed;
// select on your context too.
func (s *ActStream) Outcomes() <-chan ActOutcome { return s.outcomes }

// Streams tells how many RPC streams were opened so far (one plus one per
// break that was followed by a Send).
func (s *ActStream) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opened
}

// Close ends the stream; actions without an outcome get none.
func (s *ActStream) Close() {
	s.cancel()
}

// Send hands an action to the master without waiting for its result
// (timeout 0: the master's default). An error means the action was not
// sent and gets no outcome: ctx ended, or no stream could be opened (then
// the error says why; calling Send again retries). Once Send returned nil
// the action gets exactly one outcome.
func (s *ActStream) Send(ref uint64, a *quiltv1.Action, timeout time.Duration) error {
	if a.RequestedBy == "" {
		a.RequestedBy = s.c.opts.Identity
	}
	req := &quiltv1.ActStreamRequest{Ref: ref, Action: a, TimeoutSeconds: int32((timeout + time.Second - 1) / time.Second)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ctx.Err(); err != nil {
		return err
	}
	ac := s.cur
	if ac == nil {
		var err error
		if ac, err = s.open(); err != nil {
			return err
		}
	}
	ac.mu.Lock()
	if ac.broken {
		// The reader reported this stream's losses already; this action
		// was never sent.
		ac.mu.Unlock()
		s.cur = nil
		return s.retryable(ac.addr, "stream broke just before the action was sent")
	}
	ac.n++
	ac.inflight[ref] = ac.n
	ac.mu.Unlock()
	if err := ac.stream.Send(req); err != nil {
		// The reader sees the stream's real error and reports this action
		// lost with the others: gRPC may have written part of it.
		s.cur = nil
	}
	return nil
}

func (s *ActStream) retryable(addr, why string) error {
	return status.Errorf(codes.Unavailable, "quilt: ActStream to %s: %s; send again", addr, why)
}

// open starts a new RPC stream and its reader. Called with s.mu held.
func (s *ActStream) open() (*actConn, error) {
	qm, addr := s.c.client()
	sctx, cancel := context.WithCancel(s.ctx)
	stream, err := qm.ActStream(sctx)
	if err != nil {
		cancel()
		if s.ctx.Err() == nil {
			if rerr := s.c.connect(s.ctx, addr); rerr != nil {
				return nil, rerr
			}
		}
		return nil, s.c.explain(err, addr)
	}
	ac := &actConn{stream: stream, cancel: cancel, addr: addr, inflight: map[uint64]uint64{}}
	s.cur = ac
	s.opened++
	go s.read(ac)
	return ac, nil
}

func (s *ActStream) emit(o ActOutcome) bool {
	select {
	case s.outcomes <- o:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// read delivers the outcomes of one RPC stream; when it breaks it reports
// every action still in flight as lost, in the order they were sent, and
// looks the leader up again so the next Send goes to it.
func (s *ActStream) read(ac *actConn) {
	defer ac.cancel()
	var err error
	for {
		var r *quiltv1.ActStreamResponse
		r, err = ac.stream.Recv()
		if err != nil {
			break
		}
		ac.mu.Lock()
		_, ok := ac.inflight[r.Ref]
		delete(ac.inflight, r.Ref)
		ac.mu.Unlock()
		if !ok {
			s.c.log.Debug("ActStream: a response for an unknown ref", "ref", r.Ref)
			continue
		}
		o := ActOutcome{Ref: r.Ref, Result: r.Result}
		if r.Result == nil {
			code := codes.Code(r.Code)
			if code == codes.OK {
				code = codes.Unknown
			}
			o.Err = status.Error(code, r.Message)
			o.MayHaveRun = r.Forwarded
		}
		if !s.emit(o) {
			return
		}
	}
	ac.mu.Lock()
	ac.broken = true
	lost := make([]uint64, 0, len(ac.inflight))
	for ref := range ac.inflight {
		lost = append(lost, ref)
	}
	sort.Slice(lost, func(i, j int) bool { return ac.inflight[lost[i]] < ac.inflight[lost[j]] })
	ac.inflight = nil
	ac.mu.Unlock()
	s.mu.Lock()
	if s.cur == ac {
		s.cur = nil
	}
	s.mu.Unlock()
	if s.ctx.Err() != nil {
		return
	}
	s.c.log.Info("action stream broke", "addr", ac.addr, "lost", len(lost), "err", err)
	// Find the leader before the losses are reported, so the caller's
	// re-sends go to it.
	if Retryable(err) {
		if rerr := s.c.connect(s.ctx, ac.addr); rerr != nil {
			s.c.log.Warn("finding the query master", "err", rerr)
		}
	}
	werr := fmt.Errorf("%w (%s): %v", ErrActLost, ac.addr, s.c.explain(err, ac.addr))
	for _, ref := range lost {
		if !s.emit(ActOutcome{Ref: ref, Err: werr, MayHaveRun: true}) {
			return
		}
	}
}
