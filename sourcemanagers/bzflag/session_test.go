package bzflag

import (
	"bytes"
	"encoding/binary"
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

const myID = 3

// harness drives a Session like a scripted bzfs would.
type harness struct {
	t    *testing.T
	s    *Session
	now  time.Time
	sent [][]byte
	evs  []*quiltv1.Event
	out  runtime.Output
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, now: t0}
	h.s = NewSession(runtime.SessionConfig{Source: "bz"}, Settings{Callsign: "quilt", Team: observerTeam, Motto: "hi", Version: "2.4.0 quilt test"})
	h.take(h.s.Start(h.now))
	return h
}

func (h *harness) take(o runtime.Output) {
	h.out = o
	h.sent = append(h.sent, o.Send...)
	h.evs = append(h.evs, o.Events...)
}

func (h *harness) recv(b ...[]byte) {
	h.t.Helper()
	h.take(h.s.Input(h.now, bytes.Join(b, nil)))
}

func (h *harness) events() []*quiltv1.Event {
	e := h.evs
	h.evs = nil
	return e
}

func (h *harness) takeSent() [][]byte {
	s := h.sent
	h.sent = nil
	return s
}

func (h *harness) do(a *quiltv1.Action) error {
	h.t.Helper()
	o, err := h.s.Do(h.now, a)
	h.take(o)
	return err
}

// server-side frames
func hello(id byte) []byte { return append([]byte("BZFS0221"), id) }

func addPlayer(id byte, team int, callsign string) []byte {
	p := make([]byte, 1+10+callsignLen+mottoLen)
	p[0] = id
	binary.BigEndian.PutUint16(p[3:], uint16(team))
	copy(p[11:], callsign)
	copy(p[11+callsignLen:], "a motto")
	return frame(msgAddPlayer, p)
}

func playerInfo(pairs ...byte) []byte {
	return frame(msgPlayerInfo, append([]byte{byte(len(pairs) / 2)}, pairs...))
}

func chat(from, to, typ byte, text string) []byte {
	return frame(msgMessage, append([]byte{from, to, typ}, append([]byte(text), 0)...))
}

func removePlayer(id byte) []byte { return frame(msgRemovePlayer, []byte{id}) }

var (
	accept   = frame(msgAccept, []byte{myID})
	setVar   = frame(msgSetVar, []byte{0, 1, 4, '_', 'a', 'b', 'c', 1, '1'})
	teamUpd  = frame(msgTeamUpdate, []byte{1, 0, 5, 0, 1, 0, 0, 0, 0})
	gameTime = frame(msgGameTime, []byte{0, 6, 0x60, 0xe5, 0x65, 0xad, 0x55, 0x57})
)

// joined plays bzfs's real join sequence (recorded from bzfs 2.4.26):
// alice (0) is there already; the bot is player 3.
func joined(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	h.recv(hello(myID))
	h.recv(gameTime, accept, setVar, teamUpd, addPlayer(0, observerTeam, "alice"), addPlayer(myID, observerTeam, "quilt"), teamUpd,
		chat(serverPlayer, myID, chatMessage, "BZFlag server 2.4.26, http://BZFlag.org/"),
		chat(serverPlayer, myID, chatMessage, "You are in observer mode."),
		playerInfo(0, attrRegistered|attrVerified, myID, 0))
	h.takeSent()
	return h
}

func TestHandshakeSendsEnter(t *testing.T) {
	h := newHarness(t)
	if got := h.takeSent(); len(got) != 1 || string(got[0]) != "BZFLAG\r\n\r\n" {
		t.Fatalf("hello: %q", got)
	}
	// the hello may arrive in pieces
	h.recv([]byte("BZFS"))
	h.recv([]byte("0221"), []byte{myID})
	got := h.takeSent()
	if len(got) != 1 {
		t.Fatalf("after hello sent %q", got)
	}
	f := got[0]
	if n := binary.BigEndian.Uint16(f); int(n) != len(f)-4 || string(f[2:4]) != "en" {
		t.Fatalf("MsgEnter header: % x", f[:4])
	}
	p := f[4:]
	if len(p) != 4+callsignLen+mottoLen+tokenLen+versionLen {
		t.Fatalf("MsgEnter payload is %d bytes", len(p))
	}
	if typ, team := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:]); typ != 0 || team != observerTeam {
		t.Fatalf("type %d team %d", typ, team)
	}
	field := func(off, n int) string { return cString(p[off : off+n]) }
	if cs := field(4, callsignLen); cs != "quilt" {
		t.Fatalf("callsign %q", cs)
	}
	if m := field(4+callsignLen, mottoLen); m != "hi" {
		t.Fatalf("motto %q", m)
	}
	if tok := field(4+callsignLen+mottoLen, tokenLen); tok != "" {
		t.Fatalf("token %q", tok)
	}
	if v := field(4+callsignLen+mottoLen+tokenLen, versionLen); v != "2.4.0 quilt test" {
		t.Fatalf("version %q", v)
	}
	if h.s.ID() != myID || h.s.Joined() {
		t.Fatalf("id %d joined %v", h.s.ID(), h.s.Joined())
	}
}

