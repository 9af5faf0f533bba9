// Package bzflag is quilt's BZFlag source-manager driver (protocol =
// bzflag): an I/O-free session speaking the bzfs 2.4 game protocol
// ("BZFS0221") as an observer, fed bytes by the runtime like the IRC
// session is fed lines.
//
// # Protocol
//
// The client writes "BZFLAG\r\n\r\n"; the server answers "BZFS0221" and one
// byte, our player id. From then on both sides exchange frames: uint16
// payload length, uint16 code (two ASCII letters), payload, big-endian. The
// session sends MsgEnter (type, team, callsign, motto, token, version as
// fixed NUL-padded fields); bzfs answers MsgAccept or MsgReject, then one
// MsgAddPlayer per player already there and finally one for us, followed
// by MsgPlayerInfo (registered/verified/admin bits). Chat is MsgMessage:
// from id, to id, type, NUL-terminated text. No UDP link is needed: bzfs
// serves TCP-only observers, and its periodic MsgGameTime and MsgLagPing
// (which the session echoes) show the link is alive.
//
// # Mapping
//
// Everybody on a game server shares one pseudo-channel, "game": the bot's
// MEMBERS of "game" is the player list, a player entering is a JOIN of
// "game" and one leaving a PART of it, so the runtime's member maps and
// presence queries work as for a chat channel. Chat to everybody is
// GAME_CHAT in "game", chat to a team GAME_CHAT in "team:<color>" (e.g.
// "team:red", "team:observer"), chat to admins GAME_CHAT in "admin", chat
// to the bot a private GAME_CHAT. Messages of the server itself (greeting,
// command answers, kick reasons) are NOTICEs from user "SERVER". A change
// of a player's registered/verified/admin bits is a MODE of "game" with
// the full resulting modes ("registered", "verified", "admin"); a player
// entering with any of them gets that MODE right after the JOIN, and the
// JOIN's tag "team" names the team. Names (seed 000): transient, display and group
// are the callsign; persistent is "+callsign" for a verified player (a
// global login checked by the list server), else the callsign.
//
// Actions: SEND to "game", "team:<color>", "admin" or a callsign
// (private); text starting with "/" is escaped so it is said, not run as a
// server command. RAW sends one server command line ("/lagstats"). JOIN of
// "game" is accepted (the bot is always in it); RECONNECT leaves and
// reconnects; the rest are Unimplemented. Event ids are left to the
// runtime (session id and sequence): bzfs messages carry no ids.
package bzflag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// GameChannel is the pseudo-channel every player of a server is in.
const GameChannel = "game"

// TeamChannelPrefix starts the channel of chat to one team: "team:red".
const TeamChannelPrefix = "team:"

// AdminChannel is chat to the server's admins.
const AdminChannel = "admin"

// ServerUser is the transient name of bzfs itself as a message source.
const ServerUser = "SERVER"

// Settings is what a session needs from the [server NAME] section.
type Settings struct {
	Callsign string
	// Team is a bzfs TeamColor (see TeamCode); observers see all chat
	// without taking part in the game.
	Team    int16
	Motto   string
	Version string // client version sent in MsgEnter
	// JoinTimeout bounds hello, MsgEnter and the player list.
	JoinTimeout time.Duration
	// IdleTimeout closes a link on which nothing arrived this long; bzfs
	// sends MsgGameTime every few seconds to every player.
	IdleTimeout time.Duration
	// PendingWait is how long a player's JOIN waits for the MsgPlayerInfo
	// that tells whether the callsign is verified (bzfs sends it right
	// after MsgAddPlayer, so this is only a fallback).
	PendingWait time.Duration
}

func (s *Settings) defaults() {
	if s.Version == "" {
		s.Version = "2.4.0 quilt"
	}
	if s.JoinTimeout <= 0 {
		s.JoinTimeout = 60 * time.Second
	}
	if s.IdleTimeout <= 0 {
		s.IdleTimeout = 120 * time.Second
	}
	if s.PendingWait <= 0 {
		s.PendingWait = 2 * time.Second
	}
}

