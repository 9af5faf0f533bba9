package querymaster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/store"
)

func tspb(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// maxCoalesce bounds the events one InsertEvents call takes when several
// batches wait: fewer, larger transactions are what lets the embedded store
// keep up, and the bound keeps one call's latency (and ack delay) small.
const maxCoalesce = 4096

// session is one attached source manager: one Attach stream.
type session struct {
	m        *Master
	name     string
	protocol string
	version  string
	node     string
	instance string
	since    time.Time
	log      *slog.Logger

	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when detach finished

	out     chan *quiltv1.MasterMessage // drained by the writer only
	batches chan *quiltv1.EventBatch    // drained by the storer only

	lastRecv atomic.Int64 // unix nanos of the last message from the SM
	stored   atomic.Uint64

	mu      sync.Mutex
	servers map[string]*quiltv1.ServerStatus
	order   []string // server names in Hello order, for stable listings
	acts    map[string]chan *quiltv1.ActionResult
	lives   map[string]*liveWait
}

// send queues a message for the writer; it fails only when the stream
// ended.
func (s *session) send(msg *quiltv1.MasterMessage) error {
	select {
	case s.out <- msg:
		return nil
	case <-s.ctx.Done():
		return context.Cause(s.ctx)
	}
}

func (s *session) hasServer(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.servers[name]
	return ok
}

func (s *session) serverList() []*quiltv1.ServerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*quiltv1.ServerStatus, 0, len(s.order))
	for _, n := range s.order {
		out = append(out, proto.Clone(s.servers[n]).(*quiltv1.ServerStatus))
	}
	return out
}

func (s *session) updateServers(list []*quiltv1.ServerStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range list {
		if st.GetName() == "" {
			continue
		}
		if _, ok := s.servers[st.Name]; !ok {
			s.order = append(s.order, st.Name)
		}
		s.servers[st.Name] = st
	}
}

// Attach is the SourceLink service: see sourcelink.proto for the protocol.
func (m *Master) Attach(stream quiltv1.SourceLink_AttachServer) error {
	epoch, err := m.leaderEpoch(stream.Context())
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "SourceLink.Attach: the first message must be Hello")
	}
	if hello.Name == "" {
		return status.Error(codes.InvalidArgument, "SourceLink.Attach: Hello.name is empty")
	}
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	stopEpoch := context.AfterFunc(epoch, func() { cancel(context.Cause(epoch)) })
	defer stopEpoch()

	s := &session{
		m:        m,
		name:     hello.Name,
		protocol: hello.Protocol,
		version:  hello.Version,
		node:     hello.Node,
		instance: hello.InstanceId,
		since:    time.Now(),
		ctx:      ctx,
		cancel:   cancel,
		done:     make(chan struct{}),
		out:      make(chan *quiltv1.MasterMessage, 64),
		batches:  make(chan *quiltv1.EventBatch, m.opts.BatchQueue),
		servers:  map[string]*quiltv1.ServerStatus{},
		acts:     map[string]chan *quiltv1.ActionResult{},
		lives:    map[string]*liveWait{},
	}
	s.log = m.log.With("source", s.name, "protocol", s.protocol, "node", s.node)
	s.lastRecv.Store(time.Now().UnixNano())
	s.updateServers(hello.Servers)

	if err := m.router.attach(s); err != nil {
		return err
	}
	defer m.detach(s)
	s.log.Info("source manager attached", "instance", s.instance, "last_seq", hello.LastSeq)

	welcome, err := m.welcome(ctx, s)
	if err != nil {
		return err
	}
	m.putSource(s, time.Time{})
	if err := stream.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	m.afterWelcome(ctx, s, welcome)

	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.writer(stream) }()
	go func() { defer wg.Done(); s.storer() }()
	go func() { defer wg.Done(); s.keeper() }()
	// The reader is not waited for: Recv only returns once the handler
	// has, and it touches nothing detach tears down.
	go s.reader(stream)
	<-ctx.Done()
	// The keeper deregisters before detach frees the name, so a new
	// stream's registration cannot be removed by the old one.
	wg.Wait()
	return m.streamEndStatus(ctx)
}

// streamEndStatus is the status an ended Attach returns to the SM.
func (m *Master) streamEndStatus(ctx context.Context) error {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, io.EOF):
		return nil
	case errors.Is(cause, errNotLeader):
		return m.notLeaderError(context.Background())
	}
	if st, ok := status.FromError(cause); ok {
		return st.Err()
	}
	return status.FromContextError(cause).Err()
}