func TestHandshakeFailures(t *testing.T) {
	for name, tc := range map[string]struct {
		in   []byte
		want func(error) bool
	}{
		"not bzfs":    {[]byte("HTTP/1.1 400"), func(e error) bool { return errors.Is(e, ErrNotBZFS) }},
		"old version": {[]byte("BZFS0026\x01"), func(e error) bool { var v *VersionError; return errors.As(e, &v) && v.Got == "BZFS0026" }},
		"full":        {hello(noPlayer), func(e error) bool { return errors.Is(e, ErrServerFull) }},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			h.recv(tc.in)
			if !tc.want(h.out.Close) {
				t.Fatalf("close %v", h.out.Close)
			}
			// nothing more after closing
			h.recv(gameTime)
			if h.out.Close != nil || len(h.out.Events) > 0 {
				t.Fatalf("closed session still talks: %+v", h.out)
			}
		})
	}
}

func TestJoinAnnouncesPlayersOnceTheirAttributesAreKnown(t *testing.T) {
	h := newHarness(t)
	h.recv(hello(myID), gameTime, accept, setVar, teamUpd, addPlayer(0, 1, "alice"), addPlayer(myID, observerTeam, "quilt"), teamUpd)
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("events before the player info: %v", ev)
	}
	h.recv(chat(serverPlayer, myID, chatMessage, "\x1b[33mBZFlag server 2.4.26\x1b[0m"))
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("greeting came before CONNECTED: %v", ev)
	}
	h.recv(playerInfo(0, attrRegistered|attrVerified, myID, 0))
	ev := h.events()
	if len(ev) != 4 {
		t.Fatalf("want CONNECTED, JOIN, MEMBERS, NOTICE: %v", ev)
	}
	c, j, m, n := ev[0], ev[1], ev[2], ev[3]
	if c.Kind != quiltv1.EventKind_EVENT_KIND_CONNECTED || !c.User.Self || c.User.Transient != "quilt" || c.Protocol != "bzflag" {
		t.Fatalf("connected: %v", c)
	}
	if j.Kind != quiltv1.EventKind_EVENT_KIND_JOIN || j.Channel != GameChannel || !j.User.Self || j.ChannelInfo.GetMemberCount() != 2 {
		t.Fatalf("self join: %v", j)
	}
	if m.Kind != quiltv1.EventKind_EVENT_KIND_MEMBERS || m.Channel != GameChannel || len(m.Members) != 2 {
		t.Fatalf("members: %v", m)
	}
	a := m.Members[0]
	if u := a.User; u.Transient != "alice" || u.Persistent != "+alice" || u.Display != "alice" || u.Group != "alice" || u.Self {
		t.Fatalf("verified alice's four names: %v", u)
	}
	if strings.Join(a.Modes, ",") != "registered,verified" {
		t.Fatalf("alice's modes: %v", a.Modes)
	}
	if u := m.Members[1].User; u.Transient != "quilt" || u.Persistent != "quilt" || !u.Self || len(m.Members[1].Modes) != 0 {
		t.Fatalf("bot member: %v", m.Members[1])
	}
	if n.Kind != quiltv1.EventKind_EVENT_KIND_NOTICE || n.User.Transient != ServerUser || !n.Private || n.Text != "BZFlag server 2.4.26" {
		t.Fatalf("server greeting (colour codes stripped): %v", n)
	}
	if !h.s.Joined() {
		t.Fatal("not joined")
	}
}

