package runtime_test

import (
	"context"
	"fmt"
	"log/slog"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/transport/fixture"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"github.com/quilt/quilt/sourcemanagers/runtime/runtimetest"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 5 * time.Second

// rec records what the runtime publishes.
type rec struct {
	mu       sync.Mutex
	events   []*quiltv1.Event
	statuses []*quiltv1.ServerStatus
	ch       chan *quiltv1.Event
}

func newRec() *rec { return &rec{ch: make(chan *quiltv1.Event, 10000)} }

func (r *rec) sink() runtime.TestSink {
	return runtime.TestSink{
		Publish: func(_ context.Context, evs []*quiltv1.Event, _ []*quiltv1.Cursor) error {
			r.mu.Lock()
			r.events = append(r.events, evs...)
			r.mu.Unlock()
			for _, e := range evs {
				r.ch <- e
			}
			return nil
		},
		Status: func(st *quiltv1.ServerStatus) {
			r.mu.Lock()
			r.statuses = append(r.statuses, st)
			r.mu.Unlock()
		},
	}
}

// next waits for the next event of kind k, skipping others.
func (r *rec) next(t *testing.T, k quiltv1.EventKind) *quiltv1.Event {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case e := <-r.ch:
			if e.Kind == k {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s event within %v", k, wait)
		}
	}
}