// Errors a session closes the connection with; the runtime reports them in
// the DISCONNECTED event and reconnects with backoff.
var (
	ErrNotBZFS      = errors.New("bzflag: the peer is not a BZFlag server")
	ErrServerFull   = errors.New("bzflag: server full")
	ErrJoinTimeout  = errors.New("bzflag: joining the game timed out")
	ErrIdleTimeout  = errors.New("bzflag: nothing received from the server")
	ErrReconnect    = errors.New("bzflag: reconnect requested")
	ErrRemoved      = errors.New("bzflag: the server removed our player")
	ErrNotConnected = errors.New("bzflag: not in the game yet")
)

// VersionError is a server speaking another protocol version.
type VersionError struct{ Got string }

func (e *VersionError) Error() string {
	return fmt.Sprintf("bzflag: server speaks protocol %q, quilt speaks %q", e.Got, serverMagic+protocolVersion)
}

// RejectError is bzfs refusing MsgEnter (callsign in use, banned, team
// full...).
type RejectError struct {
	Code   uint16
	Reason string
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("bzflag: server rejected the join (code %d): %s", e.Code, e.Reason)
}

// KilledError is MsgSuperKill: the server dropped us. Reason is the last
// server message, which is where bzfs says why ("You were kicked ...").
type KilledError struct{ Reason string }

func (e *KilledError) Error() string {
	if e.Reason == "" {
		return "bzflag: the server disconnected us"
	}
	return "bzflag: the server disconnected us: " + e.Reason
}

// ActionError is an action the session cannot carry out; Code classifies
// it for the action result.
type ActionError struct {
	code codes.Code
	msg  string
}

func (e *ActionError) Error() string    { return e.msg }
func (e *ActionError) Code() codes.Code { return e.code }

func actionErr(c codes.Code, format string, a ...any) error {
	return &ActionError{code: c, msg: fmt.Sprintf(format, a...)}
}

type player struct {
	id        byte
	callsign  string
	team      int
	attrs     byte
	announced bool // its JOIN (or the initial MEMBERS) went out
}

type state int

const (
	stHello    state = iota // waiting for "BZFS0221" + id
	stEntering              // MsgEnter sent, waiting for our own MsgAddPlayer
	stJoined
	stClosed
)

// Session is one bzfs connection's protocol state. Not safe for concurrent
// use: the runtime serialises calls.
type Session struct {
	cfg runtime.SessionConfig
	set Settings
	log *slog.Logger

	buf   []byte
	state state
	myID  byte

	players map[byte]*player
	// pending players entered but are not announced yet: their JOIN waits
	// for the MsgPlayerInfo that says whether they are verified, so the
	// first event already carries the right persistent name.
	pending        []*player
	pendingInitial bool // CONNECTED + MEMBERS wait the same way
	pendingSince   time.Time
	held           []*quiltv1.Event // server messages that came before CONNECTED

	started       time.Time
	lastRecv      time.Time
	lastServerMsg string
}

// NewSession makes a session; it does nothing until Start.
func NewSession(cfg runtime.SessionConfig, set Settings) *Session {
	set.defaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Session{cfg: cfg, set: set, log: log, players: map[byte]*player{}}
}

var _ runtime.Session = (*Session)(nil)

// Joined reports whether the bot is in the game.
func (s *Session) Joined() bool { return s.state == stJoined }

// ID is the bot's player id (valid once the server said hello).
func (s *Session) ID() byte { return s.myID }

// Start sends the hello.
func (s *Session) Start(now time.Time) runtime.Output {
	s.started = now
	s.lastRecv = now
	return runtime.Output{Send: [][]byte{[]byte(clientHello)}, NextTick: now.Add(s.set.JoinTimeout)}
}

// Input feeds bytes from the server, in any chunking.
func (s *Session) Input(now time.Time, data []byte) runtime.Output {
	var out runtime.Output
	if s.state == stClosed {
		return out
	}
	s.lastRecv = now
	s.buf = append(s.buf, data...)
	off := 0
	if s.state == stHello {
		if len(s.buf) < helloLen {
			out.NextTick = s.nextTick()
			return out
		}
		s.hello(now, s.buf[:helloLen], &out)
		off = helloLen
	}
	for out.Close == nil && len(s.buf)-off >= headerLen {
		n := int(binary.BigEndian.Uint16(s.buf[off:]))
		if len(s.buf)-off < headerLen+n {
			break
		}
		code := binary.BigEndian.Uint16(s.buf[off+2:])
		s.handle(now, code, s.buf[off+headerLen:off+headerLen+n], &out)
		off += headerLen + n
	}
	if out.Close != nil {
		s.state = stClosed
		s.buf = nil
		return out
	}
	rest := copy(s.buf, s.buf[off:])
	s.buf = s.buf[:rest]
	out.NextTick = s.nextTick()
	return out
}

