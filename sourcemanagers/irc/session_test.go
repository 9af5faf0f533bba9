package irc

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// harness drives a Session like a scripted IRC server would.
type harness struct {
	t    *testing.T
	s    *Session
	now  time.Time
	sent []string
	evs  []*quiltv1.Event
	out  runtime.Output
}

func newHarness(t *testing.T, set Settings) *harness {
	t.Helper()
	if set.Nick == "" {
		set.Nick = "quilt"
	}
	h := &harness{t: t, now: t0}
	h.s = NewSession(runtime.SessionConfig{Source: "irc"}, set)
	h.take(h.s.Start(h.now))
	return h
}

func (h *harness) take(o runtime.Output) {
	h.out = o
	for _, b := range o.Send {
		h.sent = append(h.sent, strings.TrimRight(string(b), "\r\n"))
	}
	h.evs = append(h.evs, o.Events...)
}

// recv feeds server lines.
func (h *harness) recv(lines ...string) {
	h.t.Helper()
	h.take(h.s.Input(h.now, []byte(strings.Join(lines, "\r\n")+"\r\n")))
}

// expectSent checks the next lines the session wrote, in order.
func (h *harness) expectSent(want ...string) {
	h.t.Helper()
	if len(h.sent) < len(want) {
		h.t.Fatalf("sent %q, want %q", h.sent, want)
	}
	for i, w := range want {
		if h.sent[i] != w {
			h.t.Fatalf("line %d: sent %q, want %q (all: %q)", i, h.sent[i], w, h.sent)
		}
	}
	h.sent = h.sent[len(want):]
}

func (h *harness) expectNothingSent() {
	h.t.Helper()
	if len(h.sent) > 0 {
		h.t.Fatalf("unexpected lines sent: %q", h.sent)
	}
}

func (h *harness) events() []*quiltv1.Event {
	e := h.evs
	h.evs = nil
	return e
}

func (h *harness) oneEvent(kind quiltv1.EventKind) *quiltv1.Event {
	h.t.Helper()
	evs := h.events()
	if len(evs) != 1 || evs[0].Kind != kind {
		h.t.Fatalf("want one %s event, got %v", kind, evs)
	}
	return evs[0]
}

// register runs a plain registration (no caps) to 001.
func (h *harness) register() {
	h.t.Helper()
	h.expectSent("CAP LS 302", "NICK "+h.s.set.Nick, "USER "+h.s.User()+" 0 * :"+h.s.set.RealName)
	h.recv(":irc.test CAP * LS :", ":irc.test 001 "+h.s.Nick()+" :Welcome", ":irc.test 005 "+h.s.Nick()+" PREFIX=(ov)@+ CHANTYPES=# CHANMODES=beI,k,l,imnpst :are supported")
	h.expectSent("CAP END")
	h.oneEvent(quiltv1.EventKind_EVENT_KIND_CONNECTED)
}

func (s *Session) User() string { return s.set.User }

func TestRegistrationWithCaps(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", RealName: "Quilt Bot"})
	h.expectSent("CAP LS 302", "NICK bot", "USER bot 0 * :Quilt Bot")
	h.recv(":srv CAP * LS * :multi-prefix server-time",
		":srv CAP * LS :extended-join away-notify unknown-cap")
	h.expectSent("CAP REQ :server-time multi-prefix away-notify extended-join")
	h.recv(":srv CAP bot ACK :server-time multi-prefix away-notify extended-join")
	h.expectSent("CAP END")
	h.recv(":srv 001 bot :Welcome to the test net")
	ev := h.oneEvent(quiltv1.EventKind_EVENT_KIND_CONNECTED)
	if !ev.User.Self || ev.User.Transient != "bot" || ev.Protocol != "irc" || ev.Source != "irc" {
		t.Fatalf("connected event: %v", ev)
	}
	if !h.s.capsAcked["server-time"] || h.s.capsAcked["unknown-cap"] {
		t.Fatalf("caps acked: %v", h.s.capsAcked)
	}
}