type harness struct {
	t      *testing.T
	m      *runtime.Manager
	clock  *runtimetest.FakeClock
	dialer *fixture.Dialer
	drv    *runtimetest.ScriptDriver
	rec    *rec
	cancel context.CancelFunc
	done   chan struct{}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func serverCfg(name string, mod func(*config.Server)) config.Server {
	s := config.Server{
		Name: name, Enabled: true,
		ReconnectMin: time.Second, ReconnectMax: 8 * time.Second, ReconnectFactor: 2,
		Channels: []config.Channel{{Name: "#a"}, {Name: "#b", Key: config.NewSecret("k")}},
	}
	if mod != nil {
		mod(&s)
	}
	return s
}

func start(t *testing.T, servers ...config.Server) *harness {
	t.Helper()
	if len(servers) == 0 {
		servers = []config.Server{serverCfg("net", nil)}
	}
	cfg := &config.SourceManager{Name: "sm", Protocol: runtimetest.ScriptProtocol, Enabled: true,
		ConnectionCycle: 120 * time.Second, Servers: servers}
	h := &harness{t: t, clock: runtimetest.NewFakeClock(time.Unix(1_700_000_000, 0)),
		dialer: fixture.NewDialer(), drv: runtimetest.NewScriptDriver(), rec: newRec(), done: make(chan struct{})}
	m, err := runtime.New(runtime.Options{Config: cfg, Drivers: []runtime.Driver{h.drv},
		Clock: h.clock, Dialer: h.dialer, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runtime.SetSink(m, h.rec.sink())
	h.m = m
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { defer close(h.done); _ = m.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(wait):
		h.t.Error("Run did not return")
	}
}

// connect takes the next peer, checks HELLO, welcomes the bot and answers
// the auto-joins.
func (h *harness) connect(server string) *fixture.Peer {
	h.t.Helper()
	p := h.dialer.Peer(h.t)
	p.Expect(h.t, "HELLO "+server)
	p.Send("WELCOME bot")
	h.rec.next(h.t, quiltv1.EventKind_EVENT_KIND_CONNECTED)
	return p
}

func (h *harness) waitState(server string, st quiltv1.ServerState) {
	h.t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if s := h.m.Server(server); s != nil && s.Status().State == st {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	h.t.Fatalf("server %s never reached %s (now %s)", server, st, h.m.Server(server).Status().State)
}

func TestAutoJoinAndUserMap(t *testing.T) {
	h := start(t)
	p := h.connect("net")
	p.Expect(t, "JOIN #a")
	p.Expect(t, "JOIN #b k")
	h.waitState("net", quiltv1.ServerState_SERVER_STATE_CONNECTED)

	p.Send("JOIN bot #a")
	p.Send("MEMBERS #a bot+o alice bob+v")
	p.Send("JOIN bot #b")
	p.Send("JOIN alice #b")
	p.Send("USER alice ~a@host.example Alice alice-acct")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_RAW)

	// The server fills in names the session left out.
	p.Send("MSG alice #a hello")
	msg := h.rec.next(t, quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if msg.User.Persistent != "~a@host.example" || msg.User.Display != "Alice" || msg.User.Group != "alice-acct" {
		t.Fatalf("names not filled in: %v", msg.User)
	}
	if msg.Source != "sm" || msg.Server != "net" || msg.Protocol != "test" || !strings.Contains(msg.Id, ":") {
		t.Fatalf("envelope: %v", msg)
	}
	s := h.m.Server("net")
	if got := s.Members("#a"); fmt.Sprint(got) != "[alice bob bot]" {
		t.Fatalf("#a members %v", got)
	}

	// NICK: re-keyed, channels filled, names kept.
	p.Send("NICK alice alicia")
	nick := h.rec.next(t, quiltv1.EventKind_EVENT_KIND_NICK)
	if fmt.Sprint(nick.Channels) != "[#a #b]" || nick.TargetUser.Persistent != "~a@host.example" {
		t.Fatalf("nick event %v", nick)
	}
	if _, ok := s.User("alice"); ok {
		t.Fatal("old name still tracked")
	}
	if u, ok := s.User("alicia"); !ok || u.Group != "alice-acct" || !u.Tracked {
		t.Fatalf("renamed user %+v %v", u, ok)
	}
	if got := s.Members("#a"); fmt.Sprint(got) != "[alicia bob bot]" {
		t.Fatalf("#a members after nick %v", got)
	}

	// Rename onto a tracked name: the old holder goes.
	p.Send("NICK bob alicia")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_NICK)
	if got := s.Members("#a"); fmt.Sprint(got) != "[alicia bot]" {
		t.Fatalf("#a after conflicting rename %v", got)
	}
	if got := s.Members("#b"); fmt.Sprint(got) != "[bot]" {
		t.Fatalf("#b after conflicting rename %v (old holder must leave every channel)", got)
	}
	if u, _ := s.User("alicia"); u.Persistent != "" {
		t.Fatalf("alicia should now be bob (no persistent name), got %+v", u)
	}

	// MODE and TOPIC, answered by live queries.
	p.Send("MODE bot #a alicia +o")
	p.Send("TOPIC bot #a the topic")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_TOPIC)
	r := h.m.Query(&quiltv1.LiveQuery{Id: "q", Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS, Channel: "#a"})
	if len(r.Members) != 2 || r.Members[0].Member.User.Transient != "alicia" || fmt.Sprint(r.Members[0].Member.Modes) != "[v o]" {
		t.Fatalf("members reply %v", r)
	}
	// operators name channels in their own case, or by a room's alias
	if r := h.m.Query(&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS, Channel: "#A"}); len(r.Members) != 2 || r.Members[0].Channel != "#a" {
		t.Fatalf("members by channel name in another case: %v", r)
	}
	p.Send("ALIAS bot #a #room-a:example.org")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO)
	if r := h.m.Query(&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS, Channel: "#room-a:example.org"}); len(r.Members) != 2 || r.Members[0].Channel != "#a" {
		t.Fatalf("members by canonical alias: %v", r)
	}
	r = h.m.Query(&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_CHANNELS})
	if len(r.Channels) != 2 || r.Channels[0].Info.Topic != "the topic" || r.Channels[0].Info.TopicSetBy != "bot" || r.Channels[0].Info.MemberCount != 2 {
		t.Fatalf("channels reply %v", r)
	}
	r = h.m.Query(&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_PRESENCE, User: "ALI*"})
	if len(r.Presence) != 1 || r.Presence[0].Channel != "#a" || !r.Done {
		t.Fatalf("presence reply %v", r)
	}
	p.Send("PING x")
	p.Expect(t, "PONG x")
	r = h.m.Query(&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS})
	if len(r.Servers) != 1 || r.Servers[0].Status.State != quiltv1.ServerState_SERVER_STATE_CONNECTED ||
		r.Servers[0].Status.Self.GetTransient() != "bot" || r.Servers[0].Status.Channels != 2 || r.Servers[0].Status.Users != 2 ||
		r.Servers[0].Status.Lag.AsDuration() != 5*time.Millisecond {
		t.Fatalf("servers reply %v", r)
	}
	if r := h.m.Query(&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS, Server: "nope"}); r.Error == "" {
		t.Fatal("unknown server in live query: no error")
	}

	// QUIT spans channels; the bot's own KICK clears that channel.
	p.Send("JOIN carol #a")
	p.Send("JOIN carol #b")
	p.Send("QUIT carol bye")
	q := h.rec.next(t, quiltv1.EventKind_EVENT_KIND_QUIT)
	if fmt.Sprint(q.Channels) != "[#a #b]" {
		t.Fatalf("quit channels %v", q.Channels)
	}
	p.Send("KICK op #b bot")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_KICK)
	if got := s.Channels(); fmt.Sprint(got) != "[#a]" {
		t.Fatalf("channels after own kick %v", got)
	}
	p.Send("PART bot #a")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_PART)
	if got := s.Channels(); len(got) != 0 {
		t.Fatalf("channels after own part %v", got)
	}

	// Disconnect clears everything and the cycle reconnects after backoff.
	p.Send("JOIN bot #c")
	p.Send("MEMBERS #c bot dave")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_MEMBERS)
	p.Send("CLOSE going away")
	d := h.rec.next(t, quiltv1.EventKind_EVENT_KIND_DISCONNECTED)
	if d.Text != "going away" {
		t.Fatalf("disconnect reason %q", d.Text)
	}
	if len(s.Channels()) != 0 || s.TrackedUsers() != 0 {
		t.Fatalf("maps not cleared: %v, %d users", s.Channels(), s.TrackedUsers())
	}
	if !h.clock.BlockUntil(2, wait) { // cycle timer + backoff wait
		t.Fatal("no backoff wait after the session died")
	}
	h.clock.Advance(time.Second)
	p2 := h.connect("net")
	p2.Expect(t, "JOIN #a")
}

