package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/version"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// link is the source manager's end of SourceLink.Attach (DESIGN.md §6).
//
// Every event published goes into a bounded buffer of batches and stays
// there until the query master acknowledges it (after storing it). When the
// buffer holds BufferEvents events, publish blocks: the sessions stop
// reading from their networks instead of dropping anything.
//
// Batching is Nagle-like: when everything this stream sent is acknowledged,
// an event goes up at once, alone; while a batch is unacknowledged, events
// pile up in the open batch, which goes when the ack comes, when it holds
// BatchSize events, or when its first event is BatchDelay old, whichever is
// first. So a quiet link adds no delay, and a busy one sends batches as
// large as the query master's store round trip lets them grow. At most
// MaxInFlight batches are sent and unacknowledged: the rest wait here, not
// in the query master's batch queue, whose reader would otherwise stop
// reading and leave the action results and live replies sent after them
// waiting for the store. Batches get
// sequence numbers when sealed; a replay after re-attaching sends the same
// batches with the same numbers, so the query master (and its store's
// processed-id index) can drop what it already has.
//
// A sealed batch is kept encoded (the SourceMessage bytes), not as protos:
// a full buffer is then a few megabytes of bytes the GC does not scan
// instead of ~10 objects per event, the sender only hands bytes to gRPC,
// and a replay costs no second encoding. Whoever seals a batch encodes it,
// outside the lock: the publishing session for full batches, the sender
// for one sealed by BatchDelay.
//
// Goroutines: run (attach/reconnect loop) and, per stream, one sender and
// one receiver. The sender is the only caller of stream.Send.
type link struct {
	m    *Manager
	opts LinkOptions
	log  *slog.Logger

	mu      sync.Mutex
	batches []*sealed           // unacknowledged, consecutive seqs
	open    *quiltv1.EventBatch // filling; no seq yet
	openAt  time.Time
	count   int    // events in batches and open
	lastSeq uint64 // highest seq assigned
	acked   uint64
	space   chan struct{} // closed and replaced when events are acked
	notify  chan struct{} // cap 1: wakes the sender
	out     chan *quiltv1.SourceMessage
}

// sealed is one batch with its seq. Until raw is set (under link.mu) the
// goroutine that sealed it is encoding b, and the sender waits for it.
type sealed struct {
	seq uint64
	n   int                 // events
	b   *quiltv1.EventBatch // dropped once encoded
	raw []byte              // the encoded SourceMessage carrying b
}

func newLink(m *Manager) *link {
	return &link{
		m:      m,
		opts:   m.opts.Link,
		log:    m.log.With("part", "link"),
		space:  make(chan struct{}),
		notify: make(chan struct{}, 1),
	}
}

func (l *link) wake() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// pending counts unacknowledged events.
func (l *link) pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count
}

// publish adds events to the buffer, blocking while it is full. A call
// larger than the whole buffer waits for it to be empty, then goes in.
func (l *link) publish(ctx context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error {
	n := len(evs)
	l.mu.Lock()
	for l.count > 0 && l.count+n > l.opts.BufferEvents {
		ch := l.space
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		l.mu.Lock()
	}
	wake := false
	if l.open == nil {
		l.open = &quiltv1.EventBatch{}
		l.openAt = time.Now()
		wake = true
	}
	l.open.Events = append(l.open.Events, evs...)
	l.open.Cursors = append(l.open.Cursors, cursors...)
	l.count += n
	var full []*sealed
	for l.open != nil && len(l.open.Events) >= l.opts.BatchSize {
		full = append(full, l.sealLocked())
	}
	l.mu.Unlock()
	for _, sb := range full {
		l.encode(sb)
	}
	if wake || len(full) > 0 {
		l.wake()
	}
	return nil
}

// sealLocked closes (at most BatchSize events of) the open batch with the
// next seq; the caller encodes it. Cursors go with the batch holding the
// last events, so a resume position is never stored ahead of its events.
func (l *link) sealLocked() *sealed {
	o := l.open
	if o == nil {
		return nil
	}
	if len(o.Events) > l.opts.BatchSize {
		b := &quiltv1.EventBatch{Events: o.Events[:l.opts.BatchSize:l.opts.BatchSize]}
		o.Events = o.Events[l.opts.BatchSize:]
		l.lastSeq++
		b.Seq = l.lastSeq
		sb := &sealed{seq: b.Seq, n: len(b.Events), b: b}
		l.batches = append(l.batches, sb)
		return sb
	}
	l.lastSeq++
	o.Seq = l.lastSeq
	sb := &sealed{seq: o.Seq, n: len(o.Events), b: o}
	l.batches = append(l.batches, sb)
	l.open = nil
	return sb
}

// encode marshals a batch sealed by this goroutine and publishes the bytes
// to the sender. Nothing else touches sb.b meanwhile: the sender waits for
// raw, and the batch's events belong to the link since publish.
func (l *link) encode(sb *sealed) {
	msg := &quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Events{Events: sb.b}}
	raw, err := proto.Marshal(msg)
	if err != nil {
		// Only invalid UTF-8 in a string field fails here, and gRPC
		// would refuse it forever: repair it rather than wedge the link.
		l.log.Warn("event batch not encodable; replacing invalid UTF-8", "seq", sb.seq, "error", err)
		validUTF8(msg.ProtoReflect())
		if raw, err = proto.Marshal(msg); err != nil {
			panic(fmt.Sprintf("runtime: encoding event batch %d after repairing UTF-8: %v", sb.seq, err))
		}
	}
	l.mu.Lock()
	sb.raw, sb.b = raw, nil
	l.mu.Unlock()
}

