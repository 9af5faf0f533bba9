package querymaster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// Router knows which source managers are attached and carries requests
// down their streams: actions (Act), server control, and live queries for
// the query layer.
type Router struct {
	m  *Master
	mu sync.Mutex
	// sessions by source name; at most one stream per name.
	sessions map[string]*session
	// seen: every name attached since this master started, so a live
	// query reports one that detached since without asking the store.
	seen map[string]bool
}

func newRouter(m *Master) *Router {
	return &Router{m: m, sessions: map[string]*session{}, seen: map[string]bool{}}
}

// attach claims s.name. A stream from the same process (same Hello
// instance_id) replaces the old one, which a half-open connection may keep
// alive for a while; anything else claiming the name is refused.
func (r *Router) attach(s *session) error {
	for {
		r.mu.Lock()
		old := r.sessions[s.name]
		if old == nil {
			r.sessions[s.name] = s
			r.seen[s.name] = true
			r.mu.Unlock()
			return nil
		}
		r.mu.Unlock()
		if s.instance == "" || old.instance != s.instance {
			return status.Errorf(codes.AlreadyExists,
				"source manager %s is already attached from %s since %s (instance %s); stop the other quilt-smd %s or rename one of them",
				s.name, nodeOr(old.node), old.since.UTC().Format(time.RFC3339), nodeOr(old.instance), s.name)
		}
		s.log.Info("replacing the previous stream of the same source manager process")
		old.cancel(status.Errorf(codes.Aborted, "replaced by a newer stream of source manager %s from the same process", s.name))
		select {
		case <-old.done:
		case <-s.ctx.Done():
			return context.Cause(s.ctx)
		}
	}
}

func nodeOr(s string) string {
	if s == "" {
		return "an unknown node"
	}
	return s
}

func (r *Router) remove(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sessions[s.name] == s {
		delete(r.sessions, s.name)
	}
}

func (r *Router) get(name string) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[name]
}

func (r *Router) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.sessions)
}

// Attached lists the names of attached source managers, sorted.
func (r *Router) Attached() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.sessions))
	for n := range r.sessions {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Seen lists every source name attached to this master since it started
// (attached now or not), sorted.
func (r *Router) Seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.seen))
	for n := range r.seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (r *Router) snapshot() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Known tells whether a source name is known at all: attached now, in the
// store, or configured in smd.d (when the master can see it).
func (r *Router) Known(ctx context.Context, name string) (bool, error) {
	if r.get(name) != nil {
		return true, nil
	}
	if kn := r.m.opts.KnownSources; kn != nil {
		for _, n := range kn() {
			if n == name {
				return true, nil
			}
		}
	}
	_, err := r.m.opts.Store.GetSource(ctx, name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	default:
		return false, status.Errorf(codes.Unavailable, "store: looking up source %s: %v", name, err)
	}
}

// resolve finds the attached session for source (and checks its server):
// NOT_FOUND for unknown names, UNAVAILABLE for known but detached ones.
func (r *Router) resolve(ctx context.Context, source, server string) (*session, error) {
	if source == "" {
		return nil, status.Error(codes.InvalidArgument, "source is empty")
	}
	s := r.get(source)
	if s == nil {
		known, err := r.Known(ctx, source)
		if err != nil {
			return nil, err
		}
		if !known {
			return nil, status.Errorf(codes.NotFound, "unknown source %q (attached: %v)", source, r.Attached())
		}
		return nil, status.Errorf(codes.Unavailable, "source %q is not attached to this query master; is quilt-smd %s running?", source, source)
	}
	if server != "" && !s.hasServer(server) {
		return nil, status.Errorf(codes.NotFound, "source %q has no server %q (servers: %v)", source, server, serverNames(s))
	}
	return s, nil
}

func serverNames(s *session) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.order...)
}

// Act sends an action to its source manager and waits for the result, at
// most timeout (0: Options.ActTimeout). The action gets a new ULID id. A
// result with ok=false is returned as a result, not an error: the action
// reached the source manager, which says why it failed.
func (r *Router) Act(ctx context.Context, a *quiltv1.Action, timeout time.Duration) (*quiltv1.ActionResult, error) {
	p, err := r.Submit(ctx, a)
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx, timeout)
}

// PendingAction is an action handed to its source manager's stream whose
// result has not been taken yet. Wait for it exactly once.
type PendingAction struct {
	r  *Router
	s  *session
	id string
	ch chan *quiltv1.ActionResult
}