func (s *Session) hello(now time.Time, h []byte, out *runtime.Output) {
	if string(h[:4]) != serverMagic {
		out.Close = ErrNotBZFS
		return
	}
	if v := string(h[4:8]); v != protocolVersion {
		out.Close = &VersionError{Got: text(h[:8])}
		return
	}
	if h[8] == noPlayer {
		out.Close = ErrServerFull
		return
	}
	s.myID = h[8]
	s.state = stEntering
	out.Send = append(out.Send, frame(msgEnter, enterPayload(s.set.Team, s.set.Callsign, s.set.Motto, "", s.set.Version)))
}

// Tick enforces the join and idle timeouts and announces players whose
// MsgPlayerInfo never came.
func (s *Session) Tick(now time.Time) runtime.Output {
	var out runtime.Output
	switch s.state {
	case stClosed:
		return out
	case stHello, stEntering:
		if !now.Before(s.started.Add(s.set.JoinTimeout)) {
			out.Close = fmt.Errorf("%w after %s", ErrJoinTimeout, s.set.JoinTimeout)
			s.state = stClosed
			return out
		}
	case stJoined:
		if !now.Before(s.lastRecv.Add(s.set.IdleTimeout)) {
			out.Close = fmt.Errorf("%w in %s", ErrIdleTimeout, s.set.IdleTimeout)
			s.state = stClosed
			return out
		}
		if s.hasPending() && !now.Before(s.pendingSince.Add(s.set.PendingWait)) {
			s.flush(now, &out)
		}
	}
	out.NextTick = s.nextTick()
	return out
}

func (s *Session) hasPending() bool { return s.pendingInitial || len(s.pending) > 0 }

func (s *Session) nextTick() time.Time {
	if s.state != stJoined {
		return s.started.Add(s.set.JoinTimeout)
	}
	t := s.lastRecv.Add(s.set.IdleTimeout)
	if s.hasPending() {
		if p := s.pendingSince.Add(s.set.PendingWait); p.Before(t) {
			t = p
		}
	}
	return t
}

func (s *Session) handle(now time.Time, code uint16, p []byte, out *runtime.Output) {
	switch code {
	case msgAddPlayer, msgPlayerInfo, msgLagPing, msgTeamUpdate, msgGameTime, msgSetVar:
		// these may come between a MsgAddPlayer and its MsgPlayerInfo
	case msgMessage:
		// bzfs greets a new player between its MsgAddPlayer and the
		// MsgPlayerInfo; those server lines wait (see message) rather
		// than announce the player list before its attributes are known.
		if s.hasPending() && !(s.pendingInitial && len(p) > 0 && p[0] == serverPlayer) {
			s.flush(now, out)
		}
	default:
		if s.hasPending() {
			s.flush(now, out)
		}
	}
	switch code {
	case msgReject:
		e := &RejectError{}
		if len(p) >= 2 {
			e.Code = binary.BigEndian.Uint16(p)
			e.Reason = cString(p[2:])
		}
		out.Close = e
	case msgSuperKill:
		out.Close = &KilledError{Reason: s.lastServerMsg}
	case msgAddPlayer:
		s.addPlayer(now, p, out)
	case msgRemovePlayer:
		if len(p) < 1 {
			return
		}
		s.removePlayer(now, p[0], out)
	case msgPlayerInfo:
		s.playerInfo(now, p, out)
	case msgMessage:
		s.message(now, p, out)
	case msgLagPing:
		// bzfs measures lag from our echo and may drop players that never
		// answer (-lagdrop).
		out.Send = append(out.Send, frame(msgLagPing, p))
	}
}

