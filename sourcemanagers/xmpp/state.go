package xmpp

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// tracker is the I/O-free half of the driver: decoded stanzas in, quilt
// events out. It knows the MUC rooms the session joined and their
// occupants. Run feeds it from one goroutine; Do asks it about rooms from
// others, hence the lock.
type tracker struct {
	mu   sync.Mutex
	self *quiltv1.User // the bound full JID
	// rooms by lower-cased bare room JID (JID local and domain parts are
	// case-insensitive; the server may echo another case).
	rooms map[string]*room
	warn  func(msg string, args ...any)
}

type room struct {
	name        string // the room JID as joined: Event.Channel
	nick        string // our nick in the room
	joined      bool   // our own presence (status 110) arrived
	subjectSeen bool   // the subject that ends the join sequence arrived
	occupants   map[string]*occupant
	done        chan error // join outcome, buffered; nil once reported
}

type occupant struct {
	nick, real, role, affiliation, show, status string
}

func newTracker(self *quiltv1.User, warn func(string, ...any)) *tracker {
	if warn == nil {
		warn = func(string, ...any) {}
	}
	return &tracker{self: self, rooms: map[string]*room{}, warn: warn}
}

func roomKey(bare string) string { return strings.ToLower(bare) }

// errJoined says a JOIN needs no stanza: the room is joined already.
var errJoined = errors.New("already joined")

// startJoin records a join in progress; the returned channel gets its
// outcome (nil once our own presence arrives, else the error).
func (t *tracker) startJoin(name, nick string) (<-chan error, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := roomKey(name)
	if r := t.rooms[k]; r != nil {
		if r.joined {
			return nil, errJoined
		}
		return r.done, nil // a join is already under way: wait for it too
	}
	r := &room{name: name, nick: nick, occupants: map[string]*occupant{}, done: make(chan error, 1)}
	t.rooms[k] = r
	return r.done, nil
}

// abandonJoin forgets a join that timed out, so a later JOIN tries again.
func (t *tracker) abandonJoin(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.rooms[roomKey(name)]; r != nil && !r.joined {
		delete(t.rooms, roomKey(name))
	}
}

// room returns the room's name as joined and our nick in it.
func (t *tracker) room(name string) (string, string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.rooms[roomKey(bareJID(name))]; r != nil {
		return r.name, r.nick, true
	}
	return "", "", false
}

func (r *room) finishJoin(err error) {
	if r.done != nil {
		r.done <- err
		r.done = nil
	}
}

// handle turns one stanza into events (none for most presence noise).
func (t *tracker) handle(st *stanza, now time.Time) []*quiltv1.Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.From == "" {
		// RFC 6120 §8.1.2.1: no from means our own account (mellium also
		// blanks a from equal to our bare JID).
		st.From = t.self.Persistent
	}
	switch st.XMLName.Local {
	case "presence":
		return t.presence(st, now)
	case "message":
		return t.message(st, now)
	}
	return nil
}

func (t *tracker) occUser(r *room, o *occupant) *quiltv1.User {
	tr := r.name + "/" + o.nick
	id := tr
	if o.real != "" {
		id = bareJID(o.real)
	}
	return &quiltv1.User{Transient: tr, Persistent: id, Display: o.nick, Group: id, Self: o.nick == r.nick}
}

// roomUser stands for the room itself (service messages, kicks by an
// unnamed moderator).
func roomUser(r *room) *quiltv1.User {
	return &quiltv1.User{Transient: r.name, Persistent: r.name, Display: localpart(r.name), Group: r.name}
}

func contactUser(full, nick string) *quiltv1.User {
	b := bareJID(full)
	if nick == "" {
		nick = localpart(full)
	}
	return &quiltv1.User{Transient: full, Persistent: b, Display: nick, Group: b}
}

func ev(kind quiltv1.EventKind, now time.Time, u *quiltv1.User) *quiltv1.Event {
	return &quiltv1.Event{Kind: kind, Time: timestamppb.New(now), User: u}
}

func modes(o *occupant) []string {
	var m []string
	for _, v := range []string{o.role, o.affiliation} {
		if v != "" && v != "none" {
			m = append(m, v)
		}
	}
	return m
}

func presenceText(show, status string) string {
	if show == "" {
		show = "available"
	}
	if status != "" {
		return show + ": " + status
	}
	return show
}

func (t *tracker) membersEvent(r *room, now time.Time) *quiltv1.Event {
	e := ev(quiltv1.EventKind_EVENT_KIND_MEMBERS, now, t.occUser(r, r.occupants[r.nick]))
	e.Channel = r.name
	nicks := make([]string, 0, len(r.occupants))
	for n := range r.occupants {
		nicks = append(nicks, n)
	}
	slices.Sort(nicks)
	for _, n := range nicks {
		o := r.occupants[n]
		e.Members = append(e.Members, &quiltv1.Member{User: t.occUser(r, o), Modes: modes(o)})
	}
	return e
}