// validUTF8 replaces invalid UTF-8 in every string of m, recursively.
func validUTF8(m protoreflect.Message) {
	fix := func(v protoreflect.Value) (protoreflect.Value, bool) {
		if str := v.String(); !utf8.ValidString(str) {
			return protoreflect.ValueOfString(strings.ToValidUTF8(str, "\uFFFD")), true
		}
		return v, false
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			lst := v.List()
			for i := 0; i < lst.Len(); i++ {
				if fd.Kind() == protoreflect.StringKind {
					if nv, ok := fix(lst.Get(i)); ok {
						lst.Set(i, nv)
					}
				} else if fd.Message() != nil {
					validUTF8(lst.Get(i).Message())
				}
			}
		case fd.IsMap():
			mp := v.Map()
			type kv struct{ k, v protoreflect.Value }
			var bad []kv
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Message() != nil {
					validUTF8(mv.Message())
				}
				nk, kok := k.Value(), false
				if fd.MapKey().Kind() == protoreflect.StringKind {
					nk, kok = fix(k.Value())
				}
				nv, vok := mv, false
				if fd.MapValue().Kind() == protoreflect.StringKind {
					nv, vok = fix(mv)
				}
				if kok || vok {
					bad = append(bad, kv{k.Value(), mv})
					bad = append(bad, kv{nk, nv})
				}
				return true
			})
			for i := 0; i < len(bad); i += 2 {
				mp.Clear(bad[i].k.MapKey())
			}
			for i := 1; i < len(bad); i += 2 {
				mp.Set(bad[i].k.MapKey(), bad[i].v)
			}
		case fd.Kind() == protoreflect.StringKind:
			if nv, ok := fix(v); ok {
				m.Set(fd, nv)
			}
		case fd.Message() != nil:
			validUTF8(v.Message())
		}
		return true
	})
}

// ack drops every batch up to seq, and wakes the sender when events wait
// for it.
func (l *link) ack(seq uint64) {
	l.mu.Lock()
	freed := 0
	i := 0
	for ; i < len(l.batches) && l.batches[i].seq <= seq; i++ {
		freed += l.batches[i].n
		l.batches[i] = nil
	}
	l.batches = l.batches[i:]
	if len(l.batches) == 0 {
		l.batches = nil // let the backing array go
	}
	if seq > l.acked {
		l.acked = seq
	}
	l.count -= freed
	if freed > 0 {
		close(l.space)
		l.space = make(chan struct{})
	}
	waiting := l.open != nil || len(l.batches) > 0
	l.mu.Unlock()
	if waiting {
		l.wake()
	}
}

// next returns the encoded batch after seq sent, unless MaxInFlight batches
// are unacknowledged. Else it seals the open batch if nothing sent is
// unacknowledged or its delay is up, and returns it for the caller to
// encode, or says when the open batch becomes due. Zero due: nothing to do
// until a wake (an ack, a new batch, or the end of the encoding of the
// batch after sent, whose sealer wakes the sender).
func (l *link) next(sent uint64, now time.Time) (b *sealed, toEncode *sealed, due time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var inFlight uint64
	if sent > l.acked {
		inFlight = sent - l.acked
	}
	full := inFlight >= uint64(l.opts.MaxInFlight)
	if b := l.afterLocked(sent); b != nil {
		if b.raw == nil || full {
			return nil, nil, time.Time{}
		}
		return b, nil, time.Time{}
	}
	if l.open != nil {
		if inFlight == 0 {
			return nil, l.sealLocked(), time.Time{}
		}
		if full {
			return nil, nil, time.Time{}
		}
		due := l.openAt.Add(l.opts.BatchDelay)
		if now.Before(due) {
			return nil, nil, due
		}
		return nil, l.sealLocked(), time.Time{}
	}
	return nil, nil, time.Time{}
}

