package bzflag_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/bzflag"
)

const (
	kChat      = quiltv1.EventKind_EVENT_KIND_GAME_CHAT
	kJoin      = quiltv1.EventKind_EVENT_KIND_JOIN
	kPart      = quiltv1.EventKind_EVENT_KIND_PART
	kConnected = quiltv1.EventKind_EVENT_KIND_CONNECTED
)

type bzCluster struct {
	t   testing.TB
	srv *testenv.BZFSServer
	c   *querytest.Cluster
	st  store.Store
}

// startBZCluster runs a real bzfs, an in-process query master on the
// SQLite store and a bzflag source manager "bz" whose server "local" joins
// as observer "quiltbot".
func startBZCluster(t testing.TB) *bzCluster {
	srv := testenv.StartBZFS(t)
	st, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := querytest.Start(t, querytest.Options{Store: st})
	host, port, _ := strings.Cut(srv.Addr, ":")
	c.AddSourceFile("bz", fmt.Sprintf(`protocol = bzflag

[server local]
host = %s
port = %s
callsign = quiltbot
team = observer
motto = quilt test bot
reconnect_min = 200ms
reconnect_max = 1s
`, host, port), bzflag.Driver{})
	bc := &bzCluster{t: t, srv: srv, c: c, st: st}
	bc.waitEvents(20*time.Second, 1, &quiltv1.EventFilter{Channel: bzflag.GameChannel, Kinds: []quiltv1.EventKind{kJoin}})
	return bc
}

func (bc *bzCluster) waitEvents(d time.Duration, n int64, f *quiltv1.EventFilter) []*quiltv1.Event {
	bc.t.Helper()
	f.Sources = []string{"bz"}
	return bc.c.Events(d, n, f)
}

func (bc *bzCluster) act(a *quiltv1.Action) *quiltv1.ActionResult {
	bc.t.Helper()
	return bc.c.Act("bz", "local", a, 10*time.Second)
}

func (bc *bzCluster) members() map[string]*quiltv1.Member {
	bc.t.Helper()
	out := map[string]*quiltv1.Member{}
	for r := range bc.c.Master().Router().LiveQuery(context.Background(), []string{"bz"},
		&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS, Channel: bzflag.GameChannel}, 5*time.Second) {
		if r.Problem != nil {
			bc.t.Fatalf("live members: %v", r.Problem)
		}
		for _, m := range r.Reply.GetMembers() {
			out[m.Member.User.Transient] = m.Member
		}
	}
	return out
}

func fourNames(u *quiltv1.User, callsign string) bool {
	return u.GetTransient() == callsign && u.GetPersistent() == callsign && u.GetDisplay() == callsign && u.GetGroup() == callsign
}

func isChat(from, text string) func(*quiltv1.Event) bool {
	return func(e *quiltv1.Event) bool {
		return e.Kind == kChat && e.User.GetTransient() == from && e.Text == text
	}
}

