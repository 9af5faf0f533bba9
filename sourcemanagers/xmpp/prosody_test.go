package xmpp_test

import (
	"context"
	"crypto/x509"
	"encoding/xml"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/xmpp"
	"mellium.im/sasl"
	"mellium.im/xmlstream"
	mxmpp "mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

const room = "quilt@" + testenv.ProsodyMUC

// peer is a second, independent XMPP client (bob) on the real server.
type peer struct {
	t    testing.TB
	sess *mxmpp.Session
	in   chan string // raw XML of every stanza received
}

func dialPeer(t testing.TB, addr, user, password string) *peer {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	me := jid.MustParse(user + "@" + testenv.ProsodyDomain + "/peer")
	sess, err := mxmpp.NewSession(ctx, me.Domain(), me, conn, mxmpp.Secure, mxmpp.NewNegotiator(func(*mxmpp.Session, *mxmpp.StreamConfig) mxmpp.StreamConfig {
		return mxmpp.StreamConfig{Features: []mxmpp.StreamFeature{mxmpp.SASL("", password, sasl.Plain), mxmpp.BindResource()}}
	}))
	if err != nil {
		t.Fatalf("peer %s: %v", user, err)
	}
	p := &peer{t: t, sess: sess, in: make(chan string, 1000)}
	go func() {
		_ = sess.Serve(mxmpp.HandlerFunc(func(r xmlstream.TokenReadEncoder, start *xml.StartElement) error {
			var b strings.Builder
			e := xml.NewEncoder(&b)
			_ = e.EncodeToken(*start)
			_, _ = xmlstream.Copy(e, r)
			_ = e.Flush()
			p.in <- b.String()
			return nil
		}))
	}()
	t.Cleanup(func() { _ = sess.Close() })
	p.send(`<presence/>`)
	return p
}

func (p *peer) send(s string) {
	p.t.Helper()
	if err := p.sess.Send(context.Background(), xml.NewDecoder(strings.NewReader(s))); err != nil {
		p.t.Fatalf("peer send %s: %v", s, err)
	}
}

// wait returns the first received stanza containing every want string.
func (p *peer) wait(d time.Duration, want ...string) string {
	p.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case s := <-p.in:
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(s, w)
			}
			if ok {
				return s
			}
		case <-timeout:
			p.t.Fatalf("peer: no stanza with %q within %v", want, d)
		}
	}
}

type xcluster struct {
	t  testing.TB
	c  *querytest.Cluster
	st store.Store
}

func (x *xcluster) events(d time.Duration, n int64, f *quiltv1.EventFilter) []*quiltv1.Event {
	x.t.Helper()
	f.Sources = []string{"xmpp"}
	return x.c.Events(d, n, f)
}

func (x *xcluster) act(a *quiltv1.Action) *quiltv1.ActionResult {
	x.t.Helper()
	return x.c.Act("xmpp", "local", a, 40*time.Second)
}

func kinds(k ...quiltv1.EventKind) []quiltv1.EventKind { return k }

// startCluster starts a query master on a SQLite store, with the xmpp
// source manager added from cfg (a format string of the server's host and
// port) and drv.
func startCluster(t *testing.T, srv *testenv.ProsodyServer, cfg string, drv xmpp.Driver) *xcluster {
	t.Helper()
	st, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := querytest.Start(t, querytest.Options{Store: st})
	host, port, _ := strings.Cut(srv.Addr, ":")
	c.AddSourceFile("xmpp", fmt.Sprintf(cfg, host, port), drv)
	return &xcluster{t: t, c: c, st: st}
}