// addPlayer: id u8, type u16, team u16, wins u16, losses u16, tks u16,
// callsign[32], motto[128].
func (s *Session) addPlayer(now time.Time, p []byte, out *runtime.Output) {
	const fixed = 1 + 5*2
	if len(p) < fixed+1 {
		return
	}
	id := p[0]
	cs := p[fixed:]
	if len(cs) > callsignLen {
		cs = cs[:callsignLen]
	}
	pl := &player{id: id, callsign: cString(cs), team: int(int16(binary.BigEndian.Uint16(p[3:])))}
	if pl.callsign == "" {
		return
	}
	if old := s.players[id]; old != nil && old.announced {
		// an id reused without MsgRemovePlayer: the old player is gone
		s.part(now, old, "replaced", out)
	}
	s.dropPending(id)
	s.players[id] = pl
	switch {
	case s.state == stEntering && id == s.myID:
		s.state = stJoined
		s.pendingInitial = true
		s.pendingSince = now
	case s.state == stJoined:
		if !s.hasPending() {
			s.pendingSince = now
		}
		s.pending = append(s.pending, pl)
	}
	// before our own MsgAddPlayer: the players already there, announced
	// all at once in the first MEMBERS
}

func (s *Session) dropPending(id byte) {
	for i, q := range s.pending {
		if q.id == id {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			return
		}
	}
}

func (s *Session) removePlayer(now time.Time, id byte, out *runtime.Output) {
	pl := s.players[id]
	if pl == nil {
		return
	}
	delete(s.players, id)
	s.dropPending(id)
	if id == s.myID && s.state == stJoined {
		out.Close = ErrRemoved
		return
	}
	if pl.announced {
		s.part(now, pl, "left the game", out)
	}
}

func (s *Session) part(now time.Time, pl *player, why string, out *runtime.Output) {
	s.emit(out, now, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_PART, User: s.user(pl), Channel: GameChannel, Text: why})
}

// playerInfo: count u8, then count × (id u8, attributes u8).
func (s *Session) playerInfo(now time.Time, p []byte, out *runtime.Output) {
	if len(p) < 1 {
		return
	}
	n := int(p[0])
	p = p[1:]
	for i := 0; i < n && len(p) >= 2; i++ {
		id, attrs := p[0], p[1]
		p = p[2:]
		pl := s.players[id]
		if pl == nil || pl.attrs == attrs {
			continue
		}
		before := pl.attrs
		pl.attrs = attrs
		if pl.announced {
			s.emit(out, now, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_MODE, User: s.user(pl), TargetUser: s.user(pl),
				Channel: GameChannel, Text: modeChange(before, attrs),
				Members: []*quiltv1.Member{{User: s.user(pl), Modes: s.modes(pl)}}})
		}
	}
	if s.hasPending() {
		s.flush(now, out)
	}
}

var attrNames = [...]struct {
	bit  byte
	name string
}{{attrRegistered, "registered"}, {attrVerified, "verified"}, {attrAdmin, "admin"}}

func modeChange(before, after byte) string {
	var parts []string
	for _, a := range attrNames {
		switch {
		case after&a.bit != 0 && before&a.bit == 0:
			parts = append(parts, "+"+a.name)
		case after&a.bit == 0 && before&a.bit != 0:
			parts = append(parts, "-"+a.name)
		}
	}
	return strings.Join(parts, " ")
}

// modes are a member's attributes: "registered", "verified", "admin".
func (s *Session) modes(pl *player) []string {
	var m []string
	for _, a := range attrNames {
		if pl.attrs&a.bit != 0 {
			m = append(m, a.name)
		}
	}
	return m
}