// Submit checks a, gives a copy a new ULID id and queues it on its source
// manager's stream without waiting for the result. Actions submitted one
// after the other (by one goroutine) reach the source manager in that
// order, which is what keeps a pipelined client's per-server order.
func (r *Router) Submit(ctx context.Context, a *quiltv1.Action) (*PendingAction, error) {
	if a == nil {
		return nil, status.Error(codes.InvalidArgument, "action is missing")
	}
	if a.Server == "" {
		return nil, status.Error(codes.InvalidArgument, "action.server is empty")
	}
	if a.Kind == quiltv1.ActionKind_ACTION_KIND_UNSPECIFIED {
		return nil, status.Error(codes.InvalidArgument, "action.kind is unspecified")
	}
	s, err := r.resolve(ctx, a.Source, a.Server)
	if err != nil {
		return nil, err
	}
	a = proto.Clone(a).(*quiltv1.Action)
	a.Id = ulid.Make().String()
	p := &PendingAction{r: r, s: s, id: a.Id, ch: make(chan *quiltv1.ActionResult, 1)}
	s.mu.Lock()
	s.acts[a.Id] = p.ch
	s.mu.Unlock()
	if err := s.send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Action{Action: a}}); err != nil {
		p.forget()
		return nil, status.Errorf(codes.Unavailable, "source %q detached before action %s was sent", a.Source, a.Id)
	}
	return p, nil
}

// ID is the id the query master gave the action.
func (p *PendingAction) ID() string { return p.id }

func (p *PendingAction) forget() {
	p.s.mu.Lock()
	delete(p.s.acts, p.id)
	p.s.mu.Unlock()
}

// Wait returns the action's result, or DEADLINE_EXCEEDED after timeout (0:
// Options.ActTimeout), UNAVAILABLE when the source manager detached first,
// or ctx's error.
func (p *PendingAction) Wait(ctx context.Context, timeout time.Duration) (*quiltv1.ActionResult, error) {
	defer p.forget()
	if timeout <= 0 {
		timeout = p.r.m.opts.ActTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case res := <-p.ch:
		return res, nil
	case <-t.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "action %s: source %q did not answer within %s", p.id, p.s.name, timeout)
	case <-p.s.ctx.Done():
		// A result read just before the detach still counts.
		select {
		case res := <-p.ch:
			return res, nil
		default:
		}
		return nil, status.Errorf(codes.Unavailable, "action %s: source %q detached before answering", p.id, p.s.name)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

func (s *session) resolveAction(res *quiltv1.ActionResult) {
	s.mu.Lock()
	ch := s.acts[res.GetActionId()]
	delete(s.acts, res.GetActionId())
	s.mu.Unlock()
	if ch == nil {
		s.log.Debug("result for an action nobody waits for (timed out?)", "action_id", res.GetActionId())
		return
	}
	ch <- res
}

// Control stores an operator's choice for one server and pushes it down the
// stream when the source manager is attached. RECONNECT is one-shot: it
// stays stored only until delivered.
func (r *Router) Control(ctx context.Context, req *quiltv1.ControlServerRequest) (*quiltv1.ControlServerResponse, error) {
	if req.Server == "" {
		return nil, status.Error(codes.InvalidArgument, "server is empty")
	}
	if req.Op == quiltv1.ServerControlOp_SERVER_CONTROL_OP_UNSPECIFIED {
		return nil, status.Error(codes.InvalidArgument, "op is unspecified (enable, disable or reconnect)")
	}
	s, err := r.resolve(ctx, req.Source, req.Server)
	if err != nil && status.Code(err) != codes.Unavailable {
		return nil, err
	}
	st := r.m.opts.Store
	desired := &quiltv1.DesiredServer{Server: req.Server, Enabled: true}
	prev, err := st.DesiredServers(ctx, req.Source)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: desired servers of %s: %v", req.Source, err)
	}
	for _, d := range prev {
		if d.Server == req.Server {
			desired = proto.Clone(d).(*quiltv1.DesiredServer)
		}
	}
	switch req.Op {
	case quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE:
		desired.Enabled = true
	case quiltv1.ServerControlOp_SERVER_CONTROL_OP_DISABLE:
		desired.Enabled = false
		desired.Reconnect = false
	case quiltv1.ServerControlOp_SERVER_CONTROL_OP_RECONNECT:
		desired.Reconnect = true
	}
	delivered := false
	if s != nil {
		msg := &quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Control{Control: &quiltv1.ServerControl{
			Server: req.Server, Op: req.Op, RequestedBy: req.RequestedBy}}}
		delivered = s.send(msg) == nil
	}
	if delivered {
		desired.Reconnect = false
	}
	if err := st.SetDesiredServer(ctx, req.Source, desired); err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: desired state of %s/%s: %v", req.Source, req.Server, err)
	}
	r.m.log.Info("server control", "source", req.Source, "server", req.Server, "op", req.Op.String(),
		"requested_by", req.RequestedBy, "delivered", delivered)
	return &quiltv1.ControlServerResponse{Desired: desired, Delivered: delivered}, nil
}