func TestXMPPAgainstProsody(t *testing.T) {
	srv := testenv.Prosody(t, "alice:alicepw", "bob:bobpw")
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(srv.CertPEM) {
		t.Fatal("server certificate not PEM")
	}
	// STARTTLS with the certificate verified (against the test's own root).
	x := startCluster(t, srv, `protocol = xmpp

[server local]
jid = alice@localhost
password = alicepw
host = %s
port = %s
tls = true
nick = quiltbot
channels = `+room+`
reconnect_min = 200ms
reconnect_max = 1s
`, xmpp.Driver{RootCAs: roots})

	conn := x.events(20*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_CONNECTED)})[0]
	if u := conn.User; u.Transient != "alice@localhost/quilt" || u.Persistent != "alice@localhost" || u.Group != "alice@localhost" || !u.Self {
		t.Fatalf("CONNECTED user: %v", u)
	}
	join := x.events(20*time.Second, 1, &quiltv1.EventFilter{Channel: room, Kinds: kinds(quiltv1.EventKind_EVENT_KIND_JOIN)})[0]
	if u := join.User; u.Transient != room+"/quiltbot" || u.Display != "quiltbot" || u.Persistent != "alice@localhost" || !u.Self {
		t.Fatalf("bot JOIN user: %v", u)
	}

	bob := dialPeer(t, srv.Addr, "bob", "bobpw")
	bob.send(`<presence to='` + room + `/bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>`)
	bob.wait(10*time.Second, `code="110"`)
	bj := x.events(10*time.Second, 2, &quiltv1.EventFilter{Channel: room, Kinds: kinds(quiltv1.EventKind_EVENT_KIND_JOIN)})[1]
	if u := bj.User; u.Transient != room+"/bob" || u.Display != "bob" || u.Persistent != "bob@localhost" || u.Group != "bob@localhost" || u.Self {
		t.Fatalf("bob JOIN: four names %v", u)
	}

	bob.send(`<message to='` + room + `' type='groupchat' id='m1'><body>hello from bob</body><origin-id xmlns='urn:xmpp:sid:0' id='bob-o-1'/></message>`)
	m := x.events(10*time.Second, 1, &quiltv1.EventFilter{Text: "hello from bob", Kinds: kinds(quiltv1.EventKind_EVENT_KIND_MESSAGE)})[0]
	if m.User.Transient != room+"/bob" || m.User.Persistent != "bob@localhost" || m.User.Display != "bob" ||
		m.Channel != room || m.Protocol != "xmpp" || m.Server != "local" || m.Id != "oid:"+room+"/bob:bob-o-1" {
		t.Fatalf("message event: %v", m)
	}
	bob.send(`<message to='` + room + `' type='groupchat'><body>/me waves</body></message>`)
	a := x.events(10*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_ACTION)})[0]
	if a.Text != "waves" || a.Id == "" {
		t.Fatalf("action event: %v", a)
	}

	// Acts reach bob: groupchat, private chat, topic.
	if r := x.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: room, Text: "hello humans"}); !r.Ok {
		t.Fatalf("send: %s", r.Error)
	}
	bob.wait(10*time.Second, `from="`+room+`/quiltbot"`, `type="groupchat"`, `>hello humans</body>`)
	if r := x.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "bob@localhost", Text: "a private word"}); !r.Ok {
		t.Fatalf("private send: %s", r.Error)
	}
	bob.wait(10*time.Second, `type="chat"`, `>a private word</body>`)
	if r := x.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_TOPIC, Target: room, Text: "release day"}); !r.Ok {
		t.Fatalf("topic: %s", r.Error)
	}
	bob.wait(10*time.Second, `>release day</subject>`)
	tp := x.events(10*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_TOPIC)})[0]
	if tp.Text != "release day" || tp.User.Transient != room+"/quiltbot" {
		t.Fatalf("topic event: %v", tp)
	}

	// A private message to the bot.
	bob.send(`<message to='alice@localhost' type='chat'><body>psst</body></message>`)
	pm := x.events(10*time.Second, 1, &quiltv1.EventFilter{Text: "psst"})[0]
	if !pm.Private || !strings.HasPrefix(pm.User.Transient, "bob@localhost/") || pm.User.Persistent != "bob@localhost" || pm.User.Display != "bob" {
		t.Fatalf("private message: %v", pm)
	}

	// Nick change, part, rejoin.
	bob.send(`<presence to='` + room + `/bobby'/>`)
	nk := x.events(10*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_NICK)})[0]
	if nk.User.Transient != room+"/bob" || nk.TargetUser.Transient != room+"/bobby" || nk.TargetUser.Display != "bobby" {
		t.Fatalf("nick event: %v", nk)
	}
	bob.send(`<presence to='` + room + `/bobby' type='unavailable'><status>lunch</status></presence>`)
	pt := x.events(10*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_PART)})[0]
	if pt.User.Transient != room+"/bobby" || pt.Text != "lunch" || pt.Channel != room {
		t.Fatalf("part event: %v", pt)
	}
	bob.send(`<presence to='` + room + `/bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>`)
	x.events(10*time.Second, 3, &quiltv1.EventFilter{Channel: room, Kinds: kinds(quiltv1.EventKind_EVENT_KIND_JOIN)})

	// The bot created the room, so it owns it and may kick.
	if r := x.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: room, User: room + "/bob", Text: "testing kicks"}); !r.Ok {
		t.Fatalf("kick: %s", r.Error)
	}
	bob.wait(10*time.Second, `type="unavailable"`, `code="307"`)
	kk := x.events(10*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_KICK)})[0]
	if kk.TargetUser.Transient != room+"/bob" || kk.Text != "testing kicks" || kk.User.Transient != room+"/quiltbot" {
		t.Fatalf("kick event: %v", kk)
	}

	// Refused: a kick of nobody; unsupported: nothing (all kinds map).
	if r := x.act(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: room, User: "nobody", Text: "x"}); r.Ok {
		t.Fatalf("kick of a missing nick succeeded")
	}

	// Restart the server: the client reconnects and joins again.
	srv.Stop()
	x.events(20*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_DISCONNECTED)})
	srv.Start(t)
	x.events(40*time.Second, 2, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_CONNECTED)})
	x.events(20*time.Second, 4, &quiltv1.EventFilter{Channel: room, Kinds: kinds(quiltv1.EventKind_EVENT_KIND_JOIN)})
	bob2 := dialPeer(t, srv.Addr, "bob", "bobpw")
	bob2.send(`<presence to='` + room + `/bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>`)
	bob2.send(`<message to='` + room + `' type='groupchat'><body>after restart</body></message>`)
	x.events(10*time.Second, 1, &quiltv1.EventFilter{Text: "after restart"})
}

