package matrix

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
)

// Membership values of m.room.member (spec names).
const (
	memberJoin   = "join"
	memberLeave  = "leave"
	memberBan    = "ban"
	memberInvite = "invite"
)

// Power levels at or above these give the MEMBERS/MODE mode names (the
// usual Element thresholds).
const (
	powerAdmin = 100
	powerMod   = 50
)

// tracker turns /sync responses into quilt events. It is I/O-free (the
// caller passes the time and gets events back) and keeps, per room, what
// seed 002 asks for: room → members with their membership and displayname
// (user → rooms is the same data read the other way: roomsOf), and the
// RoomInfo fields (id, name, topic, canonical alias, member count).
//
// Two kinds of input, on purpose treated differently:
//
//   - Room state the server hands over as a snapshot (a sync's `state`
//     section, and the timeline before the bot's own join or, on the very
//     first sync, the whole timeline) rebuilds the room idempotently and is
//     never emitted event by event: it is history. What the bot knows after
//     it goes up as one MEMBERS and one CHANNEL_INFO event named after the
//     newest state event they reflect, so sending the same state again (a
//     restart, a re-join into an unchanged room) is a duplicate for the
//     store.
//   - Every other timeline event is handled at most once: its (room, event
//     id) is checked against the processed record and recorded before it
//     changes any state or is emitted (seed 002). A re-sent event is dropped
//     whole: no event, no state change.
type tracker struct {
	self   string // the bot's MXID
	server string // [server NAME], part of snapshot ids
	rooms  map[string]*room
	seen   *processed
}

type room struct {
	id      string
	joined  bool // the bot is in the room and its events are live
	members map[string]*member
	name    string
	topic   string
	topicBy string
	topicAt time.Time
	alias   string
	power   map[string]int
	powerDf int

	// The events that set the current state, for snapshot ids.
	memberEv map[string]evRef
	powerEv  evRef
	infoEv   map[string]evRef // by event type: name, topic, alias, create
}

// evRef names a state event and orders it (origin_server_ts, then id).
type evRef struct {
	id string
	ts int64
}

func (a evRef) after(b evRef) bool { return a.ts > b.ts || (a.ts == b.ts && a.id > b.id) }

func newest(refs ...evRef) evRef {
	var n evRef
	for _, r := range refs {
		if r.id != "" && (n.id == "" || r.after(n)) {
			n = r
		}
	}
	return n
}

type member struct {
	membership string
	display    string // m.room.member content.displayname
}

func newTracker(self, server string) *tracker {
	return &tracker{self: self, server: server, rooms: map[string]*room{}, seen: newProcessed()}
}

func newRoom(id string) *room {
	return &room{id: id, members: map[string]*member{}, power: map[string]int{},
		memberEv: map[string]evRef{}, infoEv: map[string]evRef{}}
}

// syncResult is what one /sync response asks the client to do.
type syncResult struct {
	Events []*quiltv1.Event
	// Invites lists rooms the bot is invited to, sorted.
	Invites []string
}

// apply processes one /sync response. history is true for the first sync
// of a bot that has no stored since-token: everything in it happened before
// quilt was watching, so rooms are recorded but no timeline event is
// emitted as new.
func (t *tracker) apply(resp *mautrix.RespSync, history bool, now time.Time) syncResult {
	var res syncResult
	for _, id := range sortedKeys(resp.Rooms.Join) {
		jr := resp.Rooms.Join[id]
		t.syncRoom(string(id), jr.State.Events, jr.Timeline.Events, jr.Timeline.Limited, history, false, now, &res.Events)
	}
	for _, id := range sortedKeys(resp.Rooms.Leave) {
		lr := resp.Rooms.Leave[id]
		t.syncRoom(string(id), lr.State.Events, lr.Timeline.Events, lr.Timeline.Limited, history, true, now, &res.Events)
	}
	for _, id := range sortedKeys(resp.Rooms.Invite) {
		if r := t.rooms[string(id)]; r == nil || !r.joined {
			res.Invites = append(res.Invites, string(id))
		}
	}
	return res
}

