//go:build unix

package matrix_test

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/matrix"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// qm is an in-process query master over bufconn with an in-memory store
// that drops duplicate (source, event id) pairs like the real stores.
type qm struct {
	st  *qmtest.MemStore
	m   *querymaster.Master
	lis *bufconn.Listener
	cli quiltv1.QueryMasterClient
}

func (q *qm) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return q.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
}

func startQM(t *testing.T) *qm {
	q := &qm{st: qmtest.NewMemStore(), lis: bufconn.Listen(4 << 20)}
	m, err := querymaster.New(querymaster.Options{Store: q.st, Node: "it", Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.WaitForHandlers(true))
	m.Register(srv)
	go srv.Serve(q.lis)
	m.Lead()
	q.m = m
	t.Cleanup(func() { srv.Stop(); m.Shutdown() })
	cc, err := grpc.NewClient("passthrough:///qm", q.dialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	q.cli = quiltv1.NewQueryMasterClient(cc)
	return q
}

// roomEvents are the stored events of room, in store order.
func (q *qm) roomEvents(room string) []*quiltv1.Event {
	var out []*quiltv1.Event
	for _, e := range q.st.Events() {
		if e.Channel == room {
			out = append(out, e)
		}
	}
	return out
}

func (q *qm) find(room string, match func(*quiltv1.Event) bool) *quiltv1.Event {
	for _, e := range q.roomEvents(room) {
		if match(e) {
			return e
		}
	}
	return nil
}

// startSM runs a real source manager (runtime + matrix driver) attached to
// q; the returned function stops it and waits.
func startSM(t *testing.T, q *qm, cfg *config.SourceManager) (*runtime.Manager, func()) {
	m, err := runtime.New(runtime.Options{
		Config: cfg, Drivers: []runtime.Driver{matrix.Driver{}},
		Target: "passthrough:///qm", DialOptions: q.dialOptions(), Node: "it", Logger: logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				t.Error("source manager did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return m, stop
}

func userClient(t *testing.T, d *testenv.DendriteServer, name string) *mautrix.Client {
	a := d.Accounts[name]
	c, err := mautrix.NewClient(d.URL, id.UserID(a.UserID), a.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDendrite runs the driver inside the real runtime, attached to an
// in-process query master, against a real Dendrite with real accounts:
// alice is the bot, bob and carol are people driven over HTTP.
func TestDendrite(t *testing.T) {
	d := testenv.Dendrite(t, "alice", "bob", "carol")
	ctx := context.Background()
	alice, bobID, carolID := d.Accounts["alice"].UserID, d.Accounts["bob"].UserID, d.Accounts["carol"].UserID
	bob, carol := userClient(t, d, "bob"), userClient(t, d, "carol")
	created, err := bob.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", RoomAliasName: "quilt-it",
		Name: "Integration", Topic: "first topic"})
	if err != nil {
		t.Fatal(err)
	}
	room := string(created.RoomID)

	q := startQM(t)
	cfg := &config.SourceManager{Name: "mx", Protocol: config.ProtocolMatrix, Enabled: true, ConnectionCycle: 120 * time.Second,
		Servers: []config.Server{{
			Name: "hs", Enabled: true, ReconnectMin: 100 * time.Millisecond, ReconnectMax: time.Second, ReconnectFactor: 2,
			ConnectTimeout: 10 * time.Second,
			Channels:       []config.Channel{{Name: "#quilt-it:" + testenv.DendriteServerName}},
			Matrix: &config.MatrixSettings{Homeserver: d.URL, UserID: alice, Password: config.NewSecret(d.Accounts["alice"].Password),
				DeviceID: "QUILTBOT", SyncTimeout: 2 * time.Second},
		}}}
	sm, stop := startSM(t, q, cfg)

	members := func(m *runtime.Manager) []string { return m.Server("hs").Members(room) }
	eventually(t, 20*time.Second, "the bot in the room with bob", func() bool {
		return slices.Equal(members(sm), []string{alice, bobID})
	})
	var j *quiltv1.Event
	eventually(t, 10*time.Second, "the bot's JOIN stored", func() bool {
		j = q.find(room, func(e *quiltv1.Event) bool {
			return e.Kind == quiltv1.EventKind_EVENT_KIND_JOIN && e.User.GetTransient() == alice
		})
		return j != nil
	})
	if j.ChannelInfo.GetDisplayName() != "Integration" || j.ChannelInfo.GetTopic() != "first topic" ||
		j.ChannelInfo.GetCanonicalAlias() != "#quilt-it:localhost" || !j.User.GetSelf() || !strings.HasPrefix(j.Id, "$") {
		t.Errorf("the bot's JOIN with RoomInfo: %v", j)
	}

	// A message from bob.
	if _, err := bob.SendText(ctx, created.RoomID, "hello from bob"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "bob's message stored", func() bool {
		return q.find(room, func(e *quiltv1.Event) bool {
			return e.Kind == quiltv1.EventKind_EVENT_KIND_MESSAGE && e.Text == "hello from bob" &&
				e.User.GetTransient() == bobID && e.User.GetDisplay() == "bob" && strings.HasPrefix(e.Id, "$")
		}) != nil
	})

	// carol joins, leaves, joins again and is kicked by bob.
	kinds := func(k quiltv1.EventKind, who string) int {
		n := 0
		for _, e := range q.roomEvents(room) {
			u := e.User.GetTransient()
			if k == quiltv1.EventKind_EVENT_KIND_KICK {
				u = e.TargetUser.GetTransient()
			}
			if e.Kind == k && u == who {
				n++
			}
		}
		return n
	}
	if _, err := carol.JoinRoom(ctx, room, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "carol's JOIN", func() bool {
		return kinds(quiltv1.EventKind_EVENT_KIND_JOIN, carolID) == 1 && slices.Contains(members(sm), carolID)
	})
	if _, err := carol.LeaveRoom(ctx, created.RoomID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "carol's PART", func() bool {
		return kinds(quiltv1.EventKind_EVENT_KIND_PART, carolID) == 1 && !slices.Contains(members(sm), carolID)
	})
	if _, err := carol.JoinRoom(ctx, room, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "carol's second JOIN", func() bool { return slices.Contains(members(sm), carolID) })
	if _, err := bob.KickUser(ctx, created.RoomID, &mautrix.ReqKickUser{UserID: id.UserID(carolID), Reason: "testing kicks"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "carol's KICK", func() bool {
		return kinds(quiltv1.EventKind_EVENT_KIND_KICK, carolID) == 1 && slices.Equal(members(sm), []string{alice, bobID})
	})
	if k := q.find(room, func(e *quiltv1.Event) bool { return e.Kind == quiltv1.EventKind_EVENT_KIND_KICK }); k.User.GetTransient() != bobID || k.Text != "testing kicks" {
		t.Errorf("KICK %v", k)
	}

	// A topic change by bob.
	if _, err := bob.SendStateEvent(ctx, created.RoomID, event.StateTopic, "", &event.TopicEventContent{Topic: "second topic"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the TOPIC", func() bool {
		return q.find(room, func(e *quiltv1.Event) bool {
			return e.Kind == quiltv1.EventKind_EVENT_KIND_TOPIC && e.Text == "second topic" && e.User.GetTransient() == bobID
		}) != nil
	})

	// An action through the query master reaches bob's /sync.
	res, err := q.cli.Act(ctx, &quiltv1.ActRequest{Action: &quiltv1.Action{Source: "mx", Server: "hs",
		Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: room, Text: "hello from quilt", Style: quiltv1.SendStyle_SEND_STYLE_NOTICE}})
	if err != nil || !res.Ok {
		t.Fatalf("Act: %v %v", res, err)
	}
	seen := false
	since := ""
	for deadline := time.Now().Add(10 * time.Second); !seen && time.Now().Before(deadline); {
		resp, err := bob.SyncRequest(ctx, 1000, since, "", false, "")
		if err != nil {
			t.Fatal(err)
		}
		since = resp.NextBatch
		if jr := resp.Rooms.Join[created.RoomID]; jr != nil {
			for _, ev := range jr.Timeline.Events {
				if ev.Sender == id.UserID(alice) && ev.Type == event.EventMessage &&
					strings.Contains(string(ev.Content.VeryRaw), `"hello from quilt"`) && strings.Contains(string(ev.Content.VeryRaw), `"m.notice"`) {
					seen = true
				}
			}
		}
	}
	if !seen {
		t.Error("bob's /sync never showed the bot's notice")
	}
	eventually(t, 10*time.Second, "the bot's own notice stored", func() bool {
		return q.find(room, func(e *quiltv1.Event) bool {
			return e.Kind == quiltv1.EventKind_EVENT_KIND_NOTICE && e.User.GetTransient() == alice && e.User.GetSelf()
		}) != nil
	})

	// Restart the source manager: it resumes from the stored since-token
	// and the room's stored events do not change.
	eventually(t, 10*time.Second, "everything acknowledged", func() bool { return sm.Pending() == 0 })
	time.Sleep(500 * time.Millisecond)
	before := len(q.roomEvents(room))
	curs, _ := q.st.Cursors(ctx, "mx")
	if len(curs) != 1 || curs[0].Server != "hs" || curs[0].Name != matrix.CursorSince || curs[0].Value == "" {
		t.Fatalf("stored cursors %v", curs)
	}
	stop()
	sm2, stop2 := startSM(t, q, cfg)
	eventually(t, 20*time.Second, "members again after the restart", func() bool {
		return slices.Equal(members(sm2), []string{alice, bobID})
	})
	if ci := q.find(room, func(e *quiltv1.Event) bool { return e.Kind == quiltv1.EventKind_EVENT_KIND_TOPIC }); ci == nil {
		t.Error("no TOPIC stored")
	}
	// Let the restarted client sync a few rounds (its long-poll is 2s).
	time.Sleep(3 * time.Second)
	eventually(t, 10*time.Second, "everything acknowledged after the restart", func() bool { return sm2.Pending() == 0 })
	if after := q.roomEvents(room); len(after) != before {
		t.Errorf("restart changed the room's stored events from %d to %d: %v", before, len(after), after[before:])
	}

	// Kick the bot: the room's members are gone from the runtime.
	if _, err := bob.KickUser(ctx, created.RoomID, &mautrix.ReqKickUser{UserID: id.UserID(alice), Reason: "bye bot"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the bot's KICK and an empty room", func() bool {
		return kinds(quiltv1.EventKind_EVENT_KIND_KICK, alice) == 1 && members(sm2) == nil &&
			!slices.Contains(sm2.Server("hs").Channels(), room)
	})
	stop2()

	ids := map[string]bool{}
	for _, e := range q.st.Events() {
		if ids[e.Id] {
			t.Errorf("event %s stored twice", e.Id)
		}
		ids[e.Id] = true
	}
	t.Logf("stored %d events for the room, %d in all", len(q.roomEvents(room)), len(q.st.Events()))
}