func (m *Master) welcome(ctx context.Context, s *session) (*quiltv1.Welcome, error) {
	desired, err := m.opts.Store.DesiredServers(ctx, s.name)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: desired servers of %s: %v", s.name, err)
	}
	cursors, err := m.opts.Store.Cursors(ctx, s.name)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: cursors of %s: %v", s.name, err)
	}
	return &quiltv1.Welcome{
		MasterId:         m.id,
		Desired:          desired,
		Cursors:          cursors,
		HeartbeatSeconds: int32(max(1, m.opts.Heartbeat/time.Second)),
	}, nil
}

// afterWelcome clears reconnect requests the Welcome just delivered (they
// are one-shot) and registers the source manager.
func (m *Master) afterWelcome(ctx context.Context, s *session, w *quiltv1.Welcome) {
	for _, d := range w.Desired {
		if d.Reconnect {
			c := proto.Clone(d).(*quiltv1.DesiredServer)
			c.Reconnect = false
			if err := m.opts.Store.SetDesiredServer(ctx, s.name, c); err != nil {
				s.log.Warn("clearing a delivered reconnect request", "server", d.Server, "err", err)
			}
		}
	}
}

func (m *Master) putSource(s *session, detached time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := store.SourceRecord{
		Name:          s.name,
		Protocol:      s.protocol,
		Version:       s.version,
		Node:          s.node,
		FirstAttached: s.since,
		LastAttached:  s.since,
		DetachedAt:    detached,
		Servers:       s.serverList(),
	}
	if err := m.opts.Store.PutSource(ctx, r); err != nil {
		s.log.Warn("store: recording the source manager", "err", err)
	}
}

// detach runs when an Attach stream ends, whatever the reason.
func (m *Master) detach(s *session) {
	s.cancel(io.EOF)
	defer close(s.done)
	s.failPending()
	// Record the detach before freeing the name: whoever sees the source
	// gone from the router then finds it detached in the store, and a new
	// stream's attach record cannot be overwritten by this one.
	m.putSource(s, time.Now())
	m.router.remove(s)
	s.log.Info("source manager detached", "why", context.Cause(s.ctx))
}

// failPending wakes every Act and live query waiting on this stream; they
// see the session's ctx ended and report the source as detached.
func (s *session) failPending() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acts = map[string]chan *quiltv1.ActionResult{}
	s.lives = map[string]*liveWait{}
}

// writer is the only goroutine that calls stream.Send after Welcome.
func (s *session) writer(stream quiltv1.SourceLink_AttachServer) {
	for {
		select {
		case <-s.ctx.Done():
			return
		case msg := <-s.out:
			if err := stream.Send(msg); err != nil {
				s.cancel(err)
				return
			}
		}
	}
}

// reader is the only goroutine that calls stream.Recv after Hello.
func (s *session) reader(stream quiltv1.SourceLink_AttachServer) {
	for {
		msg, err := stream.Recv()
		if err != nil {
			s.cancel(err)
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		switch x := msg.Msg.(type) {
		case *quiltv1.SourceMessage_Events:
			select {
			case s.batches <- x.Events:
			case <-s.ctx.Done():
				return
			}
		case *quiltv1.SourceMessage_ActionResult:
			s.resolveAction(x.ActionResult)
		case *quiltv1.SourceMessage_LiveReply:
			s.deliverLive(x.LiveReply)
		case *quiltv1.SourceMessage_Status:
			s.updateServers(x.Status.Servers)
		case *quiltv1.SourceMessage_Heartbeat:
		case *quiltv1.SourceMessage_Hello:
			s.cancel(status.Error(codes.InvalidArgument, "SourceLink.Attach: Hello sent twice on one stream"))
			return
		default:
			s.log.Debug("ignoring an unknown message from the source manager")
		}
	}
}

// storer stores batches in arrival order and acks each only after
// InsertEvents returned: an ack is a promise the events are durable. While
// it stores, the reader keeps receiving into s.batches; what queued up is
// stored in the next call, so acks stay in order and cumulative.
func (s *session) storer() {
	st := s.m.opts.Store
	var (
		events  []*quiltv1.Event
		cursors []*quiltv1.Cursor
	)
	for {
		var b *quiltv1.EventBatch
		select {
		case <-s.ctx.Done():
			return
		case b = <-s.batches:
		}
		events, cursors = events[:0], cursors[:0]
		seq := b.Seq
		events = append(events, b.Events...)
		cursors = append(cursors, b.Cursors...)
	more:
		for len(events) < maxCoalesce {
			select {
			case b = <-s.batches:
				seq = max(seq, b.Seq)
				events = append(events, b.Events...)
				cursors = append(cursors, b.Cursors...)
			default:
				break more
			}
		}
		for _, e := range events {
			// The store keys de-duplication on the attached name, so an
			// event cannot claim another source manager's identity.
			e.Source = s.name
			if e.Protocol == "" {
				e.Protocol = s.protocol
			}
		}
		res, err := st.InsertEvents(s.ctx, s.name, events, cursors)
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Error("store: inserting events; ending the stream so the source manager replays them", "seq", seq, "err", err)
				s.cancel(status.Errorf(codes.Unavailable, "store: inserting batch %d of %s: %v", seq, s.name, err))
			}
			return
		}
		s.stored.Add(uint64(res.Stored))
		// Durable now, so subscribers may see the events; publishing before
		// the ack means an acked event is always visible to them.
		s.m.publish(s, events, res.Duplicates)
		ack := &quiltv1.Ack{Seq: seq, Stored: uint32(res.Stored), Duplicates: uint32(len(res.Duplicates))}
		if s.send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Ack{Ack: ack}}) != nil {
			return
		}
	}
}