func TestWeakUserMapLetsUntrackedUsersGo(t *testing.T) {
	h := start(t)
	p := h.connect("net")
	p.Send("JOIN bot #a")
	p.Send("MEMBERS #a bot member")
	p.Send("MSG ghost bot psst")
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_MESSAGE)
	s := h.m.Server("net")
	if _, ok := s.User("ghost"); !ok {
		// Possible only if a GC already ran; the point is below.
		t.Log("ghost already collected")
	}
	h.rec.mu.Lock()
	h.rec.events = nil // the test's record must not matter: events hold copies anyway
	h.rec.mu.Unlock()
	deadline := time.Now().Add(wait)
	for {
		goruntime.GC()
		if _, ok := s.User("ghost"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a user in no channel was kept alive by the user map")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, ok := s.User("member"); !ok {
		t.Fatal("a channel member was collected")
	}
	if n := s.TrackedUsers(); n != 2 {
		t.Fatalf("tracked users %d, want bot and member", n)
	}
}

func act(h *harness, a *quiltv1.Action) chan *quiltv1.ActionResult {
	ch := make(chan *quiltv1.ActionResult, 1)
	h.m.Act(a, func(r *quiltv1.ActionResult) { ch <- r })
	return ch
}

func result(t *testing.T, ch chan *quiltv1.ActionResult) *quiltv1.ActionResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(wait):
		t.Fatal("no action result")
		return nil
	}
}

