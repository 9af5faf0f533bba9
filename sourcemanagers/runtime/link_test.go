package runtime_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"github.com/quilt/quilt/sourcemanagers/testdriver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quilt/quilt/quiltcore/transport/fixture"
	"github.com/quilt/quilt/sourcemanagers/runtime/runtimetest"
	"google.golang.org/grpc/test/bufconn"
)

// fakeQM is a minimal SourceLink server: it records Hellos and batches and
// acks according to its ack policy.
type fakeQM struct {
	quiltv1.UnimplementedSourceLinkServer
	mu      sync.Mutex
	hellos  []*quiltv1.Hello
	batches []*quiltv1.EventBatch // every batch received, replays included
	results []*quiltv1.ActionResult
	replies []*quiltv1.LiveReply
	noAck   bool
	welcome *quiltv1.Welcome
	// welcomeDelay holds the Welcome back, like a busy query master.
	welcomeDelay time.Duration
	streams      chan grpc.BidiStreamingServer[quiltv1.SourceMessage, quiltv1.MasterMessage]
	got          chan struct{} // cap 1, pinged on every message
	discard      bool          // benchmarks: count only
	counted      int
	stopOnce     sync.Once
}

func newFakeQM() *fakeQM {
	return &fakeQM{streams: make(chan grpc.BidiStreamingServer[quiltv1.SourceMessage, quiltv1.MasterMessage], 16), got: make(chan struct{}, 1)}
}

func (q *fakeQM) Attach(st grpc.BidiStreamingServer[quiltv1.SourceMessage, quiltv1.MasterMessage]) error {
	first, err := st.Recv()
	if err != nil {
		return err
	}
	q.mu.Lock()
	q.hellos = append(q.hellos, first.GetHello())
	w := q.welcome
	q.mu.Unlock()
	if w == nil {
		w = &quiltv1.Welcome{MasterId: "fake"}
	}
	time.Sleep(q.welcomeDelay)
	if err := st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Welcome{Welcome: w}}); err != nil {
		return err
	}
	select {
	case q.streams <- st:
	default:
	}
	for {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		q.mu.Lock()
		switch x := m.Msg.(type) {
		case *quiltv1.SourceMessage_Events:
			if q.discard {
				q.counted += len(x.Events.Events)
			} else {
				q.batches = append(q.batches, x.Events)
			}
			if !q.noAck {
				q.mu.Unlock()
				if err := st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Ack{Ack: &quiltv1.Ack{Seq: x.Events.Seq}}}); err != nil {
					return err
				}
				q.mu.Lock()
			}
		case *quiltv1.SourceMessage_ActionResult:
			q.results = append(q.results, x.ActionResult)
		case *quiltv1.SourceMessage_LiveReply:
			q.replies = append(q.replies, x.LiveReply)
		}
		q.mu.Unlock()
		select {
		case q.got <- struct{}{}:
		default:
		}
	}
}

// until polls cond (under q.mu) until it holds.
func (q *fakeQM) until(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		q.mu.Lock()
		ok := cond()
		q.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		select {
		case <-q.got:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// net is a swappable bufconn "network": Restart makes a new server.
type qmNet struct {
	mu  sync.Mutex
	lis *bufconn.Listener
	srv *grpc.Server
	qm  *fakeQM
}

func (n *qmNet) start(qm *fakeQM) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lis = bufconn.Listen(1 << 20)
	n.srv = grpc.NewServer()
	n.qm = qm
	quiltv1.RegisterSourceLinkServer(n.srv, qm)
	go func(s *grpc.Server, l net.Listener) { _ = s.Serve(l) }(n.srv, n.lis)
}

func (n *qmNet) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		n.srv.Stop()
		n.srv = nil
	}
}

func (n *qmNet) dialer(ctx context.Context, _ string) (net.Conn, error) {
	n.mu.Lock()
	lis, srv := n.lis, n.srv
	n.mu.Unlock()
	if srv == nil {
		return nil, fmt.Errorf("query master down")
	}
	return lis.DialContext(ctx)
}

type linkHarness struct {
	m      *runtime.Manager
	net    *qmNet
	cancel context.CancelFunc
	done   chan struct{}
}

