package irc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/irc"
)

const ev = quiltv1.EventKind_EVENT_KIND_MESSAGE

type ircCluster struct {
	t   testing.TB
	srv *testenv.IRCServer
	c   *querytest.Cluster
	st  store.Store
}

// startIRCCluster runs a real ngircd, an in-process query master on the
// SQLite store, and an IRC source manager "irc" with server "local" that
// joins #quilt and #ops.
func startIRCCluster(t testing.TB) *ircCluster {
	return startIRCClusterWith(t, testenv.NGIRCdOptions{}, "100ms")
}

func startIRCClusterWith(t testing.TB, opts testenv.NGIRCdOptions, throttle string) *ircCluster {
	srv := testenv.StartIRCServer(t, opts)
	st, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := querytest.Start(t, querytest.Options{Store: st})
	host, port, _ := strings.Cut(srv.Addr, ":")
	cfgText := fmt.Sprintf(`protocol = irc

[server local]
host = %s
port = %s
tls = false
nick = quiltbot
channels = #quilt, #ops
throttle = %s
throttle_burst = 10
reconnect_min = 200ms
reconnect_max = 1s
ping_interval = 30s
`, host, port, throttle)
	c.AddSourceFile("irc", cfgText, irc.Driver{})
	ic := &ircCluster{t: t, srv: srv, c: c, st: st}
	// the bot is in both channels once its own JOINs are stored
	ic.waitEvents(20*time.Second, 1, &quiltv1.EventFilter{Channel: "#quilt", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_JOIN}})
	ic.waitEvents(20*time.Second, 1, &quiltv1.EventFilter{Channel: "#ops", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_JOIN}})
	return ic
}

func (ic *ircCluster) waitEvents(d time.Duration, n int64, f *quiltv1.EventFilter) []*quiltv1.Event {
	ic.t.Helper()
	f.Sources = []string{"irc"}
	return ic.c.Events(d, n, f)
}

func (ic *ircCluster) act(a *quiltv1.Action) *quiltv1.ActionResult {
	ic.t.Helper()
	res := ic.c.Act("irc", "local", a, 10*time.Second)
	if !res.GetOk() {
		ic.t.Fatalf("act %v failed: %s", a.Kind, res.GetError())
	}
	return res
}

func (ic *ircCluster) members(channel string) map[string]*quiltv1.Member {
	ic.t.Helper()
	out := map[string]*quiltv1.Member{}
	for r := range ic.c.Master().Router().LiveQuery(context.Background(), []string{"irc"},
		&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS, Channel: channel}, 5*time.Second) {
		if r.Problem != nil {
			ic.t.Fatalf("live members: %v", r.Problem)
		}
		for _, m := range r.Reply.GetMembers() {
			out[m.Member.User.Transient] = m.Member
		}
	}
	return out
}