func (l *link) afterLocked(sent uint64) *sealed {
	if len(l.batches) == 0 {
		return nil
	}
	first := l.batches[0].seq
	if sent+1 < first {
		return l.batches[0]
	}
	i := sent + 1 - first
	if i < uint64(len(l.batches)) {
		return l.batches[i]
	}
	return nil
}

// rawMessage is an already encoded SourceMessage; linkCodec sends its
// bytes as they are.
type rawMessage []byte

// linkCodec is the proto codec, except that a rawMessage is sent as is.
// The wire is the same: the query master decodes a SourceMessage.
type linkCodec struct{ encoding.CodecV2 }

func (c linkCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(rawMessage); ok {
		// SliceBuffer's Free does nothing: the bytes stay the link's,
		// for a replay, and are never written to again.
		return mem.BufferSlice{mem.SliceBuffer(r)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// status queues a ServerStatusUpdate when attached; while detached it is
// dropped, since the next Hello carries every server's status.
func (l *link) status(st *quiltv1.ServerStatus) {
	l.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Status{Status: &quiltv1.ServerStatusUpdate{Servers: []*quiltv1.ServerStatus{st}}}})
}

// send queues a non-event message on the current stream.
func (l *link) send(msg *quiltv1.SourceMessage) {
	l.mu.Lock()
	ch := l.out
	l.mu.Unlock()
	if ch == nil {
		l.log.Debug("not attached; message dropped", "type", fmt.Sprintf("%T", msg.Msg))
		return
	}
	select {
	case ch <- msg:
		return
	default:
	}
	// Full: wait a little (a timer per message would cost every action
	// result an allocation while the queue has room).
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case ch <- msg:
	case <-t.C:
		l.log.Warn("link send queue full; message dropped", "type", fmt.Sprintf("%T", msg.Msg))
	}
}

// run attaches, and re-attaches with backoff after every loss, until ctx
// ends.
func (l *link) run(ctx context.Context) {
	delay := l.opts.ReconnectMin
	for ctx.Err() == nil {
		welcomed, err := l.attach(ctx)
		if ctx.Err() != nil {
			return
		}
		if welcomed {
			delay = l.opts.ReconnectMin
		}
		l.log.Warn("query master link down; re-attaching", "error", err, "retry_in", delay, "unacked_events", l.pending())
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		delay = min(delay*2, l.opts.ReconnectMax)
	}
}

// resolve finds the leader's address.
func (l *link) resolve(ctx context.Context) (string, error) {
	if l.m.opts.Target != "" {
		return l.m.opts.Target, nil
	}
	ld, err := l.m.opts.Registrar.Leader(ctx, l.m.opts.LeaderKey)
	if err != nil {
		return "", fmt.Errorf("finding the query master (leader key %q): %w", l.m.opts.LeaderKey, err)
	}
	return ld.Address, nil
}

var errLeaderMoved = errors.New("the query master leader moved")

// attach runs one stream to its end. welcomed reports whether it got as
// far as Welcome.
func (l *link) attach(ctx context.Context) (welcomed bool, _ error) {
	target, err := l.resolve(ctx)
	if err != nil {
		return false, err
	}
	dopts := l.m.opts.DialOptions
	if len(dopts) == 0 {
		dopts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	cc, err := grpc.NewClient(target, dopts...)
	if err != nil {
		return false, fmt.Errorf("query master %s: %w", target, err)
	}
	defer cc.Close()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stream, err := quiltv1.NewSourceLinkClient(cc).Attach(sctx, grpc.ForceCodecV2(linkCodec{encoding.GetCodecV2(grpcproto.Name)}))
	if err != nil {
		return false, fmt.Errorf("attach to %s: %w", target, err)
	}
	l.mu.Lock()
	lastSeq := l.lastSeq
	l.mu.Unlock()
	hello := &quiltv1.Hello{
		Name: l.m.name, Protocol: l.m.protocol, Version: version.Version, Node: l.m.opts.Node,
		Servers: l.m.statuses(), InstanceId: l.m.opts.InstanceID, LastSeq: lastSeq,
	}
	if err := stream.Send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Hello{Hello: hello}}); err != nil {
		// io.EOF means the query master already ended the stream (e.g. "not
		// leader"); its status, which says why, comes from Recv.
		if errors.Is(err, io.EOF) {
			_, err = stream.Recv()
		}
		return false, fmt.Errorf("hello to %s: %w", target, err)
	}
	wt := time.AfterFunc(30*time.Second, func() { cancel(errors.New("no Welcome within 30s")) })
	first, err := stream.Recv()
	wt.Stop()
	if err != nil {
		if c := context.Cause(sctx); c != nil && sctx.Err() != nil && ctx.Err() == nil {
			err = c
		}
		return false, fmt.Errorf("waiting for Welcome from %s: %w", target, err)
	}
	w := first.GetWelcome()
	if w == nil {
		return false, fmt.Errorf("query master %s: first message is %T, not Welcome", target, first.Msg)
	}
	l.log.Info("attached to query master", "address", target, "master", w.MasterId, "replaying_events", l.pending())
	l.m.applyWelcome(w)
	hb := l.opts.Heartbeat
	if w.HeartbeatSeconds > 0 {
		hb = time.Duration(w.HeartbeatSeconds) * time.Second
	}

	out := make(chan *quiltv1.SourceMessage, 1024)
	l.mu.Lock()
	l.out = out
	acked := l.acked
	l.mu.Unlock()
	// A server that changed state after Hello was built and before out was
	// set had its update dropped; send everyone's status, read only now
	// that out is set, so the query master's view (ListSources) is never
	// stale: a change after this read is queued after it. (Read before
	// out was set, a change in between was in neither: a server could
	// show "connecting" for as long as it stayed connected.)
	out <- &quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Status{Status: &quiltv1.ServerStatusUpdate{Servers: l.m.statuses()}}}
	defer func() {
		l.mu.Lock()
		l.out = nil
		l.mu.Unlock()
	}()

	errc := make(chan error, 3)
	go func() { errc <- l.sendLoop(sctx, stream, out, acked, hb) }()
	go func() { errc <- l.recvLoop(sctx, stream) }()
	go func() { errc <- l.watchLeader(sctx, target, hb) }()
	err = <-errc
	cancel(err)
	<-errc
	<-errc
	return true, err
}