// flush announces pending players: the first time the bot's own entry
// with CONNECTED, its JOIN of "game" and MEMBERS; later a JOIN each.
func (s *Session) flush(now time.Time, out *runtime.Output) {
	if s.pendingInitial {
		s.pendingInitial = false
		self := s.players[s.myID]
		s.emit(out, now, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_CONNECTED, User: s.user(self),
			Text: fmt.Sprintf("in the game as player %d, team %s", s.myID, teamName(self.team))})
		s.emit(out, now, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_JOIN, User: s.user(self), Channel: GameChannel,
			ChannelInfo: &quiltv1.ChannelInfo{Name: GameChannel, MemberCount: int32(len(s.players))}})
		ids := make([]int, 0, len(s.players))
		for id := range s.players {
			ids = append(ids, int(id))
		}
		sort.Ints(ids)
		ev := &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_MEMBERS, User: s.user(self), Channel: GameChannel,
			ChannelInfo: &quiltv1.ChannelInfo{Name: GameChannel, MemberCount: int32(len(ids))}}
		for _, id := range ids {
			pl := s.players[byte(id)]
			pl.announced = true
			ev.Members = append(ev.Members, &quiltv1.Member{User: s.user(pl), Modes: s.modes(pl)})
		}
		s.emit(out, now, ev)
		out.Events = append(out.Events, s.held...)
		s.held = nil
		s.pending = s.pending[:0]
		return
	}
	for _, pl := range s.pending {
		pl.announced = true
		s.emit(out, now, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_JOIN, User: s.user(pl), Channel: GameChannel,
			Tags: map[string]string{"team": teamName(pl.team)}})
		if pl.attrs != 0 {
			// a JOIN carries no modes: the attributes follow as a MODE
			s.emit(out, now, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_MODE, User: s.user(pl), TargetUser: s.user(pl),
				Channel: GameChannel, Text: modeChange(0, pl.attrs),
				Members: []*quiltv1.Member{{User: s.user(pl), Modes: s.modes(pl)}}})
		}
	}
	s.pending = s.pending[:0]
}

// message: from u8, to u8, type u8, NUL-terminated text.
func (s *Session) message(now time.Time, p []byte, out *runtime.Output) {
	if len(p) < 3 || s.state != stJoined {
		return
	}
	from, to, typ := p[0], p[1], p[2]
	txt := stripANSI(cString(p[3:]))
	ev := &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_GAME_CHAT, Text: txt}
	switch {
	case from == serverPlayer:
		ev.Kind = quiltv1.EventKind_EVENT_KIND_NOTICE
		ev.User = &quiltv1.User{Transient: ServerUser, Display: ServerUser, Group: ServerUser, Persistent: ServerUser}
		if to == s.myID {
			s.lastServerMsg = txt
		}
	case s.players[from] != nil:
		ev.User = s.user(s.players[from])
	default:
		// a player we never saw enter (should not happen): name by slot
		n := "#" + strconv.Itoa(int(from))
		ev.User = &quiltv1.User{Transient: n, Display: n, Group: n, Persistent: n}
	}
	switch {
	case to == allPlayers:
		ev.Channel = GameChannel
	case to == adminPlayers:
		ev.Channel = AdminChannel
	case to > lastRealPlayer && to <= teamBase:
		ev.Channel = TeamChannelPrefix + teamName(teamBase-int(to))
	case to == serverPlayer:
		ev.Private = true
		ev.TargetUser = &quiltv1.User{Transient: ServerUser, Display: ServerUser, Group: ServerUser, Persistent: ServerUser}
	case s.players[to] != nil:
		// to us, or our own private message echoed back by bzfs
		ev.Private = true
		ev.TargetUser = s.user(s.players[to])
	default:
		return
	}
	if typ == actionMessage {
		ev.Tags = map[string]string{"type": "action"}
	}
	if s.pendingInitial {
		var held runtime.Output
		s.emit(&held, now, ev)
		s.held = append(s.held, held.Events...)
		return
	}
	s.emit(out, now, ev)
}

func (s *Session) user(pl *player) *quiltv1.User {
	u := &quiltv1.User{Transient: pl.callsign, Persistent: pl.callsign, Display: pl.callsign, Group: pl.callsign,
		Self: pl.id == s.myID && s.state != stHello}
	if pl.attrs&attrVerified != 0 {
		u.Persistent = "+" + pl.callsign
	}
	return u
}

func (s *Session) emit(out *runtime.Output, now time.Time, ev *quiltv1.Event) {
	ev.Protocol = "bzflag"
	ev.Source = s.cfg.Source
	if s.cfg.Server != nil {
		ev.Server = s.cfg.Server.Name
	}
	ev.Received = timestamppb.New(now)
	ev.Time = ev.Received
	out.Events = append(out.Events, ev)
}

// findPlayer looks a callsign up the way bzfs compares them: ignoring case.
func (s *Session) findPlayer(callsign string) *player {
	for _, pl := range s.players {
		if strings.EqualFold(pl.callsign, callsign) {
			return pl
		}
	}
	return nil
}