func TestIRCAgainstNGIRCd(t *testing.T) {
	ic := startIRCCluster(t)
	// the query master's view of the source (quiltctl sources) says connected
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := ic.c.Master().ListSources(context.Background(), &quiltv1.ListSourcesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Sources) == 1 && resp.Sources[0].Attached && len(resp.Sources[0].Servers) == 1 &&
			resp.Sources[0].Servers[0].State == quiltv1.ServerState_SERVER_STATE_CONNECTED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ListSources does not show irc/local connected: %v", resp.Sources)
		}
		time.Sleep(50 * time.Millisecond)
	}
	alice := testenv.DialIRC(t, ic.srv.Addr, "alice")
	alice.Join("#quilt")
	bob := testenv.DialIRC(t, ic.srv.Addr, "bob")
	bob.Join("#quilt")
	bob.Join("#ops")
	joins := ic.waitEvents(20*time.Second, 3, &quiltv1.EventFilter{Channel: "#quilt", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_JOIN}})
	if !joins[0].User.Self || joins[1].User.Transient != "alice" || joins[2].User.Transient != "bob" {
		t.Fatalf("joins in order bot, alice, bob: %v", joins)
	}

	alice.Send("PRIVMSG #quilt :hello from alice")
	msgs := ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "hello from alice", Kinds: []quiltv1.EventKind{ev}})
	m := msgs[0]
	if m.User.Transient != "alice" || m.User.Display != "alice" || m.User.Group != "alice" ||
		!strings.HasSuffix(m.User.Persistent, "alice@127.0.0.1") || m.Channel != "#quilt" ||
		m.Protocol != "irc" || m.Server != "local" || m.Id == "" {
		t.Fatalf("message event: %v", m)
	}

	// the member map was filled by NAMES/WHO: hosts known, the bot is op
	mem := ic.members("#quilt")
	if mem["alice"] == nil || mem["bob"] == nil || mem["quiltbot"] == nil {
		t.Fatalf("members of #quilt: %v", mem)
	}
	if !strings.HasSuffix(mem["bob"].User.Persistent, "bob@127.0.0.1") || strings.Join(mem["quiltbot"].Modes, "") != "o" {
		t.Fatalf("member details: bob=%v bot=%v", mem["bob"], mem["quiltbot"])
	}

	bob.Send("NICK bobby")
	nick := ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_NICK}})[0]
	if nick.User.Transient != "bob" || nick.TargetUser.Transient != "bobby" || len(nick.Channels) != 2 {
		t.Fatalf("nick event (want both shared channels): %v", nick)
	}
	if mem = ic.members("#ops"); mem["bobby"] == nil || mem["bob"] != nil {
		t.Fatalf("rename not applied to #ops members: %v", mem)
	}

	// an Act reaches a real client
	ic.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#quilt", Text: "hello humans"})
	alice.Wait(10*time.Second, func(l string) bool { return strings.HasSuffix(l, "PRIVMSG #quilt :hello humans") })
	ic.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "alice", Text: "a private word", Style: quiltv1.SendStyle_SEND_STYLE_NOTICE})
	alice.Wait(10*time.Second, func(l string) bool { return strings.HasSuffix(l, "NOTICE alice :a private word") })

	// a bad action fails with its own code, not a generic one
	bad, err := ic.c.Master().Router().Act(context.Background(), &quiltv1.Action{Source: "irc", Server: "local",
		Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#quilt x", Text: "nope"}, 10*time.Second)
	if err != nil || bad.Ok || codes.Code(bad.Code) != codes.InvalidArgument {
		t.Fatalf("bad target: result %v, err %v; want a failed result with InvalidArgument", bad, err)
	}

	// the bot is channel operator: kick bobby from #quilt
	ic.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: "#quilt", User: "bobby", Text: "testing kicks"})
	bob.Wait(10*time.Second, func(l string) bool { return strings.Contains(l, "KICK #quilt bobby") })
	kick := ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_KICK}})[0]
	if !kick.User.Self || kick.TargetUser.Transient != "bobby" || kick.Text != "testing kicks" {
		t.Fatalf("kick event: %v", kick)
	}

	alice.Send("TOPIC #quilt :release day")
	alice.Send("PART #quilt :lunch")
	part := ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_PART}})[0]
	if part.User.Transient != "alice" || part.Text != "lunch" {
		t.Fatalf("part event: %v", part)
	}
	bob.Send("QUIT :gone home")
	quit := ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_QUIT}})[0]
	if quit.User.Transient != "bobby" || !strings.Contains(quit.Text, "gone home") || len(quit.Channels) != 1 || quit.Channels[0] != "#ops" {
		t.Fatalf("quit event: %v", quit)
	}
	if mem = ic.members("#ops"); mem["bobby"] != nil {
		t.Fatalf("quit user still a member of #ops: %v", mem)
	}
}

func TestIRCReconnectsAfterServerRestart(t *testing.T) {
	ic := startIRCCluster(t)
	alice := testenv.DialIRC(t, ic.srv.Addr, "alice")
	alice.Join("#quilt")
	alice.Send("PRIVMSG #quilt :before the restart")
	ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "before the restart"})

	start := time.Now()
	ic.srv.Stop()
	ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_DISCONNECTED}})
	ic.srv.Start()
	// reconnected (second CONNECTED) and rejoined both channels
	ic.waitEvents(30*time.Second, 2, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_CONNECTED}})
	ic.waitEvents(30*time.Second, 2, &quiltv1.EventFilter{Channel: "#quilt", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_JOIN}})
	ic.waitEvents(30*time.Second, 2, &quiltv1.EventFilter{Channel: "#ops", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_JOIN}})
	t.Logf("reconnected and rejoined %s after the server stopped", time.Since(start).Round(time.Millisecond))

	// the maps were rebuilt, not duplicated: one member entry per nick
	carol := testenv.DialIRC(t, ic.srv.Addr, "carol")
	carol.Join("#quilt")
	carol.Send("PRIVMSG #quilt :after the restart")
	ic.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "after the restart"})
	mem := ic.members("#quilt")
	if len(mem) != 2 || mem["carol"] == nil || mem["quiltbot"] == nil {
		t.Fatalf("members after restart (alice's old session is gone): %v", mem)
	}
	// no duplicate events: the message before the restart is stored once
	if n, _ := ic.st.CountEvents(context.Background(), &quiltv1.EventFilter{Text: "before the restart"}); n != 1 {
		t.Fatalf("message before the restart stored %d times", n)
	}
}

// BenchmarkNGIRCdToStore measures messages per second from a real IRC
// client, through an unthrottled ngircd, the IRC source manager, the link
// and the query master, into the SQLite store (counted when stored).
func BenchmarkNGIRCdToStore(b *testing.B) {
	ic := startIRCClusterWith(b, testenv.NGIRCdOptions{Unthrottled: true}, "0s")
	alice := testenv.DialIRC(b, ic.srv.Addr, "alice")
	alice.Join("#quilt")
	f := &quiltv1.EventFilter{Sources: []string{"irc"}, Channel: "#quilt", Kinds: []quiltv1.EventKind{ev}}
	before, _ := ic.st.CountEvents(context.Background(), f)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		alice.Send(fmt.Sprintf("PRIVMSG #quilt :benchmark line %d with some ordinary chat text", i))
	}
	ic.c.WaitEvents(5*time.Minute, f, before+int64(b.N))
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
