package runtime

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/quiltcore/transport"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// errStopped is the reason of a session ended by the connection cycle
// (disabled, reconnect requested, shutdown).
var errStopped = errors.New("disconnected by the source manager")

// conn is one session of a server, from dialing to its end. Exactly one
// goroutine (run) owns the protocol session; the queue worker hands it
// actions through do.
type conn struct {
	srv    *Server
	id     string // ULID, the SessionID
	ctx    context.Context
	cancel context.CancelCauseFunc
	queue  *commandQueue
	seq    atomic.Uint64
	done   chan struct{}

	// stream sessions
	in chan inMsg
	do chan doReq
	// client sessions
	client Client
}

type inMsg struct {
	data   []byte
	closed bool
	err    error
}

type doReq struct {
	a     *quiltv1.Action
	reply chan doRes
}

type doRes struct {
	sent int
	err  error
}

func newConn(s *Server, parent context.Context) *conn {
	ctx, cancel := context.WithCancelCause(parent)
	c := &conn{
		srv:    s,
		id:     ulid.Make().String(),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	return c
}

// stop asks the session to end; it returns at once.
func (c *conn) stop(reason error) { c.cancel(reason) }

// complete fills in what the session left out and assigns ids; it does
// not touch the maps.
func (c *conn) complete(evs []*quiltv1.Event, now time.Time) {
	m := c.srv.mgr
	ts := timestamppb.New(now)
	for _, e := range evs {
		if e.Id == "" {
			e.Id = c.id + ":" + strconv.FormatUint(c.seq.Add(1), 10)
		}
		e.Source = m.name
		e.Server = c.srv.name
		e.Protocol = m.protocol
		if e.Received == nil {
			e.Received = ts
		}
		if e.Time == nil {
			e.Time = e.Received
		}
	}
}

// emit applies evs to the server's maps and publishes them with cursors.
// It blocks while the link's buffer is full: that is the back-pressure that
// stops the session's reader.
func (c *conn) emit(ctx context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error {
	if len(evs) == 0 && len(cursors) == 0 {
		return nil
	}
	s := c.srv
	now := s.mgr.clock.Now()
	c.complete(evs, now)
	connected := false
	s.mu.Lock()
	for _, e := range evs {
		s.applyLocked(e, now)
		if e.Kind == quiltv1.EventKind_EVENT_KIND_CONNECTED {
			connected = true
		}
	}
	s.mu.Unlock()
	if connected {
		c.onConnected(now)
	}
	for _, cur := range cursors {
		if cur.Server == "" {
			cur.Server = s.name
		}
	}
	s.mgr.noteCursors(cursors)
	return s.mgr.publish(ctx, evs, cursors)
}

// onConnected marks the server connected and queues the configured joins.
func (c *conn) onConnected(now time.Time) {
	s := c.srv
	s.mu.Lock()
	changed := s.setStateLocked(quiltv1.ServerState_SERVER_STATE_CONNECTED, "", now)
	s.failures = 0
	chans := s.cfg.Channels
	s.mu.Unlock()
	if changed {
		s.mgr.statusChanged(s)
	}
	for i, ch := range chans {
		a := &quiltv1.Action{
			Id:     fmt.Sprintf("autojoin:%s:%d", c.id, i),
			Source: s.mgr.name, Server: s.name,
			Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: ch.Name, Key: ch.Key.Reveal(),
			RequestedBy: "autojoin",
		}
		c.queue.push(a, func(r *quiltv1.ActionResult) {
			if !r.Ok {
				s.log.Warn("auto-join failed", "channel", ch.Name, "error", r.Error)
			}
		})
	}
}

// finish ends the session: the runtime's DISCONNECTED event, maps cleared,
// the queue stopped, the server free for the next cycle.
func (c *conn) finish(reason error) {
	s := c.srv
	m := s.mgr
	c.cancel(reason)
	now := m.clock.Now()
	text := "disconnected"
	if reason != nil {
		text = reason.Error()
	}
	ev := model.NewEvent(quiltv1.EventKind_EVENT_KIND_DISCONNECTED, now, nil)
	ev.Text = text
	c.complete([]*quiltv1.Event{ev}, now)

	s.mu.Lock()
	wasConnected := s.state == quiltv1.ServerState_SERVER_STATE_CONNECTED
	s.applyLocked(ev, now)
	s.lag = 0
	if s.conn == c {
		s.conn = nil
	}
	st := quiltv1.ServerState_SERVER_STATE_DISCONNECTED
	errText := ""
	if !errors.Is(reason, errStopped) {
		s.failures++
		errText = text
		if !wasConnected {
			st = quiltv1.ServerState_SERVER_STATE_FAILED
		}
	}
	if !s.enabledLocked() {
		st = quiltv1.ServerState_SERVER_STATE_DISABLED
	}
	s.setStateLocked(st, errText, now)
	s.mu.Unlock()
	if wasConnected {
		// Publish on a context that survives shutdown's cancel only as
		// long as the link buffer has room; it never blocks shutdown.
		pctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := m.publish(pctx, []*quiltv1.Event{ev}, nil); err != nil {
			s.log.Warn("DISCONNECTED event not buffered", "error", err)
		}
		cancel()
	}
	s.log.Info("session ended", "session", c.id, "reason", text)
	m.statusChanged(s)
	m.flagCycle()
}

// ---- stream sessions ----

// Input implements transport.Handler: it hands a copy to the loop and
// blocks while the loop is busy, which stops reading from the peer.
func (c *conn) Input(_ transport.Conn, data []byte) {
	b := make([]byte, len(data))
	copy(b, data)
	select {
	case c.in <- inMsg{data: b}:
	case <-c.ctx.Done():
	}
}

// Closed implements transport.Handler.
func (c *conn) Closed(_ transport.Conn, err error) {
	select {
	case c.in <- inMsg{closed: true, err: err}:
	case <-c.ctx.Done():
	}
}

// runStream is the driver loop of a stream session (STYLE §1/§3): one
// goroutine, one select. tc is already connected with c as its handler.
func (c *conn) runStream(sess Session, tc transport.Conn) {
	defer close(c.done)
	m := c.srv.mgr
	clock := m.clock
	var tick Timer
	var tickAt time.Time
	var tickC <-chan time.Time
	stopTick := func() {
		if tick != nil {
			tick.Stop()
			tick, tickC = nil, nil
		}
	}
	defer stopTick()

	var reason error
	handle := func(out Output) bool {
		// Lag first: a peer that sees the PONG this output writes may ask
		// for the lag it measured at once.
		if out.Lag != 0 {
			c.srv.mu.Lock()
			c.srv.lag = out.Lag
			c.srv.mu.Unlock()
		}
		for _, b := range out.Send {
			if err := tc.Write(b); err != nil {
				if !errors.Is(err, transport.ErrBackpressure) || tc.WriteWait(c.ctx, b) != nil {
					reason = fmt.Errorf("write: %w", err)
					return false
				}
			}
		}
		if err := c.emit(c.ctx, out.Events, out.Cursors); err != nil {
			reason = context.Cause(c.ctx)
			return false
		}
		if !out.NextTick.IsZero() && (tickC == nil || !out.NextTick.Equal(tickAt)) {
			stopTick()
			tickAt = out.NextTick
			tick = clock.NewTimer(out.NextTick.Sub(clock.Now()))
			tickC = tick.C()
		}
		if out.Close != nil {
			fctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
			_ = tc.Flush(fctx)
			cancel()
			reason = out.Close
			return false
		}
		return true
	}

	queueDone := c.runQueue()
	ok := handle(sess.Start(clock.Now()))
	for ok {
		select {
		case msg := <-c.in:
			if msg.closed {
				if msg.err == nil {
					msg.err = errors.New("connection closed")
				}
				reason = msg.err
				ok = false
				break
			}
			ok = handle(sess.Input(clock.Now(), msg.data))
		case <-tickC:
			tick, tickC = nil, nil
			ok = handle(sess.Tick(clock.Now()))
		case req := <-c.do:
			out, err := sess.Do(clock.Now(), req.a)
			if err != nil {
				req.reply <- doRes{err: err}
				continue
			}
			ok = handle(out)
			req.reply <- doRes{sent: len(out.Send), err: func() error {
				if !ok {
					return reason
				}
				return nil
			}()}
		case <-c.ctx.Done():
			reason = context.Cause(c.ctx)
			ok = false
		}
	}
	c.cancel(reason)
	_ = tc.Close()
	<-queueDone
	c.finish(reason)
}

// runQueue starts the session's queue worker. The session waits for it
// after cancelling its context (every wait in the worker ends with it),
// so the results of actions failed by the session's end are reported
// before the session is over, not by a goroutine outliving the manager.
func (c *conn) runQueue() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.queue.run(c.ctx)
	}()
	return done
}