// destination resolves a SEND target to a bzfs chat destination id.
func (s *Session) destination(target string) (byte, error) {
	switch {
	case target == GameChannel:
		return allPlayers, nil
	case target == AdminChannel:
		return adminPlayers, nil
	case strings.HasPrefix(target, TeamChannelPrefix):
		t, ok := TeamCode(target[len(TeamChannelPrefix):])
		if !ok {
			return 0, actionErr(codes.InvalidArgument, "bzflag: unknown team in %q (want one of %s)", target, strings.Join(teamNames[:], ", "))
		}
		return byte(teamBase - int(t)), nil
	case target == "":
		return 0, actionErr(codes.InvalidArgument, "bzflag: empty target (want %q, %q, %q or a callsign)", GameChannel, TeamChannelPrefix+"<color>", AdminChannel)
	}
	pl := s.findPlayer(target)
	if pl == nil {
		return 0, actionErr(codes.NotFound, "bzflag: no player %q on the server", target)
	}
	return pl.id, nil
}

// Do turns an action into frames.
func (s *Session) Do(now time.Time, a *quiltv1.Action) (runtime.Output, error) {
	var out runtime.Output
	if a.GetKind() == quiltv1.ActionKind_ACTION_KIND_RECONNECT {
		if s.state == stJoined {
			out.Send = append(out.Send, frame(msgExit, nil))
		}
		out.Close = ErrReconnect
		return out, nil
	}
	if s.state != stJoined {
		return out, actionErr(codes.Unavailable, "%s", ErrNotConnected.Error())
	}
	switch a.GetKind() {
	case quiltv1.ActionKind_ACTION_KIND_SEND:
		to, err := s.destination(a.GetTarget())
		if err != nil {
			return out, err
		}
		lines := chatLines(a.GetText())
		if len(lines) == 0 {
			return out, actionErr(codes.InvalidArgument, "bzflag: nothing to send")
		}
		emote := a.GetStyle() == quiltv1.SendStyle_SEND_STYLE_EMOTE
		for _, l := range lines {
			for _, chunk := range splitChat(l) {
				msg := chunk
				if emote {
					msg = truncUTF8("/me "+chunk, maxChatBytes)
				} else if strings.HasPrefix(chunk, "/") {
					// "//text" is said as "/text"; a single slash would
					// run a server command with the bot's rights.
					msg = truncUTF8("/"+chunk, maxChatBytes)
				}
				out.Send = append(out.Send, frame(msgMessage, chatPayload(to, msg)))
				if !s.echoed(to) {
					ch := AdminChannel
					if to != adminPlayers {
						ch = TeamChannelPrefix + teamName(teamBase-int(to))
					}
					s.emit(&out, now, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_GAME_CHAT, User: s.user(s.players[s.myID]),
						Channel: ch, Text: chunk})
				}
			}
		}
	case quiltv1.ActionKind_ACTION_KIND_RAW:
		line := a.GetText()
		if !strings.HasPrefix(line, "/") || strings.HasPrefix(line, "//") || strings.ContainsAny(line, "\r\n\x00") {
			return out, actionErr(codes.InvalidArgument, "bzflag: a raw action is one server command line starting with \"/\"")
		}
		if len(line) > maxChatBytes {
			return out, actionErr(codes.InvalidArgument, "bzflag: server command longer than %d bytes", maxChatBytes)
		}
		out.Send = append(out.Send, frame(msgMessage, chatPayload(serverPlayer, line)))
	case quiltv1.ActionKind_ACTION_KIND_JOIN:
		if a.GetTarget() != GameChannel {
			return out, actionErr(codes.InvalidArgument, "bzflag: %q cannot be joined: the only channel is %q (team chat needs no join)", a.GetTarget(), GameChannel)
		}
	default:
		return out, actionErr(codes.Unimplemented, "bzflag: action %s not supported", a.GetKind())
	}
	return out, nil
}

// echoed reports whether bzfs sends our own message to destination to back
// to us: it does for everybody, private messages and our own team, not for
// other teams, whose chat the session then records itself.
func (s *Session) echoed(to byte) bool {
	self := s.players[s.myID]
	switch {
	case to > lastRealPlayer && to <= teamBase:
		return self != nil && teamBase-int(to) == self.team
	case to == adminPlayers:
		return self != nil && self.attrs&attrAdmin != 0
	}
	return true
}