func (t *tracker) syncRoom(id string, state, timeline []*event.Event, limited, history, left bool, now time.Time, out *[]*quiltv1.Event) {
	r := t.rooms[id]
	if r == nil {
		r = newRoom(id)
		t.rooms[id] = r
	}
	wasJoined := r.joined
	for _, ev := range state {
		ev.RoomID = "" // sync omits it; never trust a stray one
		if ev.ID != "" {
			t.seen.add(id, string(ev.ID), now)
		}
		r.applyState(ev)
	}
	if !history && !left {
		switch {
		case !wasJoined && r.member(t.self) == memberJoin:
			// The bot is in the room as of the state snapshot (restart with
			// full_state, or a join that fell in a limited gap).
			r.joined = true
			*out = append(*out, t.snapshot(r, now, "")...)
		case wasJoined && limited && len(state) > 0:
			// A gap: the state section is what changed in it. Refresh.
			*out = append(*out, t.snapshot(r, now, "")...)
		}
	}
	for _, ev := range timeline {
		ev.RoomID = ""
		fresh := ev.ID == "" || t.seen.add(id, string(ev.ID), now)
		if history || !r.joined {
			// Before the bot is (back) in the room: rebuild state only.
			// Applying an already processed state event again is harmless
			// here: it sets a value, and the room was dropped when the bot
			// left, so nothing is counted twice.
			// Only a fresh join of the bot makes the room live: an old one
			// re-sent in the history of a re-join is followed by the old
			// kick or leave, and must not revive the room in between.
			r.applyState(ev)
			if !history && fresh && t.isSelfJoin(ev) {
				r.joined = true
				*out = append(*out, t.selfJoin(r, ev, now))
				*out = append(*out, t.snapshot(r, now, string(ev.ID))...)
			}
			continue
		}
		if !fresh {
			continue
		}
		*out = append(*out, t.handle(r, ev, now)...)
	}
	if !left && !r.joined && r.member(t.self) == memberJoin {
		// In the room after all (first sync; or a join processed before):
		// record what is known now.
		r.joined = true
		*out = append(*out, t.snapshot(r, now, "")...)
	}
	if left {
		if r.joined {
			// The leave itself was not in the (limited) timeline.
			ev := t.base(quiltv1.EventKind_EVENT_KIND_PART, r, t.self, now)
			ev.Text = "left the room"
			*out = append(*out, ev)
		}
		delete(t.rooms, id)
	}
}

// handle applies one fresh timeline event of a joined room and returns the
// quilt events it stands for (none for kinds quilt does not follow).
func (t *tracker) handle(r *room, ev *event.Event, now time.Time) []*quiltv1.Event {
	sender := string(ev.Sender)
	switch ev.Type.Type {
	case event.EventMessage.Type:
		var c struct {
			MsgType string `json:"msgtype"`
			Body    string `json:"body"`
		}
		if json.Unmarshal(ev.Content.VeryRaw, &c) != nil || c.MsgType == "" {
			return nil // redacted or malformed: nothing to show
		}
		kind := quiltv1.EventKind_EVENT_KIND_MESSAGE
		switch c.MsgType {
		case string(event.MsgNotice):
			kind = quiltv1.EventKind_EVENT_KIND_NOTICE
		case string(event.MsgEmote):
			kind = quiltv1.EventKind_EVENT_KIND_ACTION
		}
		e := t.event(kind, r, ev, sender, now)
		e.Text = c.Body
		e.Tags = map[string]string{"msgtype": c.MsgType}
		return []*quiltv1.Event{e}
	case event.StateMember.Type:
		return t.handleMember(r, ev, now)
	case event.StateTopic.Type:
		r.applyState(ev)
		e := t.event(quiltv1.EventKind_EVENT_KIND_TOPIC, r, ev, sender, now)
		e.Text = r.topic
		e.ChannelInfo = r.info()
		return []*quiltv1.Event{e}
	case event.StateRoomName.Type, event.StateCanonicalAlias.Type:
		r.applyState(ev)
		e := t.event(quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO, r, ev, sender, now)
		e.ChannelInfo = r.info()
		if ev.Type == event.StateRoomName {
			e.Text = r.name
		} else {
			e.Text = r.alias
		}
		return []*quiltv1.Event{e}
	case event.StatePowerLevels.Type:
		before := map[string][]string{}
		for mx, m := range r.members {
			if m.membership == memberJoin {
				before[mx] = r.modes(mx)
			}
		}
		r.applyState(ev)
		var out []*quiltv1.Event
		for _, mx := range sortedMembers(before) {
			after := r.modes(mx)
			if strings.Join(after, ",") == strings.Join(before[mx], ",") {
				continue
			}
			e := t.event(quiltv1.EventKind_EVENT_KIND_MODE, r, ev, sender, now)
			if len(out) > 0 {
				// One Matrix event, several quilt events: only the first
				// may carry the Matrix id, the rest are derived from it.
				e.Id = string(ev.ID) + "/" + mx
			}
			e.TargetUser = t.user(r, mx)
			e.Members = []*quiltv1.Member{{User: t.user(r, mx), Modes: after}}
			e.Text = fmt.Sprintf("power %d", r.level(mx))
			out = append(out, e)
		}
		return out
	default:
		if ev.StateKey != nil {
			r.applyState(ev)
		}
		return nil
	}
}

