package xmpp

import (
	"strings"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

const testRoom = "r@muc.example"

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newTestTracker() *tracker {
	return newTracker(&quiltv1.User{Transient: "bot@example/quilt", Persistent: "bot@example", Group: "bot@example", Display: "bot", Self: true}, nil)
}

func feed(t *testing.T, tr *tracker, x string) []*quiltv1.Event {
	t.Helper()
	st, err := parseStanza([]byte(x))
	if err != nil {
		t.Fatalf("parse %s: %v", x, err)
	}
	return tr.handle(st, t0)
}

func occ(nick, real, aff, role string, codes ...string) string {
	var b strings.Builder
	b.WriteString(`<presence from='` + testRoom + `/` + nick + `'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='` + aff + `' role='` + role + `'`)
	if real != "" {
		b.WriteString(` jid='` + real + `'`)
	}
	b.WriteString(`/>`)
	for _, c := range codes {
		b.WriteString(`<status code='` + c + `'/>`)
	}
	b.WriteString(`</x></presence>`)
	return b.String()
}

// joined returns a tracker in testRoom with carol (real JID known) present.
func joined(t *testing.T) *tracker {
	t.Helper()
	tr := newTestTracker()
	done, err := tr.startJoin(testRoom, "bot")
	if err != nil {
		t.Fatal(err)
	}
	if evs := feed(t, tr, occ("carol", "carol@example/phone", "member", "participant")); len(evs) != 0 {
		t.Fatalf("roster before self presence emitted %v", evs)
	}
	evs := feed(t, tr, occ("bot", "bot@example/quilt", "owner", "moderator", "110", "201"))
	if len(evs) != 2 || evs[0].Kind != quiltv1.EventKind_EVENT_KIND_JOIN || evs[1].Kind != quiltv1.EventKind_EVENT_KIND_MEMBERS {
		t.Fatalf("self presence: want JOIN, MEMBERS, got %v", evs)
	}
	if u := evs[0].User; !u.Self || u.Transient != testRoom+"/bot" || u.Persistent != "bot@example" {
		t.Fatalf("self JOIN user %v", u)
	}
	m := evs[1].Members
	if len(m) != 2 || m[0].User.Transient != testRoom+"/bot" || strings.Join(m[0].Modes, ",") != "moderator,owner" ||
		m[1].User.Persistent != "carol@example" || m[1].User.Display != "carol" || strings.Join(m[1].Modes, ",") != "participant,member" {
		t.Fatalf("MEMBERS %v", m)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("join outcome not reported")
	}
	if _, err := tr.startJoin(testRoom, "bot"); err != errJoined {
		t.Fatalf("second join: %v", err)
	}
	evs = feed(t, tr, `<message from='`+testRoom+`' type='groupchat' id='s'><subject>old topic</subject></message>`)
	if len(evs) != 1 || evs[0].Kind != quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO || evs[0].ChannelInfo.Topic != "old topic" {
		t.Fatalf("join subject: %v", evs)
	}
	return tr
}

func one(t *testing.T, evs []*quiltv1.Event, k quiltv1.EventKind) *quiltv1.Event {
	t.Helper()
	if len(evs) != 1 || evs[0].Kind != k {
		t.Fatalf("want one %v, got %v", k, evs)
	}
	if evs[0].Time == nil {
		t.Fatalf("event without time: %v", evs[0])
	}
	return evs[0]
}

func TestOccupantLifecycle(t *testing.T) {
	tr := joined(t)
	// An anonymous occupant: persistent and group fall back to the occupant JID.
	j := one(t, feed(t, tr, occ("dave", "", "none", "participant")), quiltv1.EventKind_EVENT_KIND_JOIN)
	if u := j.User; u.Transient != testRoom+"/dave" || u.Persistent != testRoom+"/dave" || u.Group != testRoom+"/dave" || u.Display != "dave" || u.Self || j.Channel != testRoom {
		t.Fatalf("anonymous JOIN %v", j)
	}
	// Same presence again: nothing changed, nothing emitted.
	if evs := feed(t, tr, occ("dave", "", "none", "participant")); len(evs) != 0 {
		t.Fatalf("repeated presence: %v", evs)
	}
	p := one(t, feed(t, tr, `<presence from='`+testRoom+`/dave'><show>away</show><status>lunch</status><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='participant'/></x></presence>`), quiltv1.EventKind_EVENT_KIND_PRESENCE)
	if p.Text != "away: lunch" {
		t.Fatalf("presence %v", p)
	}
	md := one(t, feed(t, tr, occ("dave", "", "none", "moderator")), quiltv1.EventKind_EVENT_KIND_MODE)
	if md.TargetUser.Transient != testRoom+"/dave" || len(md.Members) != 1 || md.Members[0].Modes[0] != "moderator" {
		t.Fatalf("mode %v", md)
	}
	n := one(t, feed(t, tr, `<presence from='`+testRoom+`/carol' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member' role='participant' nick='caz'/><status code='303'/></x></presence>`), quiltv1.EventKind_EVENT_KIND_NICK)
	if n.User.Transient != testRoom+"/carol" || n.TargetUser.Transient != testRoom+"/caz" || n.TargetUser.Persistent != "carol@example" {
		t.Fatalf("nick %v", n)
	}
	// The new nick's presence follows the 303: no second JOIN.
	if evs := feed(t, tr, occ("caz", "carol@example/phone", "member", "participant")); len(evs) != 0 {
		t.Fatalf("presence after nick change: %v", evs)
	}
	pt := one(t, feed(t, tr, `<presence from='`+testRoom+`/caz' type='unavailable'><status>bye</status></presence>`), quiltv1.EventKind_EVENT_KIND_PART)
	if pt.User.Transient != testRoom+"/caz" || pt.Text != "bye" {
		t.Fatalf("part %v", pt)
	}
	k := one(t, feed(t, tr, `<presence from='`+testRoom+`/dave' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='outcast' role='none'><actor nick='bot'/><reason>spam</reason></item><status code='301'/></x></presence>`), quiltv1.EventKind_EVENT_KIND_KICK)
	if k.User.Transient != testRoom+"/bot" || !k.User.Self || k.TargetUser.Transient != testRoom+"/dave" || k.Text != "spam" || k.Tags["ban"] != "true" {
		t.Fatalf("ban %v", k)
	}
	// Our own kick ends the room.
	k = one(t, feed(t, tr, `<presence from='`+testRoom+`/bot' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' role='none'><reason>out</reason></item><status code='307'/><status code='110'/></x></presence>`), quiltv1.EventKind_EVENT_KIND_KICK)
	if !k.TargetUser.Self || k.User.Transient != testRoom || k.Tags["muc_status"] != "307" {
		t.Fatalf("self kick %v", k)
	}
	if _, _, ok := tr.room(testRoom); ok {
		t.Fatal("room still tracked after our kick")
	}
}

func TestSelfPartAndNick(t *testing.T) {
	tr := joined(t)
	n := one(t, feed(t, tr, `<presence from='`+testRoom+`/bot' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item nick='bot2'/><status code='303'/><status code='110'/></x></presence>`), quiltv1.EventKind_EVENT_KIND_NICK)
	if !n.User.Self || n.TargetUser.Transient != testRoom+"/bot2" || !n.TargetUser.Self {
		t.Fatalf("own nick change %v", n)
	}
	if _, nick, _ := tr.room(testRoom); nick != "bot2" {
		t.Fatalf("nick now %q", nick)
	}
	p := one(t, feed(t, tr, `<presence from='`+strings.ToUpper(testRoom)+`/bot2' type='unavailable'><status>done</status><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>`), quiltv1.EventKind_EVENT_KIND_PART)
	if !p.User.Self || p.Channel != testRoom || p.Text != "done" {
		t.Fatalf("self part (room JID in another case) %v", p)
	}
}

func TestJoinRefused(t *testing.T) {
	tr := newTestTracker()
	done, _ := tr.startJoin(testRoom, "bot")
	evs := feed(t, tr, `<presence from='`+testRoom+`/bot' type='error'><error type='auth'><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>password</text></error></presence>`)
	if len(evs) != 0 {
		t.Fatalf("error presence emitted %v", evs)
	}
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "not-authorized (password)") {
		t.Fatalf("join error %v", err)
	}
	if _, _, ok := tr.room(testRoom); ok {
		t.Fatal("refused room still tracked")
	}
	// A fresh attempt is possible after a timeout too.
	_, _ = tr.startJoin(testRoom, "bot")
	tr.abandonJoin(testRoom)
	if _, _, ok := tr.room(testRoom); ok {
		t.Fatal("abandoned join still tracked")
	}
}