// publish hands stored, non-duplicate events to subscribers and records
// channel info carried by them.
func (m *Master) publish(s *session, events []*quiltv1.Event, dups []string) {
	fresh := events
	if len(dups) > 0 {
		skip := make(map[string]bool, len(dups))
		for _, id := range dups {
			skip[id] = true
		}
		fresh = make([]*quiltv1.Event, 0, len(events)-len(dups))
		for _, e := range events {
			if !skip[e.Id] {
				fresh = append(fresh, e)
			}
		}
	}
	m.hub.publish(fresh)
	for _, e := range fresh {
		if e.ChannelInfo != nil && e.ChannelInfo.Name != "" {
			if err := m.opts.Store.PutChannelInfo(s.ctx, s.name, e.Server, e.ChannelInfo); err != nil && s.ctx.Err() == nil {
				s.log.Warn("store: channel info", "server", e.Server, "channel", e.ChannelInfo.Name, "err", err)
			}
		}
	}
}

// keeper sends heartbeats down and keeps the SM's registration passing
// while the stream is heard from: a wedged source manager goes critical in
// the registrar even if its TCP connection lingers.
func (s *session) keeper() {
	reg := s.m.register(s)
	defer func() {
		if reg != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := reg.Deregister(ctx); err != nil {
				s.log.Warn("deregistering the source manager", "err", err)
			}
			cancel()
		}
	}()
	ttl := s.m.opts.SourceTTL
	hb := time.NewTicker(s.m.opts.Heartbeat)
	defer hb.Stop()
	pass := time.NewTicker(max(ttl/3, 10*time.Millisecond))
	defer pass.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-hb.C:
			_ = s.send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Heartbeat{
				Heartbeat: &quiltv1.Heartbeat{Sent: timestamppb.New(now)}}})
		case now := <-pass.C:
			if reg == nil || now.Sub(time.Unix(0, s.lastRecv.Load())) > ttl {
				continue
			}
			ctx, cancel := context.WithTimeout(s.ctx, ttl/3+time.Second)
			if err := reg.Pass(ctx); err != nil && s.ctx.Err() == nil {
				s.log.Warn("registrar: passing the source manager's TTL check", "err", err)
			}
			cancel()
		}
	}
}

// register adds the SM to the registrar as quilt-sm-<name>; nil without a
// registrar or when registration failed (logged: the stream stays up,
// registration is for operators and discovery, not for data flow).
func (m *Master) register(s *session) registrar.Registered {
	if m.opts.Registrar == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	r, err := m.opts.Registrar.Register(ctx, registrar.Registration{
		Name:            registrar.ServiceSourceManager,
		ID:              registrar.SourceManagerID(s.name),
		Address:         s.node,
		Tags:            []string{s.protocol},
		Meta:            map[string]string{"protocol": s.protocol, "version": s.version, "node": s.node, "master": m.id},
		TTL:             m.opts.SourceTTL,
		ManualHeartbeat: true,
		DeregisterAfter: m.opts.DeregisterAfter,
	})
	if err != nil {
		if s.ctx.Err() == nil {
			s.log.Warn("registrar: registering the source manager", "err", err)
		}
		return nil
	}
	return r
}