func TestServerPasswordIsSentBeforeNick(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", Password: "s3cret"})
	h.expectSent("CAP LS 302", "PASS s3cret", "NICK bot")
}

func TestSASLPlain(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", SASLUser: "acct", SASLPassword: "pw"})
	h.sent = nil
	h.recv(":srv CAP * LS :sasl=PLAIN,EXTERNAL server-time")
	h.expectSent("CAP REQ :server-time sasl")
	h.recv(":srv CAP * ACK :server-time sasl")
	h.expectSent("AUTHENTICATE PLAIN")
	h.recv("AUTHENTICATE +")
	want := base64.StdEncoding.EncodeToString([]byte("acct\x00acct\x00pw"))
	h.expectSent("AUTHENTICATE " + want)
	h.recv(":srv 900 bot bot!u@h acct :You are now logged in", ":srv 903 bot :SASL authentication successful")
	h.expectSent("CAP END")
	h.recv(":srv 001 bot :hi")
	if ev := h.oneEvent(quiltv1.EventKind_EVENT_KIND_CONNECTED); ev.User.Group != "acct" {
		t.Fatalf("group after SASL = %q, want account name", ev.User.Group)
	}
}

func TestSASLFailureContinues(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", SASLUser: "acct", SASLPassword: "bad"})
	h.sent = nil
	h.recv(":srv CAP * LS :sasl", ":srv CAP * ACK :sasl", "AUTHENTICATE +")
	h.expectSent("CAP REQ sasl", "AUTHENTICATE PLAIN")
	h.sent = h.sent[1:] // the payload
	h.recv(":srv 904 bot :SASL authentication failed")
	h.expectSent("CAP END")
	if h.out.Close != nil {
		t.Fatal("SASL failure must not close the connection")
	}
}

func TestNickCollisionFallback(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", AltNicks: []string{"bot2"}})
	h.sent = nil
	h.recv(":srv 433 * bot :Nickname is already in use")
	h.expectSent("NICK bot2")
	h.recv(":srv 433 * bot2 :Nickname is already in use")
	h.expectSent("NICK bot_")
	h.recv(":srv 433 * bot_ :in use")
	h.expectSent("NICK bot1")
	h.recv(":srv 433 * bot1 :in use")
	h.expectSent("NICK bot2")
	for i := 0; i < 20 && h.out.Close == nil; i++ {
		h.recv(":srv 433 * x :in use")
	}
	if !errors.Is(h.out.Close, ErrNicksExhausted) {
		t.Fatalf("close = %v, want ErrNicksExhausted", h.out.Close)
	}
}

func TestNickCollisionThenWelcomeUsesNewNick(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.recv(":srv 433 * bot :in use", ":srv CAP * LS :", ":srv 001 bot_ :hi")
	if h.s.Nick() != "bot_" {
		t.Fatalf("nick = %q", h.s.Nick())
	}
}

func TestPingPongKeepaliveAndLagTimeout(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", PingInterval: time.Minute, PingTimeout: 2 * time.Minute})
	h.register()
	h.recv("PING :irc.test")
	h.expectSent("PONG irc.test")
	if want := h.now.Add(time.Minute); !h.out.NextTick.Equal(want) {
		t.Fatalf("next tick %v, want %v", h.out.NextTick, want)
	}
	h.now = h.now.Add(30 * time.Second)
	h.take(h.s.Tick(h.now))
	h.expectNothingSent()
	h.now = h.now.Add(31 * time.Second)
	h.take(h.s.Tick(h.now))
	if len(h.sent) != 1 || !strings.HasPrefix(h.sent[0], "PING quilt-") {
		t.Fatalf("want keep-alive PING, sent %q", h.sent)
	}
	tok := strings.TrimPrefix(h.sent[0], "PING ")
	h.sent = nil
	h.now = h.now.Add(1500 * time.Millisecond)
	h.recv(":irc.test PONG irc.test :" + tok)
	if h.s.Lag() != 1500*time.Millisecond {
		t.Fatalf("lag = %v", h.s.Lag())
	}
	// next ping goes unanswered: the session gives up after PingTimeout
	h.now = h.now.Add(time.Minute)
	h.take(h.s.Tick(h.now))
	h.sent = nil
	h.now = h.now.Add(2 * time.Minute)
	h.take(h.s.Tick(h.now))
	if !errors.Is(h.out.Close, ErrPingTimeout) {
		t.Fatalf("close = %v, want ping timeout", h.out.Close)
	}
}