// execStream runs an action on the loop goroutine.
func (c *conn) execStream(ctx context.Context, a *quiltv1.Action) (int, error) {
	req := doReq{a: a, reply: make(chan doRes, 1)}
	select {
	case c.do <- req:
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
	select {
	case r := <-req.reply:
		return r.sent, r.err
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
}

// ---- client sessions ----

// Emit implements Emitter for client sessions.
func (c *conn) Emit(ctx context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error {
	if err := c.ctx.Err(); err != nil {
		return context.Cause(c.ctx)
	}
	// The session's own context bounds the wait: Run's ctx derives from it
	// in every client, and a second context per call costs an allocation
	// on the hottest path.
	_ = ctx
	return c.emit(c.ctx, evs, cursors)
}

func (c *conn) runClient() {
	defer close(c.done)
	queueDone := c.runQueue()
	connected := func(self *quiltv1.User) {
		now := c.srv.mgr.clock.Now()
		ev := model.NewEvent(quiltv1.EventKind_EVENT_KIND_CONNECTED, now, self)
		if self != nil {
			self.Self = true
		}
		if err := c.emit(c.ctx, []*quiltv1.Event{ev}, nil); err != nil {
			c.srv.log.Debug("CONNECTED not published", "error", err)
		}
	}
	err := c.client.Run(c.ctx, c, connected)
	if cause := context.Cause(c.ctx); cause != nil {
		err = cause
	} else if err == nil {
		err = errors.New("client session ended")
	}
	c.cancel(err)
	<-queueDone
	c.finish(err)
}

func (c *conn) execClient(ctx context.Context, a *quiltv1.Action) (int, error) {
	return c.client.Do(ctx, a)
}

func tsNow(c Clock) *timestamppb.Timestamp { return timestamppb.New(c.Now()) }