func TestPlayerEntersAndLeaves(t *testing.T) {
	h := joined(t)
	h.events()
	h.recv(addPlayer(1, 3, "bob"), teamUpd)
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("JOIN before player info: %v", ev)
	}
	h.recv(playerInfo(0, 3, 1, attrRegistered|attrVerified, myID, 0))
	ev := h.events()
	if len(ev) != 2 {
		t.Fatalf("want JOIN + MODE for verified bob: %v", ev)
	}
	if j := ev[0]; j.Kind != quiltv1.EventKind_EVENT_KIND_JOIN || j.User.Persistent != "+bob" || j.User.Transient != "bob" ||
		j.Channel != GameChannel || j.Tags["team"] != "blue" {
		t.Fatalf("join: %v", j)
	}
	if m := ev[1]; m.Kind != quiltv1.EventKind_EVENT_KIND_MODE || m.TargetUser.Transient != "bob" || m.Text != "+registered +verified" ||
		strings.Join(m.Members[0].Modes, ",") != "registered,verified" {
		t.Fatalf("mode: %v", m)
	}
	// an unregistered player: a JOIN only
	h.recv(addPlayer(2, 0, "carol"), playerInfo(0, 3, 1, 3, 2, 0, myID, 0))
	if ev := h.events(); len(ev) != 1 || ev[0].User.Persistent != "carol" {
		t.Fatalf("carol: %v", ev)
	}
	h.recv(removePlayer(1))
	ev = h.events()
	if len(ev) != 1 || ev[0].Kind != quiltv1.EventKind_EVENT_KIND_PART || ev[0].User.Persistent != "+bob" || ev[0].Channel != GameChannel {
		t.Fatalf("part: %v", ev)
	}
	// unknown ids are ignored
	h.recv(removePlayer(77))
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("unknown remove: %v", ev)
	}
}

func TestJoinWithoutPlayerInfoFallsBackToTick(t *testing.T) {
	h := joined(t)
	h.events()
	h.recv(addPlayer(1, 2, "dave"))
	if h.out.NextTick != t0.Add(2*time.Second) {
		t.Fatalf("next tick %v", h.out.NextTick)
	}
	h.now = h.now.Add(time.Second)
	h.take(h.s.Tick(h.now))
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("early: %v", ev)
	}
	h.now = t0.Add(2 * time.Second)
	h.take(h.s.Tick(h.now))
	if ev := h.events(); len(ev) != 1 || ev[0].Kind != quiltv1.EventKind_EVENT_KIND_JOIN || ev[0].User.Transient != "dave" {
		t.Fatalf("fallback join: %v", ev)
	}
}

func TestChatOtherFramesFlushPendingJoins(t *testing.T) {
	h := joined(t)
	h.events()
	h.recv(addPlayer(1, 2, "dave"), chat(1, allPlayers, chatMessage, "hi all"))
	ev := h.events()
	if len(ev) != 2 || ev[0].Kind != quiltv1.EventKind_EVENT_KIND_JOIN || ev[1].Kind != quiltv1.EventKind_EVENT_KIND_GAME_CHAT {
		t.Fatalf("join must come before the player's chat: %v", ev)
	}
}