func TestRegistrationTimeout(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", RegisterTimeout: 10 * time.Second})
	h.now = h.now.Add(10 * time.Second)
	h.take(h.s.Tick(h.now))
	if !errors.Is(h.out.Close, ErrRegisterTimeout) {
		t.Fatalf("close = %v", h.out.Close)
	}
}

func TestServerError(t *testing.T) {
	h := newHarness(t, Settings{})
	h.recv("ERROR :Closing Link: bot (K-Lined)")
	var se *ServerError
	if !errors.As(h.out.Close, &se) || !strings.Contains(se.Reason, "K-Lined") {
		t.Fatalf("close = %v", h.out.Close)
	}
}

func TestJoinNamesWhoFillMembers(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.register()
	h.recv(":bot!~bot@quilt.host JOIN #ops")
	ev := h.oneEvent(quiltv1.EventKind_EVENT_KIND_JOIN)
	if !ev.User.Self || ev.Channel != "#ops" || ev.User.Persistent != "~bot@quilt.host" {
		t.Fatalf("self join: %v", ev)
	}
	h.recv(":srv 332 bot #ops :incident review at 3",
		":srv 353 bot = #ops :@alice +bob bot",
		":srv 353 bot = #ops :carol",
		":srv 366 bot #ops :End of NAMES list")
	evs := h.events()
	if len(evs) != 2 || evs[0].Kind != quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO || evs[0].ChannelInfo.Topic != "incident review at 3" {
		t.Fatalf("want topic info then members, got %v", evs)
	}
	mem := evs[1]
	if mem.Kind != quiltv1.EventKind_EVENT_KIND_MEMBERS || len(mem.Members) != 4 {
		t.Fatalf("members event: %v", mem)
	}
	modes := map[string]string{}
	for _, m := range mem.Members {
		modes[m.User.Transient] = strings.Join(m.Modes, "")
	}
	if modes["alice"] != "o" || modes["bob"] != "v" || modes["carol"] != "" {
		t.Fatalf("modes = %v", modes)
	}
	h.expectSent("WHO #ops")
	h.recv(":srv 352 bot #ops ~al alice.host srv alice H@ :0 Alice",
		":srv 352 bot #ops bobu bob.host srv bob H+ :0 Bob",
		":srv 315 bot #ops :End of WHO")
	mem = h.oneEvent(quiltv1.EventKind_EVENT_KIND_MEMBERS)
	hosts := map[string]string{}
	for _, m := range mem.Members {
		hosts[m.User.Transient] = m.User.Persistent
	}
	if hosts["alice"] != "~al@alice.host" || hosts["bob"] != "bobu@bob.host" {
		t.Fatalf("hosts = %v", hosts)
	}
}

func TestMultiPrefixAndUserhostInNames(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.sent = nil
	h.recv(":srv CAP * LS :multi-prefix userhost-in-names", ":srv CAP * ACK :multi-prefix userhost-in-names", ":srv 001 bot :hi")
	h.events()
	h.sent = nil
	h.recv(":bot!b@h JOIN #c", ":srv 353 bot = #c :@+alice!a@ahost bot!b@h", ":srv 366 bot #c :end")
	evs := h.events()
	mem := evs[len(evs)-1]
	for _, m := range mem.Members {
		if m.User.Transient == "alice" && (strings.Join(m.Modes, "") != "ov" || m.User.Persistent != "a@ahost") {
			t.Fatalf("alice = %v", m)
		}
	}
	h.expectNothingSent() // no WHO needed with userhost-in-names
}