func send(id, target, text string) *quiltv1.Action {
	return &quiltv1.Action{Id: id, Server: "net", Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: target, Text: text}
}

func TestQueueOrderDelayThrottleFailure(t *testing.T) {
	h := start(t, serverCfg("net", func(s *config.Server) {
		s.Channels = nil
		s.Throttle = time.Second
		s.ThrottleBurst = 2
	}))
	p := h.connect("net")
	h.waitState("net", quiltv1.ServerState_SERVER_STATE_CONNECTED)

	var rs []chan *quiltv1.ActionResult
	for i := 1; i <= 4; i++ {
		rs = append(rs, act(h, send(fmt.Sprint(i), "#a", fmt.Sprint("m", i))))
	}
	rs = append(rs, act(h, send("bad", "fail", "x")))
	rs = append(rs, act(h, send("6", "#a", "after failure")))
	p.Expect(t, "SEND #a m1")
	p.Expect(t, "SEND #a m2")
	p.ExpectNothing(t) // the burst is spent
	for _, want := range []string{"SEND #a m3", "SEND #a m4"} {
		if !h.clock.BlockUntil(2, wait) {
			t.Fatal("queue not waiting on the throttle")
		}
		h.clock.Advance(time.Second)
		p.Expect(t, want)
	}
	// The failing action consumes a throttle slot, fails, and the queue goes on.
	h.clock.BlockUntil(2, wait)
	h.clock.Advance(time.Second)
	bad := result(t, rs[4])
	if bad.Ok || bad.Code != int32(codes.FailedPrecondition) || !strings.Contains(bad.Error, "cannot send") {
		t.Fatalf("failed action result %v", bad)
	}
	h.clock.BlockUntil(2, wait)
	h.clock.Advance(time.Second)
	p.Expect(t, "SEND #a after failure")
	for i, ch := range append(rs[:4:4], rs[5]) {
		if r := result(t, ch); !r.Ok || r.Sent != 1 {
			t.Fatalf("action %d: %v", i, r)
		}
	}

	// Per-action delay.
	h.clock.Advance(10 * time.Second) // refill the burst
	d := send("d", "#a", "delayed")
	d.Delay = durationpb.New(5 * time.Second)
	dr := act(h, d)
	h.clock.BlockUntil(2, wait)
	p.ExpectNothing(t)
	h.clock.Advance(5 * time.Second)
	p.Expect(t, "SEND #a delayed")
	if r := result(t, dr); !r.Ok {
		t.Fatalf("delayed: %v", r)
	}

	// Unknown server and RECONNECT.
	r := result(t, act(h, &quiltv1.Action{Id: "x", Server: "nope", Kind: quiltv1.ActionKind_ACTION_KIND_SEND}))
	if r.Ok || r.Code != int32(codes.NotFound) {
		t.Fatalf("unknown server: %v", r)
	}
}

func TestQueueWorkerStopsWithItsSession(t *testing.T) {
	h := start(t, serverCfg("net", func(s *config.Server) { s.Channels = nil }))
	p := h.connect("net")
	h.waitState("net", quiltv1.ServerState_SERVER_STATE_CONNECTED)
	a := send("1", "#a", "later")
	a.Delay = durationpb.New(time.Hour)
	r1 := act(h, a)
	r2 := act(h, send("2", "#a", "after"))
	h.clock.BlockUntil(2, wait)
	p.Drop(fmt.Errorf("connection reset"))
	for _, ch := range []chan *quiltv1.ActionResult{r1, r2} {
		r := result(t, ch)
		if r.Ok || r.Code != int32(codes.Unavailable) || r.Error != "server reconnecting" {
			t.Fatalf("queued action after session end: %v", r)
		}
	}
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_DISCONNECTED)
	// Nothing from the old queue reaches the next session.
	h.clock.BlockUntil(2, wait)
	h.clock.Advance(time.Second)
	p2 := h.connect("net")
	p2.ExpectNothing(t)
	if r := result(t, act(h, send("3", "#a", "new"))); !r.Ok {
		t.Fatalf("new session action: %v", r)
	}
	p2.Expect(t, "SEND #a new")
}