func (t *tracker) handleMember(r *room, ev *event.Event, now time.Time) []*quiltv1.Event {
	if ev.StateKey == nil {
		return nil
	}
	target := *ev.StateKey
	sender := string(ev.Sender)
	prev := r.members[target]
	prevM, prevDisplay := "", ""
	if prev != nil {
		prevM, prevDisplay = prev.membership, prev.display
	}
	c := memberContent(ev)
	r.applyState(ev)
	switch c.Membership {
	case memberJoin:
		if prevM != memberJoin {
			e := t.event(quiltv1.EventKind_EVENT_KIND_JOIN, r, ev, target, now)
			return []*quiltv1.Event{e}
		}
		if c.Displayname != prevDisplay {
			// A displayname change is Matrix's rename: the MXID (transient
			// name) stays, the display name changes. It goes up as NICK from
			// the old to the new display name so that the runtime updates
			// the user and history shows "X is now known as Y"; one per
			// room, since Matrix sends one member event per room.
			e := t.event(quiltv1.EventKind_EVENT_KIND_NICK, r, ev, target, now)
			e.User.Display = displayOr(prevDisplay, target)
			e.TargetUser = t.user(r, target)
			e.Text = e.TargetUser.Display
			return []*quiltv1.Event{e}
		}
		return nil // avatar or other profile change
	case memberLeave, memberBan:
		if prevM != memberJoin && c.Membership == memberLeave {
			return nil // an invite declined or withdrawn
		}
		var e *quiltv1.Event
		if sender == target && c.Membership == memberLeave {
			e = t.event(quiltv1.EventKind_EVENT_KIND_PART, r, ev, target, now)
		} else {
			e = t.event(quiltv1.EventKind_EVENT_KIND_KICK, r, ev, sender, now)
			e.TargetUser = t.user(r, target)
		}
		if e.User != nil && e.User.Transient == target {
			e.User.Display = displayOr(prevDisplay, target)
		}
		if e.TargetUser != nil {
			e.TargetUser.Display = displayOr(prevDisplay, target)
		}
		e.Text = c.Reason
		e.Tags = map[string]string{"membership": c.Membership}
		if target == t.self {
			// Seed 002: kicked, banned or gone, the bot drops everything it
			// knew of the room; the runtime clears its map on this event.
			r.reset()
		}
		return []*quiltv1.Event{e}
	}
	return nil // invite, knock
}

func (t *tracker) isSelfJoin(ev *event.Event) bool {
	return ev.Type.Type == event.StateMember.Type && ev.StateKey != nil && *ev.StateKey == t.self &&
		memberContent(ev).Membership == memberJoin
}

// selfJoin is the JOIN of the bot itself, carrying the RoomInfo.
func (t *tracker) selfJoin(r *room, ev *event.Event, now time.Time) *quiltv1.Event {
	e := t.event(quiltv1.EventKind_EVENT_KIND_JOIN, r, ev, t.self, now)
	e.ChannelInfo = r.info()
	return e
}