func TestChatDestinations(t *testing.T) {
	h := joined(t)
	h.events()
	for _, tc := range []struct {
		frame   []byte
		kind    quiltv1.EventKind
		from    string
		channel string
		private bool
		target  string
		tag     string
	}{
		{chat(0, allPlayers, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", GameChannel, false, "", ""},
		{chat(0, myID, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", "", true, "quilt", ""},
		{chat(myID, 0, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "quilt", "", true, "alice", ""},
		{chat(0, teamBase-1, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", "team:red", false, "", ""},
		{chat(0, teamBase-observerTeam, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", "team:observer", false, "", ""},
		{chat(0, teamBase, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", "team:rogue", false, "", ""},
		{chat(0, teamBase-7, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", "team:hunter", false, "", ""},
		{chat(0, adminPlayers, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", AdminChannel, false, "", ""},
		{chat(0, allPlayers, actionMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "alice", GameChannel, false, "", "action"},
		{chat(serverPlayer, allPlayers, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_NOTICE, ServerUser, GameChannel, false, "", ""},
		{chat(myID, serverPlayer, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "quilt", "", true, ServerUser, ""},
		{chat(99, allPlayers, chatMessage, "x"), quiltv1.EventKind_EVENT_KIND_GAME_CHAT, "#99", GameChannel, false, "", ""},
	} {
		h.recv(tc.frame)
		ev := h.events()
		if len(ev) != 1 {
			t.Fatalf("% x: events %v", tc.frame, ev)
		}
		e := ev[0]
		if e.Kind != tc.kind || e.User.Transient != tc.from || e.Channel != tc.channel || e.Private != tc.private ||
			e.TargetUser.GetTransient() != tc.target || e.Tags["type"] != tc.tag || e.Text != "x" {
			t.Fatalf("% x: %v", tc.frame, e)
		}
	}
	// to a player id nobody has: dropped
	h.recv(chat(0, 120, chatMessage, "lost"))
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("to nobody: %v", ev)
	}
	// a short frame is ignored
	h.recv(frame(msgMessage, []byte{0}))
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("short message: %v", ev)
	}
}

func TestChatTextIsValidUTF8(t *testing.T) {
	h := joined(t)
	h.events()
	h.recv(chat(0, allPlayers, chatMessage, "caf\xe9 ol\xe9"), chat(0, allPlayers, chatMessage, "smörgåsbord"))
	ev := h.events()
	if len(ev) != 2 || ev[0].Text != "café olé" || ev[1].Text != "smörgåsbord" {
		t.Fatalf("texts: %q", []string{ev[0].GetText(), ev[1].GetText()})
	}
}

func TestAttributeChangeIsMode(t *testing.T) {
	h := joined(t)
	h.events()
	h.recv(playerInfo(0, attrRegistered|attrVerified|attrAdmin, myID, 0))
	ev := h.events()
	if len(ev) != 1 || ev[0].Kind != quiltv1.EventKind_EVENT_KIND_MODE || ev[0].Text != "+admin" ||
		strings.Join(ev[0].Members[0].Modes, ",") != "registered,verified,admin" || ev[0].Channel != GameChannel {
		t.Fatalf("admin: %v", ev)
	}
	h.recv(playerInfo(0, attrRegistered))
	ev = h.events()
	if len(ev) != 1 || ev[0].Text != "-verified -admin" || ev[0].TargetUser.Persistent != "alice" {
		t.Fatalf("demoted: %v", ev)
	}
	// unchanged: nothing
	h.recv(playerInfo(0, attrRegistered))
	if ev := h.events(); len(ev) != 0 {
		t.Fatalf("unchanged: %v", ev)
	}
}

func TestLagPingIsEchoed(t *testing.T) {
	h := joined(t)
	h.recv(frame(msgLagPing, []byte{0, 7}))
	if got := h.takeSent(); len(got) != 1 || !bytes.Equal(got[0], frame(msgLagPing, []byte{0, 7})) {
		t.Fatalf("echo: % x", got)
	}
}

func TestRejectAndKill(t *testing.T) {
	h := newHarness(t)
	h.recv(hello(myID), gameTime, frame(msgReject, append([]byte{0, 7}, "The callsign specified is already in use.\x00garbage"...)))
	var rj *RejectError
	if !errors.As(h.out.Close, &rj) || rj.Code != 7 || rj.Reason != "The callsign specified is already in use." {
		t.Fatalf("reject: %v", h.out.Close)
	}

	h = joined(t)
	h.recv(chat(serverPlayer, myID, chatMessage, "You were kicked off the server by admin"), frame(msgSuperKill, nil), gameTime)
	var k *KilledError
	if !errors.As(h.out.Close, &k) || !strings.Contains(k.Error(), "kicked off the server by admin") {
		t.Fatalf("superkill: %v", h.out.Close)
	}

	h = joined(t)
	h.recv(removePlayer(myID))
	if !errors.Is(h.out.Close, ErrRemoved) {
		t.Fatalf("own remove: %v", h.out.Close)
	}
}

func TestTimeouts(t *testing.T) {
	h := newHarness(t)
	if h.out.NextTick != t0.Add(60*time.Second) {
		t.Fatalf("join deadline %v", h.out.NextTick)
	}
	h.recv(hello(myID))
	h.now = t0.Add(59 * time.Second)
	h.take(h.s.Tick(h.now))
	if h.out.Close != nil {
		t.Fatal("closed early")
	}
	h.now = t0.Add(60 * time.Second)
	h.take(h.s.Tick(h.now))
	if !errors.Is(h.out.Close, ErrJoinTimeout) {
		t.Fatalf("join timeout: %v", h.out.Close)
	}

	h = joined(t)
	if h.out.NextTick != t0.Add(120*time.Second) {
		t.Fatalf("idle deadline %v", h.out.NextTick)
	}
	h.now = t0.Add(100 * time.Second)
	h.recv(gameTime) // anything counts as alive
	h.now = t0.Add(219 * time.Second)
	h.take(h.s.Tick(h.now))
	if h.out.Close != nil {
		t.Fatal("idle closed early")
	}
	h.now = t0.Add(220 * time.Second)
	h.take(h.s.Tick(h.now))
	if !errors.Is(h.out.Close, ErrIdleTimeout) {
		t.Fatalf("idle: %v", h.out.Close)
	}
}

func TestAnyChunkingGivesTheSameEvents(t *testing.T) {
	stream := bytes.Join([][]byte{hello(myID), gameTime, accept, setVar, teamUpd, addPlayer(0, 1, "alice"),
		addPlayer(myID, observerTeam, "quilt"), chat(serverPlayer, myID, 0, "welcome"), playerInfo(0, 3, myID, 0),
		addPlayer(1, 2, "bob"), playerInfo(0, 3, 1, 0, myID, 0), chat(1, allPlayers, 0, "hello"), removePlayer(0)}, nil)
	summary := func(evs []*quiltv1.Event) string {
		var b strings.Builder
		for _, e := range evs {
			b.WriteString(e.Kind.String() + " " + e.User.GetTransient() + " " + e.User.GetPersistent() + " " + e.Channel + " " + e.Text + "\n")
		}
		return b.String()
	}
	whole := newHarness(t)
	whole.recv(stream)
	want := summary(whole.events())
	if strings.Count(want, "\n") != 7 {
		t.Fatalf("whole stream events:\n%s", want)
	}
	bytewise := newHarness(t)
	for i := range stream {
		bytewise.recv(stream[i : i+1])
	}
	if got := summary(bytewise.events()); got != want {
		t.Fatalf("byte by byte:\n%s\nwant:\n%s", got, want)
	}
	if len(bytewise.s.buf) != 0 {
		t.Fatalf("%d bytes left in the buffer", len(bytewise.s.buf))
	}
}

func sentChat(t *testing.T, f []byte) (byte, string) {
	t.Helper()
	if string(f[2:4]) != "mg" || int(binary.BigEndian.Uint16(f)) != len(f)-4 {
		t.Fatalf("not a MsgMessage: % x", f)
	}
	p := f[4:]
	if p[len(p)-1] != 0 {
		t.Fatalf("text not NUL-terminated: % x", f)
	}
	return p[0], string(p[1 : len(p)-1])
}

func TestSendDestinations(t *testing.T) {
	h := joined(t)
	h.events()
	for _, tc := range []struct {
		target string
		to     byte
	}{
		{GameChannel, allPlayers}, {"team:red", teamBase - 1}, {"team:observer", teamBase - observerTeam},
		{"team:hunted", teamBase - 6}, {AdminChannel, adminPlayers}, {"alice", 0}, {"ALICE", 0},
	} {
		if err := h.do(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: tc.target, Text: "hi"}); err != nil {
			t.Fatalf("%s: %v", tc.target, err)
		}
		got := h.takeSent()
		if len(got) != 1 {
			t.Fatalf("%s: sent %q", tc.target, got)
		}
		if to, txt := sentChat(t, got[0]); to != tc.to || txt != "hi" {
			t.Fatalf("%s: to %d text %q", tc.target, to, txt)
		}
	}
	// bzfs echoes chat to everybody, to a player and to our own team, not
	// to other teams or (unless we are admin) the admins: those are
	// recorded by the session
	ev := h.events()
	if len(ev) != 3 || ev[0].Channel != "team:red" || ev[1].Channel != "team:rabbit" || ev[2].Channel != AdminChannel ||
		!ev[0].User.Self || ev[0].Kind != quiltv1.EventKind_EVENT_KIND_GAME_CHAT {
		t.Fatalf("self-recorded sends: %v", ev)
	}
}

func TestSendText(t *testing.T) {
	h := joined(t)
	send := func(text string, style quiltv1.SendStyle) []string {
		t.Helper()
		if err := h.do(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: GameChannel, Text: text, Style: style}); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, f := range h.takeSent() {
			_, txt := sentChat(t, f)
			out = append(out, txt)
		}
		return out
	}
	if got := send("/ban alice", 0); len(got) != 1 || got[0] != "//ban alice" {
		t.Fatalf("slash escaped: %q", got)
	}
	if got := send("waves", quiltv1.SendStyle_SEND_STYLE_EMOTE); len(got) != 1 || got[0] != "/me waves" {
		t.Fatalf("emote: %q", got)
	}
	if got := send("one\r\ntwo\n\n\x07three", quiltv1.SendStyle_SEND_STYLE_NOTICE); strings.Join(got, "|") != "one|two|three" {
		t.Fatalf("lines: %q", got)
	}
	long := strings.Repeat("word ", 60) + strings.Repeat("é", 100)
	got := send(long, 0)
	if len(got) < 3 {
		t.Fatalf("long text in %d pieces", len(got))
	}
	for _, p := range got {
		if len(p) > maxChatBytes || !utf8.ValidString(p) {
			t.Fatalf("piece of %d bytes, valid %v: %q", len(p), utf8.ValidString(p), p)
		}
	}
	if strings.ReplaceAll(strings.Join(got, " "), " ", "") != strings.ReplaceAll(long, " ", "") {
		t.Fatal("pieces lost text")
	}
}

func TestActionErrors(t *testing.T) {
	h := newHarness(t)
	err := h.do(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: GameChannel, Text: "x"})
	var ae *ActionError
	if !errors.As(err, &ae) || ae.Code() != codes.Unavailable {
		t.Fatalf("before joining: %v", err)
	}
	h = joined(t)
	for _, tc := range []struct {
		a    *quiltv1.Action
		code codes.Code
	}{
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "nobody", Text: "x"}, codes.NotFound},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "team:pink", Text: "x"}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "", Text: "x"}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: GameChannel, Text: "\r\n \n"}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "uptime"}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "//said"}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "/a\nb"}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "/" + strings.Repeat("x", 200)}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: "team:red"}, codes.InvalidArgument},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_KICK, Target: GameChannel, User: "alice"}, codes.Unimplemented},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_TOPIC, Target: GameChannel, Text: "x"}, codes.Unimplemented},
		{&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_PART, Target: GameChannel}, codes.Unimplemented},
	} {
		err := h.do(tc.a)
		if !errors.As(err, &ae) || ae.Code() != tc.code {
			t.Fatalf("%v: %v, want %v", tc.a, err, tc.code)
		}
		if s := h.takeSent(); len(s) != 0 {
			t.Fatalf("%v: sent %q after an error", tc.a, s)
		}
	}
}