// SourceReply is one message of a live query answer from one source.
// Either Reply (a part of the source's answer; the last part has Done set)
// or Problem (the source did not answer: reason "detached", "timeout" or
// "error") is set.
type SourceReply struct {
	Source  string
	Reply   *quiltv1.LiveReply
	Problem *quiltv1.SourceProblem
}

// LiveQuery sends q to each named source (nil or empty: every attached
// source) and streams back their answers. Each source ends with exactly one
// final item: a reply with Done set, or a Problem (an unknown or detached
// source gives reason "detached" at once, no answer by perSource gives
// "timeout", a reply with Error set gives "error"). The channel is closed
// once every source has ended, or when ctx ends. perSource 0 means
// Options.SourceTimeout; q.Id is set to a new ULID and q.Deadline to the
// per-source deadline. Receive until the channel closes.
//
// No goroutine per source: each session's reader hands its replies
// straight to the channel, and one timer reports the sources still silent
// at the deadline. A live query is a few goroutine hops per source on the
// critical path, so every hop saved is latency saved.
func (r *Router) LiveQuery(ctx context.Context, sources []string, q *quiltv1.LiveQuery, perSource time.Duration) <-chan SourceReply {
	if len(sources) == 0 {
		sources = r.Attached()
	}
	if perSource <= 0 {
		perSource = r.m.opts.SourceTimeout
	}
	q = proto.Clone(q).(*quiltv1.LiveQuery)
	q.Id = ulid.Make().String()
	deadline := time.Now().Add(perSource)
	q.Deadline = timestamppb.New(deadline)
	lq := &liveQuery{
		id:      q.Id,
		per:     perSource,
		out:     make(chan SourceReply, len(sources)+16),
		pending: make(map[string]*session, len(sources)),
		over:    make(chan struct{}),
	}
	lq.ctx, lq.cancel = context.WithCancel(ctx)
	msg := &quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_LiveQuery{LiveQuery: q}}
	var missing []string
	// Everything is registered under lq.mu, before any question is sent:
	// a reply, a detach or the deadline may come before this is done, and
	// they all wait for the lock.
	lq.mu.Lock()
	for _, name := range sources {
		if _, dup := lq.pending[name]; dup {
			continue
		}
		s := r.get(name)
		lq.pending[name] = s
		if s == nil {
			missing = append(missing, name)
			continue
		}
		lq.asked = append(lq.asked, s)
		s.mu.Lock()
		s.lives[q.Id] = &liveWait{lq: lq, source: s.name}
		s.mu.Unlock()
		lq.stops = append(lq.stops, context.AfterFunc(s.ctx, func() {
			lq.end(s.name, SourceReply{Source: s.name, Problem: &quiltv1.SourceProblem{Source: s.name, Reason: "detached",
				Error: fmt.Sprintf("source %q detached before answering", s.name)}})
		}))
	}
	lq.timer = time.AfterFunc(perSource, lq.timeout)
	lq.stops = append(lq.stops, context.AfterFunc(lq.ctx, lq.finish))
	asked, none := lq.asked, len(lq.pending) == 0
	lq.mu.Unlock()
	if none {
		lq.finish()
		return lq.out
	}
	for _, name := range missing {
		lq.end(name, SourceReply{Source: name, Problem: &quiltv1.SourceProblem{Source: name, Reason: "detached",
			Error: fmt.Sprintf("source %q is not attached", name)}})
	}
	for _, s := range asked {
		lq.ask(s, msg)
	}
	return lq.out
}

// liveQuery is one LiveQuery in flight.
type liveQuery struct {
	id     string
	per    time.Duration
	out    chan SourceReply
	ctx    context.Context // ends when the query finished or its caller's ctx ended
	cancel context.CancelFunc
	over   chan struct{} // closed at the deadline or when the query finished
	once   sync.Once     // closes over

	mu      sync.Mutex
	pending map[string]*session // sources without their final item yet (nil: not attached)
	asked   []*session
	timer   *time.Timer
	stops   []func() bool  // context.AfterFunc registrations
	closed  bool           // out is closed or about to be: nothing more goes in
	sending sync.WaitGroup // sends on out in progress
}

func (lq *liveQuery) setOver() { lq.once.Do(func() { close(lq.over) }) }