func (t *tracker) presence(st *stanza, now time.Time) []*quiltv1.Event {
	bare, res := splitJID(st.From)
	k := roomKey(bare)
	r := t.rooms[k]
	if r == nil {
		return t.contactPresence(st, now)
	}
	if st.Type == "error" {
		if !r.joined {
			delete(t.rooms, k)
			r.finishJoin(fmt.Errorf("xmpp: join %s refused: %s", r.name, st.Error.Condition()))
		} else {
			t.warn("room presence error", "room", r.name, "error", st.Error.Condition())
		}
		return nil
	}
	if res == "" {
		return nil
	}
	it := st.item()
	self := st.hasStatus(110) || res == r.nick
	o := r.occupants[res]
	known := o != nil
	if !known {
		o = &occupant{nick: res}
	}

	if st.Type == "unavailable" {
		delete(r.occupants, res)
		if it.JID != "" {
			o.real = it.JID
		}
		u := t.occUser(r, o)
		u.Self = self
		if self && st.hasStatus(303) && it.Nick != "" {
			r.nick = it.Nick // our own nick change: the next presence is ours
		}
		if !r.joined {
			if self && !st.hasStatus(303) {
				delete(t.rooms, k)
				r.finishJoin(fmt.Errorf("xmpp: join %s: removed from the room before the join completed: %s", r.name, st.Status))
			}
			return nil
		}
		var e *quiltv1.Event
		switch {
		case st.hasStatus(303) && it.Nick != "":
			no := *o
			no.nick = it.Nick
			r.occupants[it.Nick] = &no
			e = ev(quiltv1.EventKind_EVENT_KIND_NICK, now, u)
			e.TargetUser = t.occUser(r, &no)
		case st.hasStatus(307) || st.hasStatus(301):
			actor := roomUser(r)
			if it.Actor != nil && it.Actor.Nick != "" {
				ao := r.occupants[it.Actor.Nick]
				if ao == nil {
					ao = &occupant{nick: it.Actor.Nick, real: it.Actor.JID}
				}
				actor = t.occUser(r, ao)
			}
			e = ev(quiltv1.EventKind_EVENT_KIND_KICK, now, actor)
			e.TargetUser = u
			e.Text = it.Reason
			if st.hasStatus(301) {
				e.Tags = map[string]string{"muc_status": "301", "ban": "true"}
			} else {
				e.Tags = map[string]string{"muc_status": "307"}
			}
		default:
			e = ev(quiltv1.EventKind_EVENT_KIND_PART, now, u)
			e.Text = it.Reason
			if e.Text == "" {
				e.Text = st.Status
			}
			for _, c := range []int{321, 322, 332} {
				if st.hasStatus(c) {
					e.Tags = map[string]string{"muc_status": fmt.Sprint(c)}
				}
			}
		}
		e.Channel = r.name
		if self && e.Kind != quiltv1.EventKind_EVENT_KIND_NICK {
			delete(t.rooms, k)
		}
		return []*quiltv1.Event{e}
	}

	// Available.
	oldModes, oldPres := modes(o), presenceText(o.show, o.status)
	if it.JID != "" {
		o.real = it.JID
	}
	o.role, o.affiliation, o.show, o.status = it.Role, it.Affiliation, st.Show, st.Status
	r.occupants[res] = o
	if self && res != r.nick {
		r.nick = res // status 210: the service changed our nick
	}
	if !r.joined {
		if !self {
			return nil // the roster before our own presence: MEMBERS below
		}
		r.joined = true
		r.finishJoin(nil)
		j := ev(quiltv1.EventKind_EVENT_KIND_JOIN, now, t.occUser(r, o))
		j.Channel = r.name
		j.ChannelInfo = &quiltv1.ChannelInfo{Name: r.name, MemberCount: int32(len(r.occupants))}
		return []*quiltv1.Event{j, t.membersEvent(r, now)}
	}
	u := t.occUser(r, o)
	if !known {
		e := ev(quiltv1.EventKind_EVENT_KIND_JOIN, now, u)
		e.Channel = r.name
		return []*quiltv1.Event{e}
	}
	if nm := modes(o); !slices.Equal(nm, oldModes) {
		e := ev(quiltv1.EventKind_EVENT_KIND_MODE, now, roomUser(r))
		e.Channel = r.name
		e.TargetUser = u
		e.Text = "role=" + o.role + " affiliation=" + o.affiliation
		e.Members = []*quiltv1.Member{{User: u, Modes: nm}}
		return []*quiltv1.Event{e}
	}
	if p := presenceText(o.show, o.status); p != oldPres {
		e := ev(quiltv1.EventKind_EVENT_KIND_PRESENCE, now, u)
		e.Channel = r.name
		e.Text = p
		return []*quiltv1.Event{e}
	}
	return nil
}