func TestChannelTraffic(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.register()
	h.recv(":bot!b@h JOIN #c", ":srv 353 bot = #c :bot alice", ":srv 366 bot #c :end")
	h.events()
	h.sent = nil

	h.recv(":alice!al@ahost PRIVMSG #c :hello there")
	ev := h.oneEvent(quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if ev.Channel != "#c" || ev.Text != "hello there" || ev.User.Transient != "alice" || ev.User.Persistent != "al@ahost" ||
		ev.User.Display != "alice" || ev.User.Group != "alice" || ev.Private {
		t.Fatalf("message: %v", ev)
	}
	h.recv(":alice!al@ahost PRIVMSG bot :psst")
	ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if !ev.Private || ev.Channel != "" || !ev.TargetUser.Self {
		t.Fatalf("private: %v", ev)
	}
	h.recv(":alice!al@ahost PRIVMSG #c :\x01ACTION waves\x01")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_ACTION); ev.Text != "waves" {
		t.Fatalf("action: %v", ev)
	}
	h.recv(":alice!al@ahost NOTICE #c :fyi")
	h.oneEvent(quiltv1.EventKind_EVENT_KIND_NOTICE)
	h.recv(":alice!al@ahost PRIVMSG bot :\x01VERSION\x01")
	h.expectSent("NOTICE alice :\x01VERSION quilt\x01")
	if len(h.events()) != 0 {
		t.Fatal("CTCP VERSION is not an event")
	}
	h.recv(":irc.test NOTICE bot :*** server notice")
	if len(h.events()) != 0 {
		t.Fatal("server notices are not chat events")
	}
	h.recv(":alice!al@ahost TOPIC #c :new topic")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_TOPIC); ev.Text != "new topic" || ev.ChannelInfo.TopicSetBy != "alice" {
		t.Fatalf("topic: %v", ev)
	}
	h.recv(":alice!al@ahost NICK :alicia")
	ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_NICK)
	if ev.User.Transient != "alice" || ev.TargetUser.Transient != "alicia" || ev.TargetUser.Persistent != "al@ahost" {
		t.Fatalf("nick: %v", ev)
	}
	h.recv(":srv MODE #c +ol-v alicia 10 alicia")
	evs := h.events()
	if len(evs) != 2 || evs[0].Text != "+o" || evs[1].Text != "-v" || evs[0].TargetUser.Transient != "alicia" {
		t.Fatalf("modes: %v", evs)
	}
	if got := h.s.channels["#c"].members["alicia"].modes; len(got) != 1 || got[0] != "o" {
		t.Fatalf("member modes after MODE: %v", got)
	}
	h.recv(":alicia!al@ahost KICK #c bot2 :bye")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_KICK); ev.TargetUser.Transient != "bot2" || ev.Text != "bye" {
		t.Fatalf("kick: %v", ev)
	}
	h.recv(":alicia!al@ahost PART #c :later")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_PART); ev.Text != "later" {
		t.Fatalf("part: %v", ev)
	}
	h.recv(":carol!c@chost QUIT :Ping timeout")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_QUIT); ev.Text != "Ping timeout" || ev.Channel != "" {
		t.Fatalf("quit: %v", ev)
	}
}

func TestSelfKickAndPartDropChannel(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.register()
	h.recv(":bot!b@h JOIN #a", ":bot!b@h JOIN #b")
	h.recv(":op!o@h KICK #a bot :out")
	if ev := h.events()[2]; ev.Kind != quiltv1.EventKind_EVENT_KIND_KICK || !ev.TargetUser.Self {
		t.Fatalf("self kick: %v", ev)
	}
	h.recv(":bot!b@h PART #b")
	if len(h.s.channels) != 0 {
		t.Fatalf("channels left: %v", h.s.channels)
	}
}

func TestSelfNickChange(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.register()
	h.recv(":bot!b@h NICK newbot")
	ev := h.oneEvent(quiltv1.EventKind_EVENT_KIND_NICK)
	if !ev.TargetUser.Self || h.s.Nick() != "newbot" {
		t.Fatalf("self nick: %v nick=%s", ev, h.s.Nick())
	}
}