// liveWait is one live query waiting on one session.
type liveWait struct {
	lq     *liveQuery
	source string
}

// ask sends the query down s's stream. A stream whose queue is full gets
// it from a goroutine (bounded by the deadline), so one slow source
// manager does not hold up the others' questions.
func (lq *liveQuery) ask(s *session, msg *quiltv1.MasterMessage) {
	select {
	case s.out <- msg:
		return
	default:
	}
	go func() {
		select {
		case s.out <- msg:
		case <-s.ctx.Done():
			// The AfterFunc on s.ctx reports it detached.
		case <-lq.over:
			// Timed out, or the query ended: timeout() reported it.
		}
	}()
}

// emit sends one item for source, ending the source when final. Items of
// sources already ended, or after the query finished, are dropped. It
// blocks until the consumer takes the item or the query is over (its
// deadline, or ctx), so a consumer that stops reading cannot stall a
// session's reader for longer than the deadline. (A source's parts come
// from its session's reader in order; only a detach racing a part can
// put the source's "detached" before that part.)
func (lq *liveQuery) emit(source string, sr SourceReply, final bool) {
	lq.mu.Lock()
	if _, ok := lq.pending[source]; !ok || lq.closed {
		lq.mu.Unlock()
		return
	}
	last := false
	if final {
		delete(lq.pending, source)
		last = len(lq.pending) == 0
	}
	lq.sending.Add(1)
	lq.mu.Unlock()
	select {
	case lq.out <- sr:
	case <-lq.over:
		// Over but room after all? Deliver what fits.
		select {
		case lq.out <- sr:
		default:
		}
	}
	lq.sending.Done()
	if last {
		lq.finish()
	}
}

// end gives source its final item (a problem, or the last reply part).
func (lq *liveQuery) end(source string, sr SourceReply) { lq.emit(source, sr, true) }

// timeout reports every source still silent at the deadline. The problems
// fit in out's buffer (one slot per source) unless the consumer stopped
// reading rows; then they wait for it, or for its ctx to end.
func (lq *liveQuery) timeout() {
	lq.setOver()
	lq.mu.Lock()
	if lq.closed {
		lq.mu.Unlock()
		return
	}
	names := make([]string, 0, len(lq.pending))
	for n := range lq.pending {
		names = append(names, n)
	}
	sort.Strings(names)
	lq.mu.Unlock()
	for _, n := range names {
		lq.mu.Lock()
		_, ok := lq.pending[n]
		if !ok || lq.closed {
			lq.mu.Unlock()
			continue
		}
		delete(lq.pending, n)
		lq.sending.Add(1)
		lq.mu.Unlock()
		select {
		case lq.out <- SourceReply{Source: n, Problem: &quiltv1.SourceProblem{Source: n, Reason: "timeout",
			Error: fmt.Sprintf("source %q did not answer within %s", n, lq.per)}}:
		case <-lq.ctx.Done():
		}
		lq.sending.Done()
	}
	lq.finish()
}

// finish closes out once every send in progress is done, and unregisters
// the query from its sessions. Safe to call more than once.
func (lq *liveQuery) finish() {
	lq.mu.Lock()
	if lq.closed {
		lq.mu.Unlock()
		return
	}
	lq.closed = true
	timer, stops, asked := lq.timer, lq.stops, lq.asked
	lq.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	// Unregistered before out closes: whoever sees the close finds the
	// sessions clean.
	for _, s := range asked {
		s.mu.Lock()
		if w := s.lives[lq.id]; w != nil && w.lq == lq {
			delete(s.lives, lq.id)
		}
		s.mu.Unlock()
	}
	lq.setOver()
	lq.sending.Wait()
	close(lq.out)
	lq.cancel()
	for _, stop := range stops {
		stop()
	}
}

// deliverLive hands a reply part to its waiting query; it blocks at most
// until that query is over (its deadline or its consumer's ctx).
func (s *session) deliverLive(rep *quiltv1.LiveReply) {
	s.mu.Lock()
	w := s.lives[rep.GetQueryId()]
	if w != nil && (rep.Done || rep.Error != "") {
		delete(s.lives, rep.GetQueryId())
	}
	s.mu.Unlock()
	if w == nil {
		return
	}
	if rep.Error != "" {
		w.lq.end(w.source, SourceReply{Source: w.source, Problem: &quiltv1.SourceProblem{Source: w.source, Reason: "error", Error: rep.Error}})
		return
	}
	w.lq.emit(w.source, SourceReply{Source: w.source, Reply: rep}, rep.Done)
}