func TestBZFlagAgainstBZFS(t *testing.T) {
	bc := startBZCluster(t)
	self := bc.waitEvents(5*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{kConnected}})[0]
	if !self.User.Self || !fourNames(self.User, "quiltbot") || self.Protocol != "bzflag" || self.Server != "local" {
		t.Fatalf("connected event: %v", self)
	}

	alice := dialGame(t, bc.srv.Addr, "alice")
	bob := dialGame(t, bc.srv.Addr, "bob")
	joins := bc.waitEvents(20*time.Second, 3, &quiltv1.EventFilter{Channel: bzflag.GameChannel, Kinds: []quiltv1.EventKind{kJoin}})
	if !joins[0].User.Self || !fourNames(joins[1].User, "alice") || !fourNames(joins[2].User, "bob") {
		t.Fatalf("joins in order bot, alice, bob: %v", joins)
	}
	mem := bc.members()
	if len(mem) != 3 || mem["quiltbot"] == nil || mem["alice"] == nil || mem["bob"] == nil {
		t.Fatalf("members of game: %v", mem)
	}
	if len(mem["alice"].Modes) != 0 || joins[1].Tags["team"] != "observer" {
		t.Fatalf("alice, an unregistered observer: member %v, join %v", mem["alice"], joins[1])
	}

	// chat to everybody, to the bot, to a team
	alice.Say(bzflag.GameChannel, "hello from alice")
	m := bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "hello from alice", Kinds: []quiltv1.EventKind{kChat}})[0]
	if !fourNames(m.User, "alice") || m.Channel != bzflag.GameChannel || m.Private || m.Protocol != "bzflag" || m.Id == "" {
		t.Fatalf("chat event: %v", m)
	}
	alice.Say("quiltbot", "psst, bot")
	m = bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "psst, bot"})[0]
	if !m.Private || m.Channel != "" || !fourNames(m.User, "alice") || !m.TargetUser.GetSelf() {
		t.Fatalf("private chat event: %v", m)
	}
	bob.Say("team:observer", "observers only")
	m = bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "observers only"})[0]
	if m.Channel != "team:observer" || !fourNames(m.User, "bob") {
		t.Fatalf("team chat event: %v", m)
	}

	// actions reach a real client
	if res := bc.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: bzflag.GameChannel, Text: "hello players"}); !res.Ok {
		t.Fatalf("send to game: %v", res)
	}
	alice.Wait(10*time.Second, isChat("quiltbot", "hello players"))
	if res := bc.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "alice", Text: "just for you"}); !res.Ok {
		t.Fatalf("private send: %v", res)
	}
	e := alice.Wait(10*time.Second, isChat("quiltbot", "just for you"))
	if !e.Private {
		t.Fatalf("alice got the private message as %v", e)
	}
	if res := bc.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: bzflag.GameChannel, Text: "waves", Style: quiltv1.SendStyle_SEND_STYLE_EMOTE}); !res.Ok {
		t.Fatalf("emote: %v", res)
	}
	e = alice.Wait(10*time.Second, func(e *quiltv1.Event) bool { return e.Kind == kChat && strings.Contains(e.Text, "waves") })
	if e.Tags["type"] != "action" || e.User.GetTransient() != "quiltbot" {
		t.Fatalf("emote arrived as %v", e)
	}
	// a message that looks like a command is said, not run
	if res := bc.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: bzflag.GameChannel, Text: "/help is not a command here"}); !res.Ok {
		t.Fatalf("send slash text: %v", res)
	}
	bob.Wait(10*time.Second, isChat("quiltbot", "/help is not a command here"))
	// the bot's own messages are stored once, from bzfs's echo
	if n, _ := bc.st.CountEvents(context.Background(), &quiltv1.EventFilter{Text: "hello players"}); n != 1 {
		t.Fatalf("own message stored %d times", n)
	}
	// a server command through RAW: bzfs answers privately as SERVER
	if res := bc.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "/uptime"}); !res.Ok {
		t.Fatalf("raw: %v", res)
	}
	n := bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{User: "SERVER", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_NOTICE}})
	if len(n) == 0 {
		t.Fatal("no server notice")
	}
	res := bc.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "nobody-here", Text: "x"})
	if res.Ok || !strings.Contains(res.Error, "nobody-here") {
		t.Fatalf("send to an absent callsign: %v", res)
	}

	bob.Close()
	part := bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{kPart}})[0]
	if !fourNames(part.User, "bob") || part.Channel != bzflag.GameChannel {
		t.Fatalf("part event: %v", part)
	}
	if mem = bc.members(); len(mem) != 2 || mem["bob"] != nil {
		t.Fatalf("members after bob left: %v", mem)
	}
}

func TestBZFlagReconnectsAfterServerRestart(t *testing.T) {
	bc := startBZCluster(t)
	alice := dialGame(t, bc.srv.Addr, "alice")
	alice.Say(bzflag.GameChannel, "before the restart")
	bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "before the restart"})

	start := time.Now()
	bc.srv.Stop()
	bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_DISCONNECTED}})
	bc.srv.Start()
	bc.waitEvents(30*time.Second, 2, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{kConnected}})
	t.Logf("back in the game %s after the server stopped", time.Since(start).Round(time.Millisecond))

	carol := dialGame(t, bc.srv.Addr, "carol")
	carol.Say(bzflag.GameChannel, "after the restart")
	m := bc.waitEvents(10*time.Second, 1, &quiltv1.EventFilter{Text: "after the restart"})[0]
	if !fourNames(m.User, "carol") {
		t.Fatalf("chat after restart: %v", m)
	}
	// the member map was rebuilt from the new server, not merged with the old
	mem := bc.members()
	if len(mem) != 2 || mem["carol"] == nil || mem["quiltbot"] == nil {
		t.Fatalf("members after restart (alice's old session is gone): %v", mem)
	}
	if n, _ := bc.st.CountEvents(context.Background(), &quiltv1.EventFilter{Text: "before the restart"}); n != 1 {
		t.Fatalf("message before the restart stored %d times", n)
	}
}