func startLinked(t testing.TB, qm *fakeQM, lo runtime.LinkOptions, servers ...config.Server) *linkHarness {
	if len(servers) == 0 {
		servers = []config.Server{{Name: "net", Enabled: true, Channels: []config.Channel{{Name: "#a"}}, Test: &config.TestSettings{Users: 3}}}
	}
	cfg := &config.SourceManager{Name: "sm", Protocol: config.ProtocolTest, Enabled: true, ConnectionCycle: time.Minute, Servers: servers}
	return startLinkedWith(t, qm, cfg, testdriver.Driver{}, lo)
}

func startLinkedWith(t testing.TB, qm *fakeQM, cfg *config.SourceManager, drv runtime.Driver, lo runtime.LinkOptions) *linkHarness {
	n := &qmNet{}
	n.start(qm)
	var logger = testLoggerTB(t)
	m, err := runtime.New(runtime.Options{
		Config: cfg, Drivers: []runtime.Driver{drv},
		Target:      "passthrough:///qm",
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(n.dialer), grpc.WithTransportCredentials(insecure.NewCredentials())},
		Link:        lo, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &linkHarness{m: m, net: n, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(h.done); _ = m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-h.done
		n.stop()
	})
	return h
}

func testLoggerTB(t testing.TB) *slog.Logger {
	if tt, ok := t.(*testing.T); ok {
		return testLogger(tt)
	}
	return slog.New(slog.DiscardHandler)
}

// stream returns the fake QM's current stream.
func (q *fakeQM) stream(t testing.TB) grpc.BidiStreamingServer[quiltv1.SourceMessage, quiltv1.MasterMessage] {
	t.Helper()
	select {
	case s := <-q.streams:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no stream attached")
		return nil
	}
}

func raw(id, text string) *quiltv1.MasterMessage {
	return &quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Action{Action: &quiltv1.Action{
		Id: id, Source: "sm", Server: "net", Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: text}}}
}

// events flattens batches, checking seqs are consecutive from 1.
func eventsOf(t testing.TB, bs []*quiltv1.EventBatch) []*quiltv1.Event {
	t.Helper()
	var out []*quiltv1.Event
	for i, b := range bs {
		if b.Seq != uint64(i+1) {
			t.Fatalf("batch %d has seq %d", i, b.Seq)
		}
		out = append(out, b.Events...)
	}
	return out
}

func TestLinkHelloWelcomeBatchesActionsQueries(t *testing.T) {
	qm := newFakeQM()
	qm.welcome = &quiltv1.Welcome{MasterId: "fake", Desired: []*quiltv1.DesiredServer{{Server: "off", Enabled: false}}}
	h := startLinked(t, qm, runtime.LinkOptions{BatchSize: 10, BatchDelay: time.Millisecond},
		config.Server{Name: "net", Enabled: true, Channels: []config.Channel{{Name: "#a"}}, Test: &config.TestSettings{Users: 3}},
		config.Server{Name: "off", Enabled: true, Test: &config.TestSettings{}})
	st := qm.stream(t)
	qm.mu.Lock()
	hello := qm.hellos[0]
	qm.mu.Unlock()
	if hello.Name != "sm" || hello.Protocol != "test" || hello.InstanceId == "" || len(hello.Servers) != 2 || hello.LastSeq != 0 {
		t.Fatalf("hello %v", hello)
	}
	// CONNECTED, JOIN, MEMBERS arrive; the stored override keeps "off" down.
	qm.until(t, "join events", func() bool {
		return len(qm.batches) > 0 && countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MEMBERS) == 1
	})
	if s := h.m.Server("off").Status(); s.State != quiltv1.ServerState_SERVER_STATE_DISABLED {
		// the override may be applied a moment after Welcome
		qm.until(t, "off disabled", func() bool { return h.m.Server("off").Status().State == quiltv1.ServerState_SERVER_STATE_DISABLED })
	}
	if err := st.Send(raw("a1", "emit 95")); err != nil {
		t.Fatal(err)
	}
	qm.until(t, "95 messages and a result", func() bool {
		return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MESSAGE) == 95 && len(qm.results) == 1
	})
	qm.mu.Lock()
	evs := eventsOf(t, qm.batches)
	for _, b := range qm.batches {
		if len(b.Events) > 10 {
			t.Errorf("batch %d holds %d events > batch_size 10", b.Seq, len(b.Events))
		}
	}
	res := qm.results[0]
	qm.mu.Unlock()
	if !res.Ok || res.ActionId != "a1" {
		t.Fatalf("result %v", res)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.Id] {
			t.Fatalf("duplicate id %s", e.Id)
		}
		seen[e.Id] = true
	}
	// Unknown server → NOT_FOUND result; live query → reply with done.
	_ = st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Action{Action: &quiltv1.Action{Id: "a2", Server: "zz", Kind: quiltv1.ActionKind_ACTION_KIND_SEND}}})
	_ = st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_LiveQuery{LiveQuery: &quiltv1.LiveQuery{Id: "q1", Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS, Channel: "#a"}}})
	qm.until(t, "result and reply", func() bool { return len(qm.results) == 2 && len(qm.replies) == 1 })
	qm.mu.Lock()
	defer qm.mu.Unlock()
	if r := qm.results[1]; r.Ok || r.Code != 5 /* NOT_FOUND */ {
		t.Fatalf("unknown server result %v", r)
	}
	if r := qm.replies[0]; !r.Done || r.QueryId != "q1" || len(r.Members) != 4 {
		t.Fatalf("live reply %v", r)
	}
}

