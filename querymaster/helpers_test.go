package querymaster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/store"
)

// testLogger sends logs to t.Log, so they show only when a test fails.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

type env struct {
	t    testing.TB
	m    *querymaster.Master
	st   store.Store
	conn *grpc.ClientConn
	qm   quiltv1.QueryMasterClient
	link quiltv1.SourceLinkClient
}

// newEnv runs a leading master over bufconn.
func newEnv(t testing.TB, o querymaster.Options) *env {
	t.Helper()
	if o.Node == "" {
		o.Node = "test"
	}
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	m, err := querymaster.New(o)
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	// WaitForHandlers: Stop returns only when every handler (and so every
	// log line of a stream's teardown) is done, before the test ends.
	srv := grpc.NewServer(grpc.WaitForHandlers(true))
	m.Register(srv)
	go srv.Serve(lis)
	// Fixed flow-control windows: gRPC otherwise grows them with its
	// bandwidth estimate (up to 16 MiB), and how much a stream holds in
	// flight, which tests of slow subscribers count on, would depend on
	// the machine's speed.
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		m.Shutdown()
		srv.Stop()
	})
	if o.Registrar == nil {
		m.Lead()
	}
	return &env{t: t, m: m, st: o.Store, conn: conn, qm: quiltv1.NewQueryMasterClient(conn), link: quiltv1.NewSourceLinkClient(conn)}
}

// fakeSM is a hand-driven source manager end of an Attach stream.
type fakeSM struct {
	t       testing.TB
	name    string
	stream  quiltv1.SourceLink_AttachClient
	cancel  context.CancelFunc
	welcome *quiltv1.Welcome
	seq     uint64
	n       int
	in      chan *quiltv1.MasterMessage
	end     chan error // the stream's final error (io.EOF → nil status)
}

func servers(names ...string) []*quiltv1.ServerStatus {
	var out []*quiltv1.ServerStatus
	for _, n := range names {
		out = append(out, &quiltv1.ServerStatus{Name: n, State: quiltv1.ServerState_SERVER_STATE_CONNECTED, Enabled: true})
	}
	return out
}

// attach opens a stream and sends Hello; it does not wait for Welcome.
func (e *env) attachRaw(name, instance string, srvs ...string) (*fakeSM, error) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := e.link.Attach(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	sm := &fakeSM{t: e.t, name: name, stream: st, cancel: cancel, in: make(chan *quiltv1.MasterMessage, 1024), end: make(chan error, 1)}
	e.t.Cleanup(cancel)
	err = st.Send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Hello{Hello: &quiltv1.Hello{
		Name: name, Protocol: "test", Version: "t", Node: "node-" + name, InstanceId: instance, Servers: servers(srvs...)}}})
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	// on io.EOF the server already ended the stream: Recv gives its status
	first, err := st.Recv()
	if err != nil {
		return nil, err
	}
	sm.welcome = first.GetWelcome()
	if sm.welcome == nil {
		return nil, fmt.Errorf("first message down is %T, want Welcome", first.Msg)
	}
	go func() {
		for {
			msg, err := st.Recv()
			if err != nil {
				sm.end <- err
				close(sm.in)
				return
			}
			sm.in <- msg
		}
	}()
	return sm, nil
}

func (e *env) attach(name string, srvs ...string) *fakeSM {
	e.t.Helper()
	sm, err := e.attachRaw(name, name+"-instance", srvs...)
	if err != nil {
		e.t.Fatalf("attach %s: %v", name, err)
	}
	return sm
}

var evTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// ev builds a message event; the id counts per fake SM.
func (sm *fakeSM) ev(server, channel, user, text string) *quiltv1.Event {
	sm.n++
	return &quiltv1.Event{
		Id: fmt.Sprintf("%s-%d", sm.name, sm.n), Server: server, Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE,
		Time: timestamppb.New(evTime.Add(time.Duration(sm.n) * time.Millisecond)), Channel: channel,
		User: &quiltv1.User{Transient: user}, Text: text,
	}
}

func (sm *fakeSM) sendBatch(events ...*quiltv1.Event) uint64 {
	sm.t.Helper()
	sm.seq++
	err := sm.stream.Send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Events{Events: &quiltv1.EventBatch{Seq: sm.seq, Events: events}}})
	if err != nil {
		sm.t.Fatalf("send batch: %v", err)
	}
	return sm.seq
}

func (sm *fakeSM) send(msg *quiltv1.SourceMessage) {
	sm.t.Helper()
	if err := sm.stream.Send(msg); err != nil {
		sm.t.Fatalf("send: %v", err)
	}
}