func TestServerTimeAccountTagsAndExtendedJoin(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.sent = nil
	h.recv(":srv CAP * LS :server-time account-tag extended-join account-notify", ":srv CAP * ACK :server-time account-tag extended-join account-notify", ":srv 001 bot :hi")
	h.events()
	h.recv("@time=2020-01-02T03:04:05.678Z;account=alice_acct :alice!a@h PRIVMSG #c :hi")
	ev := h.oneEvent(quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if got := ev.Time.AsTime(); !got.Equal(time.Date(2020, 1, 2, 3, 4, 5, 678e6, time.UTC)) {
		t.Fatalf("server-time = %v", got)
	}
	if ev.User.Group != "alice_acct" || ev.User.Display != "alice" {
		t.Fatalf("account tag: %v", ev.User)
	}
	if !ev.Received.AsTime().Equal(t0) {
		t.Fatalf("received = %v", ev.Received.AsTime())
	}
	h.recv(":bob!b@h JOIN #c bobacct :Bob Real")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_JOIN); ev.User.Group != "bobacct" {
		t.Fatalf("extended-join group = %q", ev.User.Group)
	}
	h.recv(":bob!b@h ACCOUNT *")
	h.events()
	h.recv(":bob!b@h PRIVMSG #c :x")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_MESSAGE); ev.User.Group != "bob" {
		t.Fatalf("after logout group = %q", ev.User.Group)
	}
	h.recv("@msgid=abc123 :bob!b@h PRIVMSG #c :y")
	if ev = h.oneEvent(quiltv1.EventKind_EVENT_KIND_MESSAGE); ev.Id != "msgid:abc123" {
		t.Fatalf("msgid = %q", ev.Id)
	}
}

func TestByteByByteInputEqualsWholeInput(t *testing.T) {
	lines := ":srv CAP * LS :\r\n:srv 001 bot :hi\r\n:bot!b@h JOIN #c\r\n:alice!a@h PRIVMSG #c :héllo wörld\r\n"
	whole := newHarness(t, Settings{Nick: "bot"})
	whole.take(whole.s.Input(t0, []byte(lines)))
	bytewise := newHarness(t, Settings{Nick: "bot"})
	for i := 0; i < len(lines); i++ {
		bytewise.take(bytewise.s.Input(t0, []byte{lines[i]}))
	}
	a, b := whole.events(), bytewise.events()
	if len(a) != 3 || len(a) != len(b) {
		t.Fatalf("whole %d events, bytewise %d", len(a), len(b))
	}
	for i := range a {
		if a[i].Kind != b[i].Kind || a[i].Text != b[i].Text {
			t.Fatalf("event %d differs: %v vs %v", i, a[i], b[i])
		}
	}
}