// A server that stops answering (hung, or a NAT dropped the connection)
// leaves TCP open: the keepalive ping finds it dead, the client reconnects
// once the server answers again.
func TestXMPPPingFindsDeadServer(t *testing.T) {
	srv := testenv.Prosody(t, "alice:alicepw")
	x := startCluster(t, srv, `protocol = xmpp

[server local]
jid = alice@localhost
password = alicepw
host = %s
port = %s
tls = false
ping_interval = 1s
ping_timeout = 1s
connect_timeout = 2s
reconnect_min = 200ms
reconnect_max = 1s
`, xmpp.Driver{})
	x.events(20*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_CONNECTED)})
	// Answered pings keep the session: no DISCONNECTED over a few.
	time.Sleep(3500 * time.Millisecond)
	if evs := x.events(0, 0, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_DISCONNECTED)}); len(evs) != 0 {
		t.Fatalf("disconnected while the server answered: %v", evs)
	}

	srv.Freeze(t)
	thawed := false
	defer func() {
		if !thawed {
			srv.Thaw(t)
		}
	}()
	d := x.events(15*time.Second, 1, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_DISCONNECTED)})[0]
	if !strings.Contains(d.Text, "no answer to a ping within 1s") {
		t.Fatalf("DISCONNECTED text %q, want the ping timeout", d.Text)
	}
	srv.Thaw(t)
	thawed = true
	x.events(30*time.Second, 2, &quiltv1.EventFilter{Kinds: kinds(quiltv1.EventKind_EVENT_KIND_CONNECTED)})
}