// next returns the next non-heartbeat message down, failing after d.
func (sm *fakeSM) next(d time.Duration) *quiltv1.MasterMessage {
	sm.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case msg, ok := <-sm.in:
			if !ok {
				sm.t.Fatalf("%s: stream ended: %v", sm.name, <-sm.end)
			}
			if msg.GetHeartbeat() != nil {
				continue
			}
			return msg
		case <-timer.C:
			sm.t.Fatalf("%s: nothing down the stream within %s", sm.name, d)
		}
	}
}

// waitAck waits until an ack covers seq and returns the acks summed.
func (sm *fakeSM) waitAck(seq uint64) (stored, dups uint32) {
	sm.t.Helper()
	for {
		msg := sm.next(5 * time.Second)
		if a := msg.GetAck(); a != nil {
			stored += a.Stored
			dups += a.Duplicates
			if a.Seq >= seq {
				return
			}
		}
	}
}

// waitEnd waits for the stream to end and returns its status.
func (sm *fakeSM) waitEnd(d time.Duration) *status.Status {
	sm.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-sm.in:
			if !ok {
				return status.Convert(<-sm.end)
			}
		case <-timer.C:
			sm.t.Fatalf("%s: stream still open after %s", sm.name, d)
		}
	}
}

func wantCode(t testing.TB, err error, code codes.Code, contains string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("got %v (%q), want %v", st.Code(), st.Message(), code)
	}
	if contains != "" && !containsFold(st.Message(), contains) {
		t.Fatalf("message %q does not contain %q", st.Message(), contains)
	}
}

func containsFold(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (indexFold(s, sub) >= 0))
}

func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// fakeRegistrar records registrations and hands out a lock tests can break.
type fakeRegistrar struct {
	mu     sync.Mutex
	live   map[string]registrar.Registration
	passes map[string]int
	locks  chan *fakeLock
	leader registrar.Leader
}

func newFakeRegistrar() *fakeRegistrar {
	return &fakeRegistrar{live: map[string]registrar.Registration{}, passes: map[string]int{}, locks: make(chan *fakeLock, 4)}
}

type fakeReg struct {
	r  *fakeRegistrar
	id string
}

func (h fakeReg) ID() string { return h.id }
func (h fakeReg) Pass(ctx context.Context) error {
	h.r.mu.Lock()
	h.r.passes[h.id]++
	h.r.mu.Unlock()
	return nil
}
func (h fakeReg) Deregister(ctx context.Context) error {
	h.r.mu.Lock()
	delete(h.r.live, h.id)
	h.r.mu.Unlock()
	return nil
}

func (r *fakeRegistrar) Register(ctx context.Context, reg registrar.Registration) (registrar.Registered, error) {
	r.mu.Lock()
	r.live[reg.ID] = reg
	r.mu.Unlock()
	return fakeReg{r, reg.ID}, nil
}

func (r *fakeRegistrar) get(id string) (registrar.Registration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, ok := r.live[id]
	return g, ok
}

func (r *fakeRegistrar) Discover(ctx context.Context, service string, passingOnly bool) ([]registrar.Instance, error) {
	return nil, nil
}
func (r *fakeRegistrar) Watch(ctx context.Context, service string, passingOnly bool) <-chan []registrar.Instance {
	return nil
}

type fakeLock struct {
	lost chan struct{}
	once sync.Once
}

func (l *fakeLock) Lost() <-chan struct{} { return l.lost }
func (l *fakeLock) Release(ctx context.Context) error {
	l.once.Do(func() { close(l.lost) })
	return nil
}

// Lock grants the lock whenever a test pushed one into r.locks.
func (r *fakeRegistrar) Lock(ctx context.Context, key, holderID, address string) (registrar.Lock, error) {
	select {
	case l := <-r.locks:
		r.mu.Lock()
		r.leader = registrar.Leader{ID: holderID, Address: address}
		r.mu.Unlock()
		return l, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
func (r *fakeRegistrar) Leader(ctx context.Context, key string) (registrar.Leader, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.leader.ID == "" {
		return registrar.Leader{}, registrar.ErrNotFound
	}
	return r.leader, nil
}
func (r *fakeRegistrar) setLeader(l registrar.Leader) {
	r.mu.Lock()
	r.leader = l
	r.mu.Unlock()
}
func (r *fakeRegistrar) KVGet(ctx context.Context, key string) ([]byte, error) {
	return nil, registrar.ErrNotFound
}
func (r *fakeRegistrar) KVPut(ctx context.Context, key string, value []byte) error { return nil }
func (r *fakeRegistrar) Close() error                                              { return nil }

// eventually polls cond for up to 5 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