func countKind(bs []*quiltv1.EventBatch, k quiltv1.EventKind) int {
	n := 0
	for _, b := range bs {
		for _, e := range b.Events {
			if e.Kind == k {
				n++
			}
		}
	}
	return n
}

func TestLinkBackPressureNeverDrops(t *testing.T) {
	qm := newFakeQM()
	qm.noAck = true
	h := startLinked(t, qm, runtime.LinkOptions{BufferEvents: 50, BatchSize: 10, BatchDelay: time.Millisecond})
	st := qm.stream(t)
	qm.until(t, "members", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MEMBERS) == 1 })
	if err := st.Send(raw("big", "emit 30")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		_ = st.Send(raw(fmt.Sprint("e", i), "emit 20"))
	}
	// Without acks the buffer fills and the producer blocks.
	time.Sleep(100 * time.Millisecond)
	if p := h.m.Pending(); p > 50 {
		t.Fatalf("buffer holds %d events > 50", p)
	}
	qm.mu.Lock()
	nres := len(qm.results)
	qm.mu.Unlock()
	if nres == 6 {
		t.Fatal("every emit finished although nothing was acknowledged")
	}
	// Ack everything received, repeatedly, until all 130 messages are in.
	qm.mu.Lock()
	qm.noAck = false
	qm.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		qm.mu.Lock()
		var last uint64
		if len(qm.batches) > 0 {
			last = qm.batches[len(qm.batches)-1].Seq
		}
		n := countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MESSAGE)
		qm.mu.Unlock()
		if n == 130 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 130 messages arrived", n)
		}
		_ = st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Ack{Ack: &quiltv1.Ack{Seq: last}}})
		time.Sleep(5 * time.Millisecond)
	}
	qm.mu.Lock()
	evs := eventsOf(t, qm.batches)
	qm.mu.Unlock()
	ids := map[string]bool{}
	for _, e := range evs {
		ids[e.Id] = true
	}
	if len(ids) != len(evs) {
		t.Fatalf("%d events, %d distinct ids", len(evs), len(ids))
	}
}

// setNoAck switches the fake query master's acks off or on.
func (q *fakeQM) setNoAck(v bool) {
	q.mu.Lock()
	q.noAck = v
	q.mu.Unlock()
}

func (q *fakeQM) batchCount() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.batches)
}