// snapshot returns the MEMBERS and CHANNEL_INFO events for what is known of
// r. Each takes the id of the newest Matrix state event it reflects (the
// member or power-levels event, resp. the name, topic, alias or create
// event, that last changed it): the state after a given event is always the
// same, so the id is stable across replays. On a restart the room's newest
// state event is usually stored already (as the JOIN, KICK or TOPIC it was
// handled as, or as an earlier snapshot), so the store drops the snapshot
// as a duplicate and the room's stored events do not change, while the
// runtime, whose maps were cleared, still receives it. afterJoin is the
// bot's JOIN emitted in the same batch: its id cannot be reused there, and
// the JOIN already carries the RoomInfo.
func (t *tracker) snapshot(r *room, now time.Time, afterJoin string) []*quiltv1.Event {
	var ms []*quiltv1.Member
	h := sha256.New()
	var refs []evRef
	for _, mx := range r.joinedMembers() {
		u := t.user(r, mx)
		modes := r.modes(mx)
		ms = append(ms, &quiltv1.Member{User: u, Modes: modes})
		fmt.Fprintf(h, "%s\x00%s\x00%s\n", mx, u.Display, strings.Join(modes, ","))
	}
	for _, ref := range r.memberEv {
		refs = append(refs, ref)
	}
	members := t.base(quiltv1.EventKind_EVENT_KIND_MEMBERS, r, t.self, now)
	members.Members = ms
	members.Id = newest(append(refs, r.powerEv)...).id
	if members.Id == "" || members.Id == afterJoin {
		members.Id = t.snapshotID(r, "members", h.Sum(nil))
	}
	if afterJoin != "" {
		return []*quiltv1.Event{members}
	}
	info := r.info()
	ci := t.base(quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO, r, t.self, now)
	ci.ChannelInfo = info
	refs = refs[:0]
	for _, ref := range r.infoEv {
		refs = append(refs, ref)
	}
	ci.Id = newest(refs...).id
	if ci.Id == "" {
		ib, _ := json.Marshal([]any{info.Name, info.DisplayName, info.Topic, info.TopicSetBy, info.CanonicalAlias, info.MemberCount})
		ih := sha256.Sum256(ib)
		ci.Id = t.snapshotID(r, "info", ih[:])
	}
	return []*quiltv1.Event{members, ci}
}

// snapshotID is the fallback id, a hash of the content; it cannot collide
// with a Matrix event id, which starts with '$'.
func (t *tracker) snapshotID(r *room, what string, sum []byte) string {
	return "state:" + t.server + ":" + r.id + ":" + what + ":" + hex.EncodeToString(sum[:12])
}

// event starts a quilt event for Matrix event ev, done by who in r.
func (t *tracker) event(k quiltv1.EventKind, r *room, ev *event.Event, who string, now time.Time) *quiltv1.Event {
	e := t.base(k, r, who, now)
	e.Id = string(ev.ID)
	if ev.Timestamp > 0 {
		e.Time = timestamppb.New(time.UnixMilli(ev.Timestamp))
	}
	return e
}

func (t *tracker) base(k quiltv1.EventKind, r *room, who string, now time.Time) *quiltv1.Event {
	ts := timestamppb.New(now)
	return &quiltv1.Event{Kind: k, Channel: r.id, User: t.user(r, who), Time: ts, Received: ts}
}

// user names mxid the four ways (DESIGN.md §4): the MXID is transient,
// persistent and group; the display name is the room's displayname, or the
// MXID's localpart when the member set none.
func (t *tracker) user(r *room, mxid string) *quiltv1.User {
	d := ""
	if m := r.members[mxid]; m != nil {
		d = m.display
	}
	return &quiltv1.User{Transient: mxid, Persistent: mxid, Group: mxid, Display: displayOr(d, mxid), Self: mxid == t.self}
}