func TestSendSplitsLongTextOnUTF8AndWords(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot", LineLimit: 512})
	h.register()
	h.recv(":bot!~bot@host.example JOIN #c")
	h.events()
	text := strings.Repeat("word ", 80) + strings.Repeat("ü", 300)
	o, err := h.s.Do(h.now, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c", Text: text})
	if err != nil {
		t.Fatal(err)
	}
	var rebuilt strings.Builder
	for i, b := range o.Send {
		line := string(b)
		relayed := ":bot!~bot@host.example " + strings.TrimRight(line, "\r\n")
		if len(relayed)+2 > 512 {
			t.Fatalf("line %d is %d bytes once relayed", i, len(relayed)+2)
		}
		if !utf8.ValidString(line) {
			t.Fatalf("line %d splits a UTF-8 sequence: %q", i, line)
		}
		body := strings.TrimPrefix(strings.TrimRight(line, "\r\n"), "PRIVMSG #c :")
		if i > 0 && !strings.HasSuffix(rebuilt.String(), " ") && strings.HasPrefix(body, "word") {
			rebuilt.WriteString(" ")
		}
		rebuilt.WriteString(body)
	}
	if len(o.Send) < 2 {
		t.Fatalf("expected a split, got %d lines", len(o.Send))
	}
	if strings.ReplaceAll(rebuilt.String(), " ", "") != strings.ReplaceAll(text, " ", "") {
		t.Fatal("split lost or changed text")
	}
	if len(o.Events) != len(o.Send) || !o.Events[0].User.Self || o.Events[0].Channel != "#c" {
		t.Fatalf("self events: %v", o.Events)
	}
}

func TestSendNeverInjectsCommands(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.register()
	for _, text := range []string{"hi\r\nQUIT :pwned", "hi\nJOIN #evil", "hi\rKICK #c x", "a\x00b"} {
		o, err := h.s.Do(h.now, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c", Text: text})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range o.Send {
			line := string(b)
			if strings.Count(line, "\r\n") != 1 || !strings.HasSuffix(line, "\r\n") || strings.ContainsAny(strings.TrimSuffix(line, "\r\n"), "\r\n\x00") {
				t.Fatalf("%q produced unsafe line %q", text, line)
			}
			if !strings.HasPrefix(line, "PRIVMSG #c :") {
				t.Fatalf("%q produced a non-PRIVMSG line %q", text, line)
			}
		}
	}
	for _, a := range []*quiltv1.Action{
		{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c\r\nQUIT", Text: "x"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c x", Text: "x"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "PRIVMSG #c :a\r\nQUIT"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "#c", Key: "k\nQUIT"},
		{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: "#c", User: "x y"},
	} {
		if o, err := h.s.Do(h.now, a); err == nil {
			t.Fatalf("%v: want error, sent %q", a, o.Send)
		}
	}
	o, err := h.s.Do(h.now, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_PART, Target: "#c", Text: "bye\r\nQUIT"})
	if err != nil || len(o.Send) != 1 || string(o.Send[0]) != "PART #c :bye QUIT\r\n" {
		t.Fatalf("part: %q %v", o.Send, err)
	}
}

func TestActions(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	if _, err := h.s.Do(h.now, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c", Text: "x"}); err == nil {
		t.Fatal("send before registration must fail")
	} else if ae := (*ActionError)(nil); !errors.As(err, &ae) || ae.Code() != codes.Unavailable {
		t.Fatalf("err = %v", err)
	}
	h.register()
	cases := []struct {
		a    *quiltv1.Action
		want string
	}{
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "#k", Key: "sekrit"}, "JOIN #k sekrit"},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "#c"}, "JOIN #c"},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: "#c", User: "mallory", Text: "spam"}, "KICK #c mallory :spam"},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_TOPIC, Target: "#c", Text: "new topic"}, "TOPIC #c :new topic"},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c", Text: "fyi", Style: quiltv1.SendStyle_SEND_STYLE_NOTICE}, "NOTICE #c :fyi"},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "alice", Text: "waves", Style: quiltv1.SendStyle_SEND_STYLE_EMOTE}, "PRIVMSG alice :\x01ACTION waves\x01"},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "MODE #c +o alice"}, "MODE #c +o alice"},
	}
	for _, c := range cases {
		o, err := h.s.Do(h.now, c.a)
		if err != nil {
			t.Fatalf("%v: %v", c.a, err)
		}
		if got := strings.TrimRight(string(o.Send[0]), "\r\n"); got != c.want {
			t.Fatalf("%v: sent %q, want %q", c.a.Kind, got, c.want)
		}
	}
	o, err := h.s.Do(h.now, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RECONNECT})
	if err != nil || !errors.Is(o.Close, ErrReconnect) || string(o.Send[0]) != "QUIT :reconnecting\r\n" {
		t.Fatalf("reconnect: %q %v %v", o.Send, o.Close, err)
	}
}

func TestSplitText(t *testing.T) {
	for _, c := range []struct {
		in   string
		max  int
		want []string
	}{
		{"hello world", 20, []string{"hello world"}},
		{"hello world again", 11, []string{"hello world", "again"}},
		{"aaaaaaaaaaaa", 5, []string{"aaaaa", "aaaaa", "aa"}},
		{"ééé", 4, []string{"éé", "é"}},
		{"a 日本語", 5, []string{"a 日", "本", "語"}},
	} {
		got := splitText(c.in, c.max)
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("splitText(%q,%d) = %q, want %q", c.in, c.max, got, c.want)
		}
	}
}