// An idle link sends an event at once, whatever BatchDelay; while a batch
// is unacknowledged the next events gather in one batch that goes when the
// ack comes, not before.
func TestLinkNagleBatching(t *testing.T) {
	qm := newFakeQM()
	startLinked(t, qm, runtime.LinkOptions{BatchSize: 1000, BatchDelay: time.Hour})
	st := qm.stream(t)
	qm.until(t, "members", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MEMBERS) == 1 })
	qm.setNoAck(true)
	before := qm.batchCount()
	if err := st.Send(raw("one", "emit 1")); err != nil {
		t.Fatal(err)
	}
	// Far sooner than BatchDelay: the link was idle.
	qm.until(t, "the lone message", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MESSAGE) == 1 })
	qm.mu.Lock()
	lone := qm.batches[len(qm.batches)-1]
	if len(qm.batches) != before+1 || len(lone.Events) != 1 {
		t.Errorf("%d batches after %d, last with %d events; want one more batch with the message alone", len(qm.batches), before, len(lone.Events))
	}
	qm.mu.Unlock()
	for i := 0; i < 3; i++ {
		if err := st.Send(raw(fmt.Sprint("more", i), "emit 5")); err != nil {
			t.Fatal(err)
		}
	}
	qm.until(t, "three action results", func() bool { return len(qm.results) == 4 })
	time.Sleep(50 * time.Millisecond)
	if n := qm.batchCount(); n != before+1 {
		t.Fatalf("%d batches sent while the lone one was unacknowledged; want them held", n-before-1)
	}
	if err := st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Ack{Ack: &quiltv1.Ack{Seq: lone.Seq}}}); err != nil {
		t.Fatal(err)
	}
	qm.until(t, "16 messages", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MESSAGE) == 16 })
	qm.mu.Lock()
	defer qm.mu.Unlock()
	if len(qm.batches) != before+2 || len(qm.batches[before+1].Events) != 15 {
		t.Fatalf("after the ack: %d batches, want the 15 messages in one", len(qm.batches)-before-1)
	}
}

// Without acks, no more than MaxInFlight batches are sent; each ack lets
// as many more go, and nothing is lost or sent twice.
func TestLinkMaxInFlight(t *testing.T) {
	qm := newFakeQM()
	startLinked(t, qm, runtime.LinkOptions{BatchSize: 5, BatchDelay: time.Millisecond, MaxInFlight: 2})
	st := qm.stream(t)
	qm.until(t, "members", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MEMBERS) == 1 })
	qm.setNoAck(true)
	qm.mu.Lock()
	acked := qm.batches[len(qm.batches)-1].Seq
	base := len(qm.batches)
	qm.mu.Unlock()
	if err := st.Send(raw("flood", "emit 40")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		time.Sleep(20 * time.Millisecond)
		qm.mu.Lock()
		n := countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MESSAGE)
		last := qm.batches[len(qm.batches)-1].Seq
		sent := len(qm.batches) - base
		qm.mu.Unlock()
		if last > acked+2 {
			t.Fatalf("batches up to %d sent with %d acknowledged; MaxInFlight is 2", last, acked)
		}
		if n == 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 40 messages arrived in %d batches", n, sent)
		}
		if err := st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Ack{Ack: &quiltv1.Ack{Seq: last}}}); err != nil {
			t.Fatal(err)
		}
		acked = last
	}
	qm.mu.Lock()
	evs := eventsOf(t, qm.batches)
	qm.mu.Unlock()
	ids := map[string]bool{}
	for _, e := range evs {
		if ids[e.Id] {
			t.Fatalf("event %s sent twice", e.Id)
		}
		ids[e.Id] = true
	}
}

func TestLinkReplayAfterDropKeepsSeqs(t *testing.T) {
	qm := newFakeQM()
	qm.noAck = true
	// Every batch goes out unacknowledged here, so the in-flight bound must
	// not hold them back.
	h := startLinked(t, qm, runtime.LinkOptions{BatchSize: 5, BatchDelay: time.Millisecond, MaxInFlight: 100, ReconnectMin: 10 * time.Millisecond})
	st := qm.stream(t)
	// Sessions connect once Welcome is in; an action before that fails.
	qm.until(t, "members", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MEMBERS) == 1 })
	_ = st.Send(raw("e", "emit 40"))
	qm.until(t, "40 messages", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MESSAGE) == 40 })
	qm.mu.Lock()
	first := append([]*quiltv1.EventBatch(nil), qm.batches...)
	qm.mu.Unlock()
	// Ack up to 3, then kill the query master; a new one comes up later.
	_ = st.Send(&quiltv1.MasterMessage{Msg: &quiltv1.MasterMessage_Ack{Ack: &quiltv1.Ack{Seq: 3}}})
	time.Sleep(20 * time.Millisecond)
	h.net.stop()
	time.Sleep(50 * time.Millisecond) // a few failed attempts
	qm2 := newFakeQM()
	h.net.start(qm2)
	qm2.stream(t)
	qm2.until(t, "replay", func() bool {
		return len(qm2.batches) >= len(first)-3
	})
	qm2.mu.Lock()
	defer qm2.mu.Unlock()
	if qm2.hellos[0].LastSeq != first[len(first)-1].Seq || qm2.hellos[0].InstanceId != qm.hellos[0].InstanceId {
		t.Fatalf("hello after reconnect %v (first %v)", qm2.hellos[0], qm.hellos[0])
	}
	for i, b := range qm2.batches[:len(first)-3] {
		want := first[i+3]
		if b.Seq != want.Seq || len(b.Events) != len(want.Events) || b.Events[0].Id != want.Events[0].Id {
			t.Fatalf("replayed batch %d: seq %d (%d events), want seq %d (%d events)", i, b.Seq, len(b.Events), want.Seq, len(want.Events))
		}
	}
}