func TestMessages(t *testing.T) {
	tr := joined(t)
	feed(t, tr, occ("eve", "eve@example/x", "none", "participant"))
	m := one(t, feed(t, tr, `<message from='`+testRoom+`/eve' type='groupchat' id='c1'><body>hi all</body><stanza-id xmlns='urn:xmpp:sid:0' by='evil@example' id='forged'/><stanza-id xmlns='urn:xmpp:sid:0' by='`+testRoom+`' id='S1'/><origin-id xmlns='urn:xmpp:sid:0' id='O1'/></message>`), quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if m.Id != "sid:"+testRoom+":S1" || m.Text != "hi all" || m.Channel != testRoom || m.User.Persistent != "eve@example" || m.Private {
		t.Fatalf("groupchat %v", m)
	}
	m = one(t, feed(t, tr, `<message from='`+testRoom+`/eve' type='groupchat' id='c2'><body>/me waves</body><origin-id xmlns='urn:xmpp:sid:0' id='O2'/></message>`), quiltv1.EventKind_EVENT_KIND_ACTION)
	if m.Id != "oid:"+testRoom+"/eve:O2" || m.Text != "waves" {
		t.Fatalf("emote %v", m)
	}
	m = one(t, feed(t, tr, `<message from='`+testRoom+`/eve' type='groupchat' id='c3'><body>no ids</body></message>`), quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if m.Id != "" {
		t.Fatalf("the id attribute must not become the event id: %v", m)
	}
	m = one(t, feed(t, tr, `<message from='`+testRoom+`' type='groupchat'><body>room is now logged</body></message>`), quiltv1.EventKind_EVENT_KIND_NOTICE)
	if m.User.Transient != testRoom {
		t.Fatalf("room notice %v", m)
	}
	tp := one(t, feed(t, tr, `<message from='`+testRoom+`/eve' type='groupchat'><subject>new</subject></message>`), quiltv1.EventKind_EVENT_KIND_TOPIC)
	if tp.Text != "new" || tp.User.Transient != testRoom+"/eve" {
		t.Fatalf("topic %v", tp)
	}
	tp = one(t, feed(t, tr, `<message from='`+testRoom+`/eve' type='groupchat'><subject/></message>`), quiltv1.EventKind_EVENT_KIND_TOPIC)
	if tp.Text != "" {
		t.Fatalf("cleared topic %v", tp)
	}
	pm := one(t, feed(t, tr, `<message from='`+testRoom+`/eve' type='chat'><body>psst</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>`), quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if !pm.Private || pm.User.Transient != testRoom+"/eve" || pm.User.Persistent != "eve@example" || pm.TargetUser.Transient != "bot@example/quilt" {
		t.Fatalf("MUC private message %v", pm)
	}
	dm := one(t, feed(t, tr, `<message from='frank@example/laptop' type='chat'><body>direct</body><nick xmlns='http://jabber.org/protocol/nick'>Frank</nick><stanza-id xmlns='urn:xmpp:sid:0' by='bot@example' id='A1'/></message>`), quiltv1.EventKind_EVENT_KIND_MESSAGE)
	if u := dm.User; !dm.Private || u.Transient != "frank@example/laptop" || u.Persistent != "frank@example" || u.Group != "frank@example" || u.Display != "Frank" || dm.Id != "sid:bot@example:A1" {
		t.Fatalf("direct message %v", dm)
	}
	dm = one(t, feed(t, tr, `<message from='news@example' type='headline'><body>extra</body><delay xmlns='urn:xmpp:delay' stamp='2025-05-06T07:08:09Z'/></message>`), quiltv1.EventKind_EVENT_KIND_NOTICE)
	if dm.Time.AsTime() != time.Date(2025, 5, 6, 7, 8, 9, 0, time.UTC) || dm.User.Display != "news" {
		t.Fatalf("headline %v", dm)
	}
	for _, x := range []string{
		`<message from='frank@example/laptop' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>`,
		`<message from='frank@example/laptop' type='error'><body>x</body><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>`,
		`<message from='other@muc.example/x' type='groupchat'><body>not our room</body></message>`,
	} {
		if evs := feed(t, tr, x); len(evs) != 0 {
			t.Fatalf("%s: want nothing, got %v", x, evs)
		}
	}
}

func TestHistoryBeforeSubjectDropped(t *testing.T) {
	tr := newTestTracker()
	_, _ = tr.startJoin(testRoom, "bot")
	feed(t, tr, occ("bot", "", "owner", "moderator", "110"))
	if evs := feed(t, tr, `<message from='`+testRoom+`/eve' type='groupchat'><body>old</body><delay xmlns='urn:xmpp:delay' stamp='2020-01-01T00:00:00Z'/></message>`); len(evs) != 0 {
		t.Fatalf("history emitted %v", evs)
	}
}

func TestContactPresence(t *testing.T) {
	tr := newTestTracker()
	p := one(t, feed(t, tr, `<presence from='frank@example/laptop'><show>dnd</show></presence>`), quiltv1.EventKind_EVENT_KIND_PRESENCE)
	if p.Text != "dnd" || p.User.Persistent != "frank@example" {
		t.Fatalf("contact presence %v", p)
	}
	p = one(t, feed(t, tr, `<presence from='frank@example/laptop' type='unavailable'/>`), quiltv1.EventKind_EVENT_KIND_PRESENCE)
	if p.Text != "unavailable" {
		t.Fatalf("contact offline %v", p)
	}
	for _, x := range []string{`<presence from='frank@example' type='subscribe'/>`, `<presence from='bot@example/quilt'/>`} {
		if evs := feed(t, tr, x); len(evs) != 0 {
			t.Fatalf("%s: want nothing, got %v", x, evs)
		}
	}
}

// FuzzStanza: no input may panic the parser or the tracker, in or out of
// a joined room.
func FuzzStanza(f *testing.F) {
	f.Add(occ("carol", "carol@example/phone", "member", "participant", "303"))
	f.Add(`<message from='` + testRoom + `/eve' type='groupchat'><body>/me x</body><stanza-id xmlns='urn:xmpp:sid:0' by='` + testRoom + `' id='1'/></message>`)
	f.Add(`<presence from='` + testRoom + `/bot' type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><item nick=''/><status code='303'/><status code='110'/></x></presence>`)
	f.Add(`<message from='` + testRoom + `' type='groupchat'><subject/></message>`)
	f.Add(`<presence from='/' type='error'><error/></presence>`)
	f.Fuzz(func(t *testing.T, x string) {
		st, err := parseStanza([]byte(x))
		if err != nil {
			return
		}
		tr := joined(t)
		for _, e := range tr.handle(st, t0) {
			if e.Kind == quiltv1.EventKind_EVENT_KIND_UNSPECIFIED || e.User == nil || e.User.Transient == "" && e.Kind != quiltv1.EventKind_EVENT_KIND_PRESENCE {
				t.Fatalf("bad event %v from %q", e, x)
			}
		}
		_ = newTestTracker().handle(st, t0)
	})
}

// BenchmarkInbound is the inbound path of a busy room: decode a groupchat
// stanza and turn it into an event.
func BenchmarkInbound(b *testing.B) {
	tr := newTestTracker()
	_, _ = tr.startJoin(testRoom, "bot")
	st, _ := parseStanza([]byte(occ("bot", "", "owner", "moderator", "110")))
	tr.handle(st, t0)
	msg := []byte(`<message xmlns='jabber:client' from='` + testRoom + `/eve' to='bot@example/quilt' type='groupchat' id='c1'><body>hello everyone, how is the release going?</body><stanza-id xmlns='urn:xmpp:sid:0' by='` + testRoom + `' id='S1'/><origin-id xmlns='urn:xmpp:sid:0' id='O1'/></message>`)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		st, err := parseStanza(msg)
		if err != nil {
			b.Fatal(err)
		}
		if evs := tr.handle(st, t0); len(evs) != 1 {
			b.Fatal(evs)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "stanzas/s")
}