// watchLeader ends the stream when the registrar names another leader.
// (A query master losing leadership also ends its streams itself.)
func (l *link) watchLeader(ctx context.Context, target string, every time.Duration) error {
	if l.m.opts.Target != "" {
		<-ctx.Done()
		return context.Cause(ctx)
	}
	for {
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
		}
		ld, err := l.m.opts.Registrar.Leader(ctx, l.m.opts.LeaderKey)
		if err == nil && ld.Address != target {
			return fmt.Errorf("%w: %s → %s", errLeaderMoved, target, ld.Address)
		}
	}
}

func (l *link) sendLoop(ctx context.Context, stream grpc.BidiStreamingClient[quiltv1.SourceMessage, quiltv1.MasterMessage],
	out chan *quiltv1.SourceMessage, sent uint64, hb time.Duration) error {
	lastSend := time.Now()
	hbT := time.NewTicker(hb / 2)
	defer hbT.Stop()
	var due *time.Timer
	defer func() {
		if due != nil {
			due.Stop()
		}
	}()
	for {
		select {
		case m := <-out:
			if err := stream.Send(m); err != nil {
				return err
			}
			lastSend = time.Now()
			continue
		default:
		}
		b, enc, at := l.next(sent, time.Now())
		if enc != nil {
			l.encode(enc)
			continue
		}
		if b != nil {
			if err := stream.SendMsg(rawMessage(b.raw)); err != nil {
				return err
			}
			sent = b.seq
			lastSend = time.Now()
			continue
		}
		var dueC <-chan time.Time
		if !at.IsZero() {
			if due == nil {
				due = time.NewTimer(time.Until(at))
			} else {
				due.Reset(time.Until(at))
			}
			dueC = due.C
		}
		select {
		case m := <-out:
			if err := stream.Send(m); err != nil {
				return err
			}
			lastSend = time.Now()
		case <-l.notify:
		case <-dueC:
		case now := <-hbT.C:
			if now.Sub(lastSend) >= hb/2 {
				hbm := &quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Heartbeat{Heartbeat: &quiltv1.Heartbeat{Sent: timestamppb.New(now)}}}
				if err := stream.Send(hbm); err != nil {
					return err
				}
				lastSend = now
			}
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if due != nil && dueC != nil {
			due.Stop()
		}
	}
}

func (l *link) recvLoop(ctx context.Context, stream grpc.BidiStreamingClient[quiltv1.SourceMessage, quiltv1.MasterMessage]) error {
	for {
		mm, err := stream.Recv()
		if err != nil {
			return err
		}
		switch x := mm.Msg.(type) {
		case *quiltv1.MasterMessage_Ack:
			l.ack(x.Ack.GetSeq())
		case *quiltv1.MasterMessage_Action:
			a := x.Action
			l.m.Act(a, func(r *quiltv1.ActionResult) {
				if r.ActionId == "" {
					return
				}
				l.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_ActionResult{ActionResult: r}})
			})
		case *quiltv1.MasterMessage_LiveQuery:
			r := l.m.Query(x.LiveQuery)
			l.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_LiveReply{LiveReply: r}})
		case *quiltv1.MasterMessage_Control:
			l.m.control(x.Control)
		case *quiltv1.MasterMessage_Heartbeat, *quiltv1.MasterMessage_Welcome:
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
	}
}