func TestCasemapping(t *testing.T) {
	if caseRFC1459.fold("Nick[A]~") != "nick{a}^" || caseASCII.fold("Nick[A]") != "nick[a]" || caseStrictRFC1459.fold("A~") != "a~" {
		t.Fatal("fold")
	}
	h := newHarness(t, Settings{Nick: "Bot[1]"})
	h.recv(":srv CAP * LS :", ":srv 001 Bot[1] :hi", ":bot{1}!b@h JOIN #C")
	evs := h.events()
	if len(evs) != 2 || !evs[1].User.Self {
		t.Fatalf("case-folded self join not recognised: %v", evs)
	}
}

func TestOverlongInputIsDropped(t *testing.T) {
	h := newHarness(t, Settings{Nick: "bot"})
	h.register()
	h.recv(":a!b@c PRIVMSG #c :" + strings.Repeat("x", 20000))
	if len(h.events()) != 0 {
		t.Fatal("over-long line should be dropped")
	}
	h.take(h.s.Input(h.now, []byte(strings.Repeat("y", 20000))))
	if len(h.s.buf) > maxInputLine {
		t.Fatalf("partial buffer grew to %d", len(h.s.buf))
	}
	h.recv("", ":a!b@c PRIVMSG #c :ok")
	if ev := h.oneEvent(quiltv1.EventKind_EVENT_KIND_MESSAGE); ev.Text != "ok" {
		t.Fatal(ev)
	}
}

// Seeds are real server lines (ngircd, Libera, Ergo).
func FuzzInput(f *testing.F) {
	for _, s := range []string{
		":irc.example 001 bot :Welcome to the Internet Relay Network bot!~bot@127.0.0.1",
		":irc.example 005 bot RFC2812 IRCD=ngIRCd CHARSET=UTF-8 CASEMAPPING=ascii PREFIX=(qaohv)~&@%+ CHANTYPES=#&+ CHANMODES=beI,k,l,imMnOPQRstVz :are supported on this server",
		":alice!~alice@127.0.0.1 PRIVMSG #test :hello channel from alice",
		"@time=2023-01-01T00:00:00.000Z;msgid=xyz :nick!u@h PRIVMSG #c :\x01ACTION dances\x01",
		":srv 353 bot = #c :@+alice!a@h bob",
		":srv MODE #c +ovk-l a b key",
		":srv CAP * LS * :sasl=PLAIN multi-prefix",
		"AUTHENTICATE +",
		"PING :irc.example",
		":n!u@h NICK :",
		":n!u@h KICK #c",
		"ERROR :Closing Link",
		"@a=b\\ :x y",
		":x 352 bot #c u h s n H :0 real",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		s := NewSession(runtime.SessionConfig{Source: "fuzz"}, Settings{Nick: "bot"})
		s.Start(t0)
		s.Input(t0, []byte(":srv CAP * LS :multi-prefix\r\n:srv 001 bot :hi\r\n:bot!b@h JOIN #c\r\n"))
		o := s.Input(t0, []byte(line+"\r\n"))
		for _, b := range o.Send {
			if strings.Count(string(b), "\n") != 1 {
				t.Fatalf("output line with embedded newline: %q", b)
			}
		}
		s.Tick(t0.Add(time.Hour))
		s.Do(t0, &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c", Text: line})
	})
}

// BenchmarkInbound measures parse + event build per line on one core.
func BenchmarkInbound(b *testing.B) {
	s := NewSession(runtime.SessionConfig{Source: "bench"}, Settings{Nick: "bot"})
	s.Start(t0)
	s.Input(t0, []byte(":srv CAP * LS :\r\n:srv 001 bot :hi\r\n:bot!b@h JOIN #c\r\n"))
	var chunk []byte
	const perChunk = 64
	for i := 0; i < perChunk; i++ {
		chunk = append(chunk, ":alice!~alice@127.0.0.1 PRIVMSG #test :hello channel from alice, line with some text\r\n"...)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += perChunk {
		o := s.Input(t0, chunk)
		if len(o.Events) != perChunk {
			b.Fatalf("events %d", len(o.Events))
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}