// contactPresence reports the presence of contacts (roster), not of our
// own resources, and ignores subscription requests: quilt does not manage
// the roster.
func (t *tracker) contactPresence(st *stanza, now time.Time) []*quiltv1.Event {
	if st.From == "" || st.From == t.self.Transient {
		return nil
	}
	var text string
	switch st.Type {
	case "":
		text = presenceText(st.Show, st.Status)
	case "unavailable":
		text = "unavailable"
		if st.Status != "" {
			text += ": " + st.Status
		}
	default:
		return nil
	}
	e := ev(quiltv1.EventKind_EVENT_KIND_PRESENCE, now, contactUser(st.From, st.Nick))
	e.Text = text
	return []*quiltv1.Event{e}
}

// eventID follows DESIGN §4: the server's XEP-0359 stanza-id when the
// entity we trust for it (the room, or our own account) assigned it, else
// the sender's origin-id; else empty, and the runtime numbers the event in
// the session. The plain id attribute is not used: clients choose it
// freely and many restart counters per connection, so it would make the
// store drop new messages as duplicates.
func eventID(st *stanza, by string) string {
	for _, s := range st.StanzaID {
		if s.ID != "" && strings.EqualFold(s.By, by) {
			return "sid:" + by + ":" + s.ID
		}
	}
	if st.OriginID != nil && st.OriginID.ID != "" {
		return "oid:" + st.From + ":" + st.OriginID.ID
	}
	return ""
}

func stamp(st *stanza, now time.Time) time.Time {
	if st.Delay != nil {
		if ts, err := time.Parse(time.RFC3339Nano, st.Delay.Stamp); err == nil {
			return ts
		}
	}
	return now
}

// splitMe turns a XEP-0245 "/me does" body into an ACTION.
func splitMe(body string) (quiltv1.EventKind, string) {
	if rest, ok := strings.CutPrefix(body, "/me "); ok {
		return quiltv1.EventKind_EVENT_KIND_ACTION, rest
	}
	return quiltv1.EventKind_EVENT_KIND_MESSAGE, body
}

func (t *tracker) message(st *stanza, now time.Time) []*quiltv1.Event {
	if st.Type == "error" {
		t.warn("message bounced", "from", st.From, "error", st.Error.Condition())
		return nil
	}
	bare, res := splitJID(st.From)
	r := t.rooms[roomKey(bare)]
	body, hasBody := st.body()
	if r != nil && st.Type == "groupchat" {
		who := roomUser(r)
		if res != "" {
			o := r.occupants[res]
			if o == nil {
				o = &occupant{nick: res}
			}
			who = t.occUser(r, o)
		}
		if st.Subject != nil && !hasBody {
			if !r.subjectSeen {
				// The subject that ends the join sequence: the current
				// topic, not a change.
				r.subjectSeen = true
				e := ev(quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO, now, who)
				e.Channel = r.name
				e.ChannelInfo = &quiltv1.ChannelInfo{Name: r.name, Topic: *st.Subject}
				if res != "" {
					e.ChannelInfo.TopicSetBy = who.Transient
				}
				return []*quiltv1.Event{e}
			}
			e := ev(quiltv1.EventKind_EVENT_KIND_TOPIC, stamp(st, now), who)
			e.Id = eventID(st, r.name)
			e.Channel = r.name
			e.Text = *st.Subject
			return []*quiltv1.Event{e}
		}
		if !hasBody || (st.Delay != nil && !r.subjectSeen) {
			return nil // no text, or history replayed on join
		}
		kind, text := splitMe(body)
		if res == "" {
			kind = quiltv1.EventKind_EVENT_KIND_NOTICE
		}
		e := ev(kind, stamp(st, now), who)
		e.Id = eventID(st, r.name)
		e.Channel = r.name
		e.Text = text
		return []*quiltv1.Event{e}
	}
	if !hasBody || st.Type == "groupchat" {
		return nil
	}
	var u *quiltv1.User
	if r != nil && res != "" {
		// A private message through the room (XEP-0045 §7.5).
		o := r.occupants[res]
		if o == nil {
			o = &occupant{nick: res}
		}
		u = t.occUser(r, o)
	} else {
		u = contactUser(st.From, st.Nick)
	}
	kind, text := splitMe(body)
	if st.Type == "headline" {
		kind = quiltv1.EventKind_EVENT_KIND_NOTICE
	}
	e := ev(kind, stamp(st, now), u)
	e.Id = eventID(st, t.self.Persistent)
	e.Private = true
	e.TargetUser = proto.Clone(t.self).(*quiltv1.User)
	e.Text = text
	return []*quiltv1.Event{e}
}