// An event with invalid UTF-8 cannot be encoded as it is; the link repairs
// it instead of failing every send (and every replay) of its batch.
func TestLinkRepairsInvalidUTF8(t *testing.T) {
	qm := newFakeQM()
	drv := floodDriver{fn: func(ctx context.Context, emit runtime.Emitter) {
		e := model.NewMessage(time.Now(), &quiltv1.User{Transient: "bad\xffnick"}, "#c", "caf\xe9")
		e.Tags = map[string]string{"k\xfe": "v\xfd", "ok": "fine"}
		ok := model.NewMessage(time.Now(), &quiltv1.User{Transient: "alice"}, "#c", "after")
		_ = emit.Emit(ctx, []*quiltv1.Event{e, ok}, nil)
	}}
	cfg := &config.SourceManager{Name: "sm", Protocol: config.ProtocolTest, Enabled: true, ConnectionCycle: time.Minute,
		Servers: []config.Server{{Name: "net", Enabled: true}}}
	startLinkedWith(t, qm, cfg, drv, runtime.LinkOptions{BatchDelay: time.Millisecond})
	qm.stream(t)
	qm.until(t, "both messages", func() bool { return countKind(qm.batches, quiltv1.EventKind_EVENT_KIND_MESSAGE) == 2 })
	qm.mu.Lock()
	defer qm.mu.Unlock()
	var msgs []*quiltv1.Event
	for _, e := range eventsOf(t, qm.batches) {
		if e.Kind == quiltv1.EventKind_EVENT_KIND_MESSAGE {
			msgs = append(msgs, e)
		}
	}
	if got := msgs[0]; got.Text != "caf\uFFFD" || got.User.Transient != "bad\uFFFDnick" ||
		got.Tags["k\uFFFD"] != "v\uFFFD" || got.Tags["ok"] != "fine" || len(got.Tags) != 2 {
		t.Errorf("repaired event: text %q user %q tags %q", got.Text, got.User.Transient, got.Tags)
	}
	if msgs[1].Text != "after" {
		t.Errorf("second event text %q", msgs[1].Text)
	}
}

// A restarted source manager must not open sessions before the query
// master's Welcome has given it the stored cursors: an IMAP or Matrix
// session started without them would skip what arrived while it was down.
func TestSessionsStartFromStoredCursors(t *testing.T) {
	qm := newFakeQM()
	qm.welcome = &quiltv1.Welcome{MasterId: "fake", Cursors: []*quiltv1.Cursor{{Server: "net", Name: "since", Value: "s42"}}}
	qm.welcomeDelay = 300 * time.Millisecond
	drv := runtimetest.NewScriptDriver()
	cfg := &config.SourceManager{Name: "sm", Protocol: runtimetest.ScriptProtocol, Enabled: true, ConnectionCycle: time.Minute,
		Servers: []config.Server{{Name: "net", Enabled: true}}}
	n := &qmNet{}
	n.start(qm)
	m, err := runtime.New(runtime.Options{
		Config: cfg, Drivers: []runtime.Driver{drv}, Dialer: fixture.NewDialer(),
		Target:      "passthrough:///qm",
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(n.dialer), grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger:      testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; n.stop() })
	select {
	case s := <-drv.Sessions:
		if got := s.Config.Cursors["since"]; got != "s42" {
			t.Fatalf("session started with cursors %v, want since=s42 from the Welcome", s.Config.Cursors)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no session started")
	}
}
