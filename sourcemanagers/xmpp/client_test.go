package xmpp

import (
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/transport/fixture"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"google.golang.org/grpc/codes"
)

// fakeServer scripts the server side of a c2s stream over the fixture
// peer: no socket, no real server.
type fakeServer struct {
	t *testing.T
	c net.Conn
	d *xml.Decoder
}

// el is any element read from the client, with its attributes and inner XML.
type el struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Inner   string     `xml:",innerxml"`
}

func (e *el) attr(name string) string {
	for _, a := range e.Attrs {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

func (s *fakeServer) write(x string) {
	s.t.Helper()
	if _, err := s.c.Write([]byte(x)); err != nil {
		s.t.Fatalf("fake server write: %v", err)
	}
}

// read returns the next top-level element (a stream header is returned
// without its content, which never ends).
func (s *fakeServer) read() *el {
	s.t.Helper()
	_ = s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		tok, err := s.d.Token()
		if err != nil {
			s.t.Fatalf("fake server read: %v", err)
		}
		if st, ok := tok.(xml.StartElement); ok {
			if st.Name.Local == "stream" {
				return &el{XMLName: st.Name, Attrs: st.Attr}
			}
			e := &el{}
			if err := s.d.DecodeElement(e, &st); err != nil {
				s.t.Fatalf("fake server decode: %v", err)
			}
			return e
		}
	}
}

const header = `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='example' id='s1' version='1.0'>`

// handshake runs stream, SASL PLAIN and bind, then reads the initial
// presence.
func (s *fakeServer) handshake(wantResource string) {
	s.t.Helper()
	if h := s.read(); h.XMLName.Local != "stream" || h.attr("to") != "example" {
		s.t.Fatalf("stream header %+v", h)
	}
	s.write(header + `<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>`)
	auth := s.read()
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(auth.Inner))
	if auth.XMLName.Local != "auth" || auth.attr("mechanism") != "PLAIN" || string(raw) != "\x00bot\x00s3cret" {
		s.t.Fatalf("auth %+v (%q)", auth, raw)
	}
	s.write(`<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>`)
	if h := s.read(); h.XMLName.Local != "stream" {
		s.t.Fatalf("restart %+v", h)
	}
	s.write(header +
		`<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>`)
	iq := s.read()
	if iq.attr("type") != "set" || !strings.Contains(iq.Inner, "<resource>"+wantResource+"</resource>") {
		s.t.Fatalf("bind %+v", iq)
	}
	s.write(`<iq type='result' id='` + iq.attr("id") + `'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>bot@example/` + wantResource + `</jid></bind></iq>`)
	if p := s.read(); p.XMLName.Local != "presence" || p.attr("to") != "" {
		s.t.Fatalf("initial presence %+v", p)
	}
}

type recEmitter struct {
	mu  sync.Mutex
	evs []*quiltv1.Event
	ch  chan struct{}
}

func (r *recEmitter) Emit(_ context.Context, evs []*quiltv1.Event, _ []*quiltv1.Cursor) error {
	r.mu.Lock()
	r.evs = append(r.evs, evs...)
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
	return nil
}

func (r *recEmitter) wait(t *testing.T, n int) []*quiltv1.Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		if len(r.evs) >= n {
			out := append([]*quiltv1.Event(nil), r.evs...)
			r.mu.Unlock()
			return out
		}
		r.mu.Unlock()
		select {
		case <-r.ch:
		case <-deadline:
			t.Fatalf("want %d events, have %v", n, r.evs)
		}
	}
}

func testServer(tls bool) *config.Server {
	return &config.Server{Name: "fake", ConnectTimeout: 5 * time.Second, XMPP: &config.XMPPSettings{
		JID: "bot@example", Password: config.NewSecret("s3cret"), Host: "xmpp.example", Port: 5222,
		TLS: tls, TLSVerify: true, Nick: "bot", Resource: "quilt",
	}}
}

type started struct {
	c    *Client
	srv  *fakeServer
	emit *recEmitter
	self chan *quiltv1.User
	done chan error
	stop context.CancelFunc
}

func start(t *testing.T) *started {
	t.Helper()
	d := fixture.NewDialer()
	c, err := NewClient(runtime.SessionConfig{Server: testServer(false)}, runtime.ClientDeps{Dialer: d}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.JoinTimeout = 2 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{c: c, emit: &recEmitter{ch: make(chan struct{}, 1)}, self: make(chan *quiltv1.User, 1), done: make(chan error, 1), stop: cancel}
	go func() { s.done <- c.Run(ctx, s.emit, func(u *quiltv1.User) { s.self <- u }) }()
	p := d.Peer(t)
	if got := d.Attempts(); len(got) != 1 || got[0] != "xmpp.example:5222" {
		t.Fatalf("dialed %v", got)
	}
	nc := p.NetConn()
	s.srv = &fakeServer{t: t, c: nc, d: xml.NewDecoder(nc)}
	s.srv.handshake("quilt")
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return s
}

func (s *started) do(t *testing.T, a *quiltv1.Action) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.c.Do(ctx, a)
}