func TestRawJoinReconnect(t *testing.T) {
	h := joined(t)
	if err := h.do(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: "/lagstats"}); err != nil {
		t.Fatal(err)
	}
	if to, txt := sentChat(t, h.takeSent()[0]); to != serverPlayer || txt != "/lagstats" {
		t.Fatalf("raw to %d: %q", to, txt)
	}
	if err := h.do(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_JOIN, Target: GameChannel}); err != nil || len(h.takeSent()) != 0 {
		t.Fatalf("join game: %v", err)
	}
	if err := h.do(&quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RECONNECT}); err != nil {
		t.Fatal(err)
	}
	if s := h.takeSent(); len(s) != 1 || !bytes.Equal(s[0], frame(msgExit, nil)) || !errors.Is(h.out.Close, ErrReconnect) {
		t.Fatalf("reconnect sent % x close %v", s, h.out.Close)
	}
}

func TestIDReusedWithoutRemove(t *testing.T) {
	h := joined(t)
	h.events()
	h.recv(addPlayer(0, 1, "zed"), playerInfo(0, 0, myID, 0))
	ev := h.events()
	if len(ev) != 2 || ev[0].Kind != quiltv1.EventKind_EVENT_KIND_PART || ev[0].User.Transient != "alice" ||
		ev[1].Kind != quiltv1.EventKind_EVENT_KIND_JOIN || ev[1].User.Transient != "zed" {
		t.Fatalf("replaced: %v", ev)
	}
}

func TestTeamCode(t *testing.T) {
	for name, want := range map[string]int16{"rogue": 0, "red": 1, "green": 2, "blue": 3, "purple": 4, "observer": 5, "rabbit": 6, "hunted": 6, "hunter": 7, " Red ": 1} {
		if got, ok := TeamCode(name); !ok || got != want {
			t.Fatalf("%q: %d %v", name, got, ok)
		}
	}
	if _, ok := TeamCode("pink"); ok {
		t.Fatal("pink is no team")
	}
	if teamName(12) != "team12" {
		t.Fatal(teamName(12))
	}
}