func TestCycleDisableEnableReconnect(t *testing.T) {
	h := start(t, serverCfg("net", func(s *config.Server) { s.Channels = nil }), serverCfg("off", func(s *config.Server) { s.Enabled = false }))
	p := h.connect("net")
	h.waitState("off", quiltv1.ServerState_SERVER_STATE_DISABLED)

	runtime.Control(h.m, &quiltv1.ServerControl{Server: "net", Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_DISABLE})
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_DISCONNECTED)
	h.waitState("net", quiltv1.ServerState_SERVER_STATE_DISABLED)
	deadline := time.Now().Add(wait)
	for !p.Closed() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !p.Closed() {
		t.Fatal("disabled server's connection still open")
	}
	if st := h.m.Server("net").Status(); st.Enabled || st.LastError != "" {
		t.Fatalf("status after disable %v", st)
	}

	runtime.Control(h.m, &quiltv1.ServerControl{Server: "off", Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE})
	h.connect("off")

	runtime.Control(h.m, &quiltv1.ServerControl{Server: "net", Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE})
	pn := h.connect("net")
	first := h.drv.Sessions
	_ = first
	r := result(t, act(h, &quiltv1.Action{Id: "rc", Server: "net", Kind: quiltv1.ActionKind_ACTION_KIND_RECONNECT}))
	if !r.Ok {
		t.Fatalf("reconnect action %v", r)
	}
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_DISCONNECTED)
	if !pn.Closed() {
		deadline := time.Now().Add(wait)
		for !pn.Closed() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	h.connect("net") // a requested reconnect is not a failure: no backoff
}

func TestDialBackoff(t *testing.T) {
	h := start(t, serverCfg("net", func(s *config.Server) { s.Channels = nil; s.ReconnectAttempts = 0 }))
	_ = h
	// Replace nothing: make the first three attempts fail before Run dials.
	// The dial may already be in flight, so fail a fresh reconnect instead.
	p := h.connect("net")
	h.dialer.FailNext(3, nil)
	p.Drop(fmt.Errorf("reset"))
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_DISCONNECTED)
	// The session died: wait 1s (failures=1) before dialing, then the
	// dialer's own backoff: 1s, 2s, 4s between rounds.
	for _, d := range []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second} {
		if !h.clock.BlockUntil(2, wait) {
			t.Fatalf("not waiting before the %v step", d)
		}
		h.clock.Advance(d - time.Millisecond)
		if got := len(h.dialer.Attempts()); got > 5 {
			t.Fatalf("dialed early: %d attempts", got)
		}
		h.clock.Advance(time.Millisecond)
	}
	h.connect("net")
	if got := len(h.dialer.Attempts()); got != 5 {
		t.Fatalf("attempts %d, want 1 + 3 failed + 1", got)
	}
}

func TestReloadAddsRemovesAndChanges(t *testing.T) {
	h := start(t, serverCfg("net", func(s *config.Server) { s.Channels = nil }))
	h.connect("net")
	cfg := &config.SourceManager{Name: "sm", Protocol: runtimetest.ScriptProtocol, Enabled: true,
		ConnectionCycle: 120 * time.Second, Servers: []config.Server{serverCfg("new", func(s *config.Server) { s.Channels = nil })}}
	if err := h.m.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	h.rec.next(t, quiltv1.EventKind_EVENT_KIND_DISCONNECTED)
	h.connect("new")
	deadline := time.Now().Add(wait)
	for h.m.Server("net") != nil {
		if time.Now().After(deadline) {
			t.Fatal("removed server still listed")
		}
		time.Sleep(time.Millisecond)
	}
	bad := *cfg
	bad.Protocol = "irc"
	if err := h.m.Reload(&bad); err == nil || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("protocol change: %v", err)
	}
}