func TestClientSession(t *testing.T) {
	s := start(t)
	u := <-s.self
	if u.Transient != "bot@example/quilt" || u.Persistent != "bot@example" || u.Group != "bot@example" || u.Display != "bot" || !u.Self {
		t.Fatalf("CONNECTED user %v", u)
	}

	// JOIN waits for the room's answer.
	joined := make(chan error, 1)
	go func() {
		_, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: testRoom, Key: "pw"})
		joined <- err
	}()
	j := s.srv.read()
	if j.XMLName.Local != "presence" || j.attr("to") != testRoom+"/bot" || !strings.Contains(j.Inner, "<password>pw</password>") || !strings.Contains(j.Inner, `maxstanzas="0"`) {
		t.Fatalf("join presence %+v", j)
	}
	select {
	case err := <-joined:
		t.Fatalf("JOIN returned before the room answered: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	s.srv.write(occ("bot", "bot@example/quilt", "owner", "moderator", "110"))
	if err := <-joined; err != nil {
		t.Fatalf("join: %v", err)
	}
	evs := s.emit.wait(t, 2)
	if evs[0].Kind != quiltv1.EventKind_EVENT_KIND_JOIN || evs[1].Kind != quiltv1.EventKind_EVENT_KIND_MEMBERS {
		t.Fatalf("events %v", evs)
	}
	if n, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: testRoom}); n != 0 || err != nil {
		t.Fatalf("second join: %d %v", n, err)
	}

	// SEND to the room: groupchat with an origin-id; emote; private via the room.
	if n, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: testRoom, Text: "hi <all> & co"}); n != 1 || err != nil {
		t.Fatalf("send: %d %v", n, err)
	}
	m := s.srv.read()
	if m.attr("type") != "groupchat" || m.attr("to") != testRoom || !strings.Contains(m.Inner, "hi &lt;all&gt; &amp; co</body>") || !strings.Contains(m.Inner, "origin-id") {
		t.Fatalf("groupchat %+v", m)
	}
	_, _ = s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: testRoom + "/carol", Text: "waves", Style: quiltv1.SendStyle_SEND_STYLE_EMOTE})
	m = s.srv.read()
	if m.attr("type") != "chat" || m.attr("to") != testRoom+"/carol" || !strings.Contains(m.Inner, "/me waves</body>") {
		t.Fatalf("private emote %+v", m)
	}
	_, _ = s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "frank@example", Text: "yo", Style: quiltv1.SendStyle_SEND_STYLE_NOTICE})
	if m = s.srv.read(); m.attr("type") != "chat" || m.attr("to") != "frank@example" {
		t.Fatalf("chat %+v", m)
	}
	_, _ = s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_TOPIC, Target: testRoom, Text: "news"})
	if m = s.srv.read(); m.attr("type") != "groupchat" || !strings.Contains(m.Inner, "news</subject>") {
		t.Fatalf("topic %+v", m)
	}

	// KICK: an IQ to the room; the answer decides the result.
	kicked := make(chan error, 1)
	go func() {
		_, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: testRoom, User: testRoom + "/carol", Text: "bye"})
		kicked <- err
	}()
	iq := s.srv.read()
	if iq.attr("type") != "set" || iq.attr("to") != testRoom || !strings.Contains(iq.Inner, `nick="carol"`) || !strings.Contains(iq.Inner, `role="none"`) || !strings.Contains(iq.Inner, "bye</reason>") {
		t.Fatalf("kick iq %+v", iq)
	}
	s.srv.write(`<iq type='error' id='` + iq.attr("id") + `' from='` + testRoom + `'><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>`)
	var ae *ActionError
	if err := <-kicked; !errors.As(err, &ae) || ae.Code() != codes.PermissionDenied || !strings.Contains(err.Error(), "not-allowed") {
		t.Fatalf("refused kick: %v", err)
	}

	// RAW: one stanza, checked before anything is written.
	for _, bad := range []string{"", "<foo/>", "<message>", "<message/><message/>", "text"} {
		if _, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: bad}); !errors.As(err, &ae) || ae.Code() != codes.InvalidArgument {
			t.Fatalf("raw %q: %v", bad, err)
		}
	}
	if n, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: `<message to='x@example' type='chat'><body>raw</body></message>`}); n != 1 || err != nil {
		t.Fatalf("raw: %d %v", n, err)
	}
	if m = s.srv.read(); m.attr("to") != "x@example" || !strings.Contains(m.Inner, "raw</body>") {
		t.Fatalf("raw stanza %+v", m)
	}

	// Errors that send nothing.
	for _, a := range []*quiltv1.Action{
		{Kind: quiltv1.ActionKind_ACTION_KIND_UNSPECIFIED},
		{Kind: quiltv1.ActionKind_ACTION_KIND_PART, Target: "other@muc.example"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "not a jid"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: testRoom, Text: ""},
		{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: testRoom, User: "other@muc.example/x"},
	} {
		if _, err := s.do(t, a); !errors.As(err, &ae) {
			t.Fatalf("%v: want an ActionError, got %v", a, err)
		}
	}
	if _, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_UNSPECIFIED}); !errors.As(err, &ae) || ae.Code() != codes.Unimplemented {
		t.Fatalf("unsupported kind: %v", err)
	}

	// The server pings; the client answers.
	s.srv.write(`<iq type='get' id='p1' from='example'><ping xmlns='urn:xmpp:ping'/></iq>`)
	if r := s.srv.read(); r.XMLName.Local != "iq" || r.attr("type") != "result" || r.attr("id") != "p1" {
		t.Fatalf("ping answer %+v", r)
	}

	// PART sends unavailable presence with the reason.
	if n, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_PART, Target: testRoom, Text: "later"}); n != 1 || err != nil {
		t.Fatalf("part: %d %v", n, err)
	}
	if p := s.srv.read(); p.attr("type") != "unavailable" || p.attr("to") != testRoom+"/bot" || !strings.Contains(p.Inner, "later</status>") {
		t.Fatalf("part presence %+v", p)
	}

	// A groupchat message becomes an event with the origin-id.
	s.srv.write(`<message from='` + testRoom + `/carol' type='groupchat'><body>hello</body><origin-id xmlns='urn:xmpp:sid:0' id='o9'/></message>`)
	evs = s.emit.wait(t, 3)
	if e := evs[2]; e.Kind != quiltv1.EventKind_EVENT_KIND_MESSAGE || e.Id != "oid:"+testRoom+"/carol:o9" {
		t.Fatalf("message event %v", e)
	}

	// The server closes the stream: Run ends with a reason.
	s.srv.write(`</stream:stream>`)
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		if err == nil || !strings.Contains(err.Error(), "fake") {
			t.Fatalf("Run after stream end: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end with the stream")
	}
}