// roomsOf lists the rooms mxid is joined to, sorted (seed 002's user →
// rooms).
func (t *tracker) roomsOf(mxid string) []string {
	var out []string
	for id, r := range t.rooms {
		if r.joined && r.member(mxid) == memberJoin {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// Room is a copy of the RoomInfo and joined members the tracker holds for
// a room, for tests and diagnostics.
type Room struct {
	Info    *quiltv1.ChannelInfo
	Members []string
}

func (t *tracker) room(id string) (Room, bool) {
	r := t.rooms[id]
	if r == nil || !r.joined {
		return Room{}, false
	}
	return Room{Info: r.info(), Members: r.joinedMembers()}, true
}

// ---- room state ----

func (r *room) reset() {
	*r = *newRoom(r.id)
}

func (r *room) member(mxid string) string {
	if m := r.members[mxid]; m != nil {
		return m.membership
	}
	return ""
}

func (r *room) joinedMembers() []string {
	var out []string
	for mx, m := range r.members {
		if m.membership == memberJoin {
			out = append(out, mx)
		}
	}
	sort.Strings(out)
	return out
}

func (r *room) level(mxid string) int {
	if l, ok := r.power[mxid]; ok {
		return l
	}
	return r.powerDf
}

func (r *room) modes(mxid string) []string {
	switch l := r.level(mxid); {
	case l >= powerAdmin:
		return []string{"admin"}
	case l >= powerMod:
		return []string{"mod"}
	}
	return nil
}

func (r *room) info() *quiltv1.ChannelInfo {
	ci := &quiltv1.ChannelInfo{
		Name:           r.id,
		DisplayName:    r.name,
		Topic:          r.topic,
		TopicSetBy:     r.topicBy,
		CanonicalAlias: r.alias,
		MemberCount:    int32(len(r.joinedMembers())),
	}
	if !r.topicAt.IsZero() {
		ci.TopicSetAt = timestamppb.New(r.topicAt)
	}
	return ci
}

type memberFields struct {
	Membership  string `json:"membership"`
	Displayname string `json:"displayname"`
	Reason      string `json:"reason"`
}

func memberContent(ev *event.Event) memberFields {
	var c memberFields
	_ = json.Unmarshal(ev.Content.VeryRaw, &c)
	return c
}

// applyState records a state event's effect on r. It sets values only, so
// applying the same event twice leaves r as applying it once.
func (r *room) applyState(ev *event.Event) {
	if ev.StateKey == nil {
		return
	}
	raw := ev.Content.VeryRaw
	ref := evRef{id: string(ev.ID), ts: ev.Timestamp}
	switch ev.Type.Type {
	case event.StateMember.Type:
		c := memberContent(ev)
		if c.Membership == "" {
			return
		}
		r.members[*ev.StateKey] = &member{membership: c.Membership, display: c.Displayname}
		r.memberEv[*ev.StateKey] = ref
	case event.StateCreate.Type:
		r.infoEv[ev.Type.Type] = ref
	case event.StateTopic.Type:
		var c struct {
			Topic string `json:"topic"`
		}
		_ = json.Unmarshal(raw, &c)
		r.topic, r.topicBy = c.Topic, string(ev.Sender)
		r.infoEv[ev.Type.Type] = ref
		if ev.Timestamp > 0 {
			r.topicAt = time.UnixMilli(ev.Timestamp)
		}
	case event.StateRoomName.Type:
		var c struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(raw, &c)
		r.name = c.Name
		r.infoEv[ev.Type.Type] = ref
	case event.StateCanonicalAlias.Type:
		var c struct {
			Alias string `json:"alias"`
		}
		_ = json.Unmarshal(raw, &c)
		r.alias = c.Alias
		r.infoEv[ev.Type.Type] = ref
	case event.StatePowerLevels.Type:
		var c struct {
			Users        map[string]int `json:"users"`
			UsersDefault int            `json:"users_default"`
		}
		_ = json.Unmarshal(raw, &c)
		r.power = c.Users
		if r.power == nil {
			r.power = map[string]int{}
		}
		r.powerDf = c.UsersDefault
		r.powerEv = ref
	}
}

// ---- helpers ----

func displayOr(display, mxid string) string {
	if display != "" {
		return display
	}
	return localpart(mxid)
}

// localpart is "alice" for "@alice:example.org".
func localpart(mxid string) string {
	s := strings.TrimPrefix(mxid, "@")
	if i := strings.IndexByte(s, ':'); i >= 0 {
		s = s[:i]
	}
	return s
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func sortedMembers(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