func TestJoinRefusedByRoom(t *testing.T) {
	s := start(t)
	<-s.self
	res := make(chan error, 1)
	go func() {
		_, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: testRoom})
		res <- err
	}()
	s.srv.read()
	s.srv.write(`<presence from='` + testRoom + `/bot' type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>`)
	var ae *ActionError
	if err := <-res; !errors.As(err, &ae) || ae.Code() != codes.FailedPrecondition || !strings.Contains(err.Error(), "conflict") {
		t.Fatalf("refused join: %v", err)
	}
	// No answer at all: the join times out and may be retried.
	s.c.JoinTimeout = 100 * time.Millisecond
	if _, err := s.do(t, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: testRoom}); !errors.As(err, &ae) || ae.Code() != codes.DeadlineExceeded {
		t.Fatalf("unanswered join: %v", err)
	}
	s.srv.read()
	if _, _, ok := s.c.tr.room(testRoom); ok {
		t.Fatal("timed-out join still tracked")
	}
}

func TestSettings(t *testing.T) {
	s := testServer(true)
	set, err := checkSettings(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if set.addr != "xmpp.example:5222" || set.tls == nil || set.tls.ServerName != "example" || set.tls.InsecureSkipVerify || set.jid.String() != "bot@example/quilt" {
		t.Fatalf("settings %+v", set)
	}
	s.XMPP.TLSVerify = false
	if set, _ = checkSettings(s, nil); !set.tls.InsecureSkipVerify {
		t.Fatal("tls_verify = false not applied")
	}
	s.XMPP.Host = "::1"
	if set, _ = checkSettings(s, nil); set.addr != "[::1]:5222" {
		t.Fatalf("IPv6 address %q", set.addr)
	}
	for _, bad := range []func(*config.Server){
		func(s *config.Server) { s.XMPP.JID = "nolocal" },
		func(s *config.Server) { s.XMPP.JID = "a@b/res" },
		func(s *config.Server) { s.XMPP.Password = config.NewSecret("") },
		func(s *config.Server) { s.XMPP = nil },
	} {
		s := testServer(true)
		bad(s)
		_, err := checkSettings(s, nil)
		if err == nil {
			t.Fatalf("bad settings accepted: %+v", s.XMPP)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("error reveals the password: %v", err)
		}
	}
	if (Driver{}).Protocol() != "xmpp" {
		t.Fatal("protocol name")
	}
}
