// Package irc is quilt's IRC source-manager driver: an I/O-free session
// (RFC 1459/2812 plus the IRCv3 basics) that the runtime feeds with bytes and
// actions, and which answers with lines to write and events to publish.
package irc

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// Settings is what a session needs from the [server NAME] section.
type Settings struct {
	Nick     string
	AltNicks []string
	User     string
	RealName string
	// Password is the server password (PASS); empty for none.
	Password string
	// SASLUser and SASLPassword enable SASL PLAIN when the server offers it.
	SASLUser     string
	SASLPassword string
	// PingInterval: send a PING after this long without input.
	PingInterval time.Duration
	// PingTimeout: give up on the connection when a PING stays unanswered
	// this long (lag detection).
	PingTimeout time.Duration
	// RegisterTimeout: give up when the server has not welcomed us by then.
	RegisterTimeout time.Duration
	// LineLimit is the server's line length in bytes, CRLF included.
	LineLimit int
	// Version answers CTCP VERSION.
	Version string
}

func (s *Settings) defaults() {
	if s.User == "" {
		s.User = s.Nick
	}
	if s.RealName == "" {
		s.RealName = "quilt"
	}
	if s.PingInterval <= 0 {
		s.PingInterval = 60 * time.Second
	}
	if s.PingTimeout <= 0 {
		s.PingTimeout = 120 * time.Second
	}
	if s.RegisterTimeout <= 0 {
		s.RegisterTimeout = 60 * time.Second
	}
	if s.LineLimit <= 0 {
		s.LineLimit = 512
	}
	if s.Version == "" {
		s.Version = "quilt"
	}
}

// Errors a session closes the connection with; the runtime reports them in
// the DISCONNECTED event and reconnects with backoff.
var (
	ErrPingTimeout     = errors.New("irc: ping timeout")
	ErrRegisterTimeout = errors.New("irc: registration timed out")
	ErrNicksExhausted  = errors.New("irc: every nick is in use")
	ErrReconnect       = errors.New("irc: reconnect requested")
	ErrNotRegistered   = errors.New("irc: not registered with the server yet")
)

// ServerError is the server's ERROR message (K-line, kill, quit, flood).
type ServerError struct{ Reason string }

func (e *ServerError) Error() string { return "irc: server closed the link: " + e.Reason }

// capabilities quilt asks for when the server offers them.
var wantedCaps = []string{
	"server-time", "message-tags", "multi-prefix", "away-notify",
	"account-notify", "extended-join", "userhost-in-names", "account-tag",
	"cap-notify",
}

// maxInputLine bounds a line with tags (8191 + 512 in IRCv3); longer input is
// dropped rather than buffered forever.
const maxInputLine = 8191 + 512

type member struct {
	nick     string
	userhost string // user@host when known
	account  string
	modes    []string
}

type channel struct {
	name    string
	members map[string]*member // by folded nick
	// names accumulates a NAMES reply until 366.
	names     []*member
	inNames   bool
	whoFilled bool
	topic     string
}

// Session is one IRC connection's protocol state. Not safe for concurrent
// use: the runtime serialises calls.
type Session struct {
	cfg runtime.SessionConfig
	set Settings
	log *slog.Logger

	buf []byte // partial input line

	nick        string
	nickTry     int
	registered  bool
	connectedAt time.Time

	capsAvail   map[string]string
	capsAcked   map[string]bool
	capLSDone   bool
	capEnded    bool
	saslPending bool

	cm          casemapping
	prefixModes []byte // mode letters for PREFIX, e.g. "ov"
	prefixChars []byte // matching prefix chars, e.g. "@+"
	chanTypes   string
	chanModes   [4]string // ISUPPORT CHANMODES groups A,B,C,D

	channels map[string]*channel // by folded name
	accounts map[string]string   // folded nick -> account (account-notify)
	uhCache  map[string]string   // source prefix -> "user@host"
	// lineHasTags: the line being handled starts with IRCv3 tags; AllTags
	// allocates a map even when there are none.
	lineHasTags bool

	lastRecv   time.Time
	pingSent   time.Time
	pingToken  string
	lag        time.Duration
	lastMyHost string // our own user@host once the server shows it
}

// NewSession makes a session; it does nothing until Start.
func NewSession(cfg runtime.SessionConfig, set Settings) *Session {
	set.defaults()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Session{
		cfg:         cfg,
		set:         set,
		log:         log,
		capsAvail:   map[string]string{},
		capsAcked:   map[string]bool{},
		cm:          caseRFC1459,
		prefixModes: []byte("ov"),
		prefixChars: []byte("@+"),
		chanTypes:   "#&",
		chanModes:   [4]string{"beI", "k", "l", "imnpst"},
		channels:    map[string]*channel{},
		accounts:    map[string]string{},
		uhCache:     map[string]string{},
	}
}

var _ runtime.Session = (*Session)(nil)

// Nick is the session's current nick.
func (s *Session) Nick() string { return s.nick }

// Lag is the round trip of the last answered keep-alive PING.
func (s *Session) Lag() time.Duration { return s.lag }

// Start opens registration: CAP LS first so capabilities are settled before
// the server welcomes us, then PASS/NICK/USER.
func (s *Session) Start(now time.Time) runtime.Output {
	s.connectedAt = now
	s.lastRecv = now
	var out runtime.Output
	send(&out, "CAP", "LS", "302")
	if s.set.Password != "" {
		send(&out, "PASS", s.set.Password)
	}
	s.nick = s.set.Nick
	send(&out, "NICK", s.nick)
	sendText(&out, "USER", s.set.User, "0", "*", s.set.RealName)
	out.NextTick = now.Add(s.set.RegisterTimeout)
	return out
}

// Input feeds bytes from the server.
func (s *Session) Input(now time.Time, data []byte) runtime.Output {
	var out runtime.Output
	s.lastRecv = now
	s.buf = append(s.buf, data...)
	end := lastIndexByte(s.buf, '\n')
	start := 0
	if end >= 0 {
		// One string for every complete line of the chunk: lines and the
		// parsed messages are substrings of it, so parsing allocates no copy
		// per line.
		chunk := string(s.buf[:end+1])
		start = end + 1
		for len(chunk) > 0 {
			i := strings.IndexByte(chunk, '\n')
			line := chunk[:i]
			chunk = chunk[i+1:]
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			if len(line) == 0 {
				continue
			}
			if len(line) > maxInputLine {
				s.log.Warn("irc: dropping over-long line", "bytes", len(line))
				continue
			}
			s.handleLine(now, line, &out)
			if out.Close != nil {
				break
			}
		}
	}
	// keep the unfinished tail, compacting so the buffer does not grow
	rest := len(s.buf) - start
	if rest > maxInputLine {
		s.log.Warn("irc: dropping over-long partial line", "bytes", rest)
		rest = 0
		start = len(s.buf)
	}
	copy(s.buf, s.buf[start:])
	s.buf = s.buf[:rest]
	out.NextTick = s.nextTick(now)
	return out
}

func lastIndexByte(b []byte, c byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == c {
			return i
		}
	}
	return -1
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// Tick runs keep-alive and lag detection.
func (s *Session) Tick(now time.Time) runtime.Output {
	var out runtime.Output
	if !s.registered {
		if now.Sub(s.connectedAt) >= s.set.RegisterTimeout {
			out.Close = fmt.Errorf("%w after %s", ErrRegisterTimeout, s.set.RegisterTimeout)
			return out
		}
		out.NextTick = s.connectedAt.Add(s.set.RegisterTimeout)
		return out
	}
	if s.pingToken != "" {
		if now.Sub(s.pingSent) >= s.set.PingTimeout {
			out.Close = fmt.Errorf("%w: no answer in %s", ErrPingTimeout, s.set.PingTimeout)
			return out
		}
	} else if now.Sub(s.lastRecv) >= s.set.PingInterval {
		s.pingToken = "quilt-" + strconv.FormatInt(now.UnixNano(), 36)
		s.pingSent = now
		send(&out, "PING", s.pingToken)
	}
	out.NextTick = s.nextTick(now)
	return out
}

func (s *Session) nextTick(now time.Time) time.Time {
	if !s.registered {
		return s.connectedAt.Add(s.set.RegisterTimeout)
	}
	if s.pingToken != "" {
		return s.pingSent.Add(s.set.PingTimeout)
	}
	return s.lastRecv.Add(s.set.PingInterval)
}

func send(out *runtime.Output, cmd string, params ...string) {
	sendMsg(out, ircmsg.MakeMessage(nil, "", cmd, params...))
}

// sendText sends a command whose last parameter is free text; it always goes
// as a trailing parameter, as conventional clients do, so servers never
// mistake a one-word text for something else.
func sendText(out *runtime.Output, cmd string, params ...string) {
	m := ircmsg.MakeMessage(nil, "", cmd, params...)
	m.ForceTrailing()
	sendMsg(out, m)
}

func sendMsg(out *runtime.Output, m ircmsg.Message) {
	b, err := m.LineBytesStrict(true, 0)
	if err != nil {
		// Only reachable with a malformed parameter, which callers validate;
		// dropping beats sending something the server would misparse.
		return
	}
	out.Send = append(out.Send, b)
}

func (s *Session) handleLine(now time.Time, line string, out *runtime.Output) {
	s.lineHasTags = line[0] == '@'
	m, err := ircmsg.ParseLine(line)
	if err != nil {
		s.log.Debug("irc: unparsable line", "err", err)
		return
	}
	switch m.Command {
	case "PING":
		send(out, "PONG", param(&m, 0))
		return
	case "PONG":
		tok := param(&m, len(m.Params)-1)
		if s.pingToken != "" && tok == s.pingToken {
			s.lag = now.Sub(s.pingSent)
			s.pingToken = ""
		}
		return
	case "ERROR":
		out.Close = &ServerError{Reason: param(&m, 0)}
		return
	case "CAP":
		s.handleCap(&m, out)
		return
	case "AUTHENTICATE":
		s.handleAuthenticate(&m, out)
		return
	case "903", "907":
		s.endCap(out)
		return
	case "902", "904", "905", "906", "908":
		// SASL failed: keep going unauthenticated rather than reconnect in a
		// loop on a bad password; the operator sees the warning.
		s.log.Warn("irc: SASL authentication failed; continuing without it", "numeric", m.Command, "reason", param(&m, len(m.Params)-1))
		s.endCap(out)
		return
	case "001":
		s.registered = true
		s.nick = param(&m, 0)
		s.lastRecv = now
		s.emit(out, now, &m, &quiltv1.Event{
			Kind: quiltv1.EventKind_EVENT_KIND_CONNECTED,
			User: s.selfUser(),
			Text: param(&m, 1),
		})
		return
	case "005":
		s.handleISupport(&m)
		return
	case "432", "433", "436", "437":
		if !s.registered {
			s.nextNick(out)
		}
		return
	}
	if !s.registered {
		return
	}
	switch m.Command {
	case "PRIVMSG", "NOTICE":
		s.handleMessage(now, &m, out)
	case "JOIN":
		s.handleJoin(now, &m, out)
	case "PART":
		nick := m.Nick()
		ch := param(&m, 0)
		s.emit(out, now, &m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_PART, User: s.user(&m), Channel: ch, Text: param(&m, 1)})
		if s.isMe(nick) {
			delete(s.channels, s.cm.fold(ch))
		} else if c := s.channels[s.cm.fold(ch)]; c != nil {
			delete(c.members, s.cm.fold(nick))
		}
	case "KICK":
		ch, target := param(&m, 0), param(&m, 1)
		ev := &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_KICK, User: s.user(&m), Channel: ch,
			TargetUser: s.knownUser(target), Text: param(&m, 2)}
		s.emit(out, now, &m, ev)
		if s.isMe(target) {
			delete(s.channels, s.cm.fold(ch))
		} else if c := s.channels[s.cm.fold(ch)]; c != nil {
			delete(c.members, s.cm.fold(target))
		}
	case "QUIT":
		nick := m.Nick()
		s.emit(out, now, &m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_QUIT, User: s.user(&m), Text: param(&m, 0)})
		f := s.cm.fold(nick)
		for _, c := range s.channels {
			delete(c.members, f)
		}
		delete(s.accounts, f)
	case "NICK":
		old, nw := m.Nick(), param(&m, 0)
		u := s.user(&m)
		nu := &quiltv1.User{Transient: nw, Persistent: u.Persistent, Display: nw, Group: nw, Self: u.Self}
		if acct := s.accounts[s.cm.fold(old)]; acct != "" {
			nu.Group = acct
			delete(s.accounts, s.cm.fold(old))
			s.accounts[s.cm.fold(nw)] = acct
		}
		if s.isMe(old) {
			s.nick = nw
			nu.Self = true
		}
		s.emit(out, now, &m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_NICK, User: u, TargetUser: nu})
		fo, fn := s.cm.fold(old), s.cm.fold(nw)
		for _, c := range s.channels {
			if mb := c.members[fo]; mb != nil {
				delete(c.members, fo)
				mb.nick = nw
				c.members[fn] = mb
			}
		}
	case "TOPIC":
		ch := param(&m, 0)
		if c := s.channels[s.cm.fold(ch)]; c != nil {
			c.topic = param(&m, 1)
		}
		s.emit(out, now, &m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_TOPIC, User: s.user(&m), Channel: ch, Text: param(&m, 1),
			ChannelInfo: &quiltv1.ChannelInfo{Name: ch, Topic: param(&m, 1), TopicSetBy: m.Nick(), TopicSetAt: timestamppb.New(s.eventTime(now, &m))}})
	case "MODE":
		s.handleMode(now, &m, out)
	case "AWAY":
		text := "back"
		if len(m.Params) > 0 && m.Params[0] != "" {
			text = "away: " + m.Params[0]
		}
		s.emit(out, now, &m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_PRESENCE, User: s.user(&m), Text: text})
	case "ACCOUNT":
		acct := param(&m, 0)
		f := s.cm.fold(m.Nick())
		if acct == "*" || acct == "" {
			delete(s.accounts, f)
		} else {
			s.accounts[f] = acct
		}
		s.emit(out, now, &m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_PRESENCE, User: s.user(&m), Text: "account: " + acct})
	case "332": // RPL_TOPIC: me chan :topic
		ch := param(&m, 1)
		if c := s.channels[s.cm.fold(ch)]; c != nil {
			c.topic = param(&m, 2)
		}
		s.emit(out, now, &m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO, Channel: ch, User: s.selfUser(),
			ChannelInfo: &quiltv1.ChannelInfo{Name: ch, Topic: param(&m, 2)}})
	case "353": // RPL_NAMREPLY: me sym chan :names
		s.handleNames(&m)
	case "366": // RPL_ENDOFNAMES
		ch := param(&m, 1)
		if c := s.channels[s.cm.fold(ch)]; c != nil && c.inNames {
			c.inNames = false
			c.members = map[string]*member{}
			for _, mb := range c.names {
				c.members[s.cm.fold(mb.nick)] = mb
			}
			c.names = nil
			s.emit(out, now, &m, s.membersEvent(c))
			if !s.capsAcked["userhost-in-names"] {
				send(out, "WHO", c.name)
			}
		}
	case "352": // RPL_WHOREPLY: me chan user host server nick flags :hops realname
		ch := param(&m, 1)
		if c := s.channels[s.cm.fold(ch)]; c != nil {
			if mb := c.members[s.cm.fold(param(&m, 5))]; mb != nil {
				mb.userhost = param(&m, 2) + "@" + param(&m, 3)
				c.whoFilled = true
			}
		}
		if s.isMe(param(&m, 5)) {
			s.lastMyHost = param(&m, 2) + "@" + param(&m, 3)
		}
	case "315": // RPL_ENDOFWHO
		if c := s.channels[s.cm.fold(param(&m, 1))]; c != nil && c.whoFilled {
			c.whoFilled = false
			s.emit(out, now, &m, s.membersEvent(c))
		}
	}
}

func param(m *ircmsg.Message, i int) string {
	if i < 0 || i >= len(m.Params) {
		return ""
	}
	return m.Params[i]
}

func (s *Session) isMe(nick string) bool { return s.cm.fold(nick) == s.cm.fold(s.nick) }

func (s *Session) selfUser() *quiltv1.User {
	u := &quiltv1.User{Transient: s.nick, Display: s.nick, Group: s.nick, Persistent: s.lastMyHost, Self: true}
	if s.set.SASLUser != "" && s.capsAcked["sasl"] {
		u.Group = s.set.SASLUser
	}
	return u
}

// user builds the four names of a message's source: nick, user@host, nick,
// account (when the server tells) or nick.
func (s *Session) user(m *ircmsg.Message) *quiltv1.User {
	nuh, err := ircmsg.ParseNUH(m.Source)
	if err != nil {
		return &quiltv1.User{}
	}
	u := &quiltv1.User{Transient: nuh.Name, Display: nuh.Name, Group: nuh.Name}
	if nuh.User != "" || nuh.Host != "" {
		u.Persistent = s.userhost(m.Source, nuh)
	}
	f := s.cm.fold(nuh.Name)
	if ok, acct := m.GetTag("account"); ok && acct != "" {
		s.accounts[f] = acct
	}
	if acct := s.accounts[f]; acct != "" {
		u.Group = acct
	}
	if f == s.cm.fold(s.nick) {
		u.Self = true
		if u.Persistent != "" {
			s.lastMyHost = u.Persistent
		}
	}
	return u
}

// userhost returns "user@host" for a source prefix, from a small cache: a
// busy channel repeats the same few prefixes, and building the string for
// every line was a measurable share of the inbound cost.
func (s *Session) userhost(source string, nuh ircmsg.NUH) string {
	if v, ok := s.uhCache[source]; ok {
		return v
	}
	v := nuh.User + "@" + nuh.Host
	if len(s.uhCache) >= 4096 {
		clear(s.uhCache)
	}
	s.uhCache[source] = v
	return v
}

// knownUser names a user we only know by nick (a KICK target), with what the
// channel maps know of them.
func (s *Session) knownUser(nick string) *quiltv1.User {
	u := &quiltv1.User{Transient: nick, Display: nick, Group: nick, Self: s.isMe(nick)}
	f := s.cm.fold(nick)
	if acct := s.accounts[f]; acct != "" {
		u.Group = acct
	}
	for _, c := range s.channels {
		if mb := c.members[f]; mb != nil && mb.userhost != "" {
			u.Persistent = mb.userhost
			break
		}
	}
	return u
}

func (s *Session) eventTime(now time.Time, m *ircmsg.Message) time.Time {
	if ok, v := m.GetTag("time"); ok {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t
		}
	}
	return now
}

func (s *Session) emit(out *runtime.Output, now time.Time, m *ircmsg.Message, ev *quiltv1.Event) {
	ev.Protocol = "irc"
	ev.Source = s.cfg.Source
	if s.cfg.Server != nil {
		ev.Server = s.cfg.Server.Name
	}
	t := now
	if m != nil {
		t = s.eventTime(now, m)
		if ok, id := m.GetTag("msgid"); ok && id != "" {
			ev.Id = "msgid:" + id
		}
	}
	ev.Received = timestamppb.New(now)
	if t.Equal(now) {
		ev.Time = ev.Received // no server-time: one message serves both
	} else {
		ev.Time = timestamppb.New(t)
	}
	out.Events = append(out.Events, ev)
}

func (s *Session) handleCap(m *ircmsg.Message, out *runtime.Output) {
	sub := strings.ToUpper(param(m, 1))
	switch sub {
	case "LS", "NEW":
		// CAP * LS * :caps (more to come) / CAP * LS :caps (last)
		more := len(m.Params) >= 4 && m.Params[2] == "*"
		for _, c := range strings.Fields(param(m, len(m.Params)-1)) {
			name, val, _ := strings.Cut(c, "=")
			s.capsAvail[name] = val
		}
		if more {
			return
		}
		var req []string
		for _, c := range wantedCaps {
			if _, ok := s.capsAvail[c]; ok && !s.capsAcked[c] {
				req = append(req, c)
			}
		}
		if _, ok := s.capsAvail["sasl"]; ok && s.set.SASLUser != "" && !s.registered && !s.capsAcked["sasl"] {
			req = append(req, "sasl")
		}
		if len(req) > 0 {
			send(out, "CAP", "REQ", strings.Join(req, " "))
		} else if sub == "LS" {
			s.endCap(out)
		}
		s.capLSDone = true
	case "ACK":
		for _, c := range strings.Fields(param(m, len(m.Params)-1)) {
			if strings.HasPrefix(c, "-") {
				delete(s.capsAcked, c[1:])
				continue
			}
			s.capsAcked[c] = true
		}
		if s.capsAcked["sasl"] && !s.registered && !s.saslPending {
			s.saslPending = true
			send(out, "AUTHENTICATE", "PLAIN")
			return
		}
		if !s.saslPending {
			s.endCap(out)
		}
	case "NAK":
		if !s.saslPending {
			s.endCap(out)
		}
	case "DEL":
		for _, c := range strings.Fields(param(m, len(m.Params)-1)) {
			delete(s.capsAcked, c)
			delete(s.capsAvail, c)
		}
	}
}

func (s *Session) endCap(out *runtime.Output) {
	s.saslPending = false
	if s.capEnded || s.registered {
		return
	}
	s.capEnded = true
	send(out, "CAP", "END")
}

func (s *Session) handleAuthenticate(m *ircmsg.Message, out *runtime.Output) {
	if param(m, 0) != "+" || !s.saslPending {
		return
	}
	raw := s.set.SASLUser + "\x00" + s.set.SASLUser + "\x00" + s.set.SASLPassword
	enc := base64.StdEncoding.EncodeToString([]byte(raw))
	// AUTHENTICATE payloads go in 400-byte chunks; an exact multiple ends
	// with a lone "+".
	for len(enc) >= 400 {
		send(out, "AUTHENTICATE", enc[:400])
		enc = enc[400:]
	}
	if enc == "" {
		enc = "+"
	}
	send(out, "AUTHENTICATE", enc)
}

func (s *Session) nextNick(out *runtime.Output) {
	s.nickTry++
	i := s.nickTry
	switch {
	case i <= len(s.set.AltNicks):
		s.nick = s.set.AltNicks[i-1]
	case i == len(s.set.AltNicks)+1:
		s.nick = s.set.Nick + "_"
	case i <= len(s.set.AltNicks)+10:
		s.nick = s.set.Nick + strconv.Itoa(i-len(s.set.AltNicks)-1)
	default:
		out.Close = ErrNicksExhausted
		return
	}
	send(out, "NICK", s.nick)
}

func (s *Session) handleISupport(m *ircmsg.Message) {
	// me TOKEN[=value]... :are supported by this server
	for _, tok := range m.Params[1:max(1, len(m.Params)-1)] {
		k, v, _ := strings.Cut(tok, "=")
		switch k {
		case "PREFIX":
			// (ov)@+
			if i := strings.IndexByte(v, ')'); strings.HasPrefix(v, "(") && i > 0 && len(v)-i-1 == i-1 {
				s.prefixModes = []byte(v[1:i])
				s.prefixChars = []byte(v[i+1:])
			}
		case "CHANTYPES":
			s.chanTypes = v
		case "CASEMAPPING":
			s.cm = parseCasemapping(v)
		case "CHANMODES":
			parts := strings.SplitN(v, ",", 4)
			for i := range parts {
				s.chanModes[i] = parts[i]
			}
		case "LINELEN":
			if n, err := strconv.Atoi(v); err == nil && n >= 512 {
				s.set.LineLimit = n
			}
		}
	}
}

func (s *Session) isChannel(name string) bool {
	return name != "" && strings.IndexByte(s.chanTypes, name[0]) >= 0
}

func (s *Session) handleMessage(now time.Time, m *ircmsg.Message, out *runtime.Output) {
	target, text := param(m, 0), param(m, 1)
	if !strings.Contains(m.Source, "!") && !strings.Contains(m.Source, "@") {
		// server notices (no user prefix) are not chat
		return
	}
	kind := quiltv1.EventKind_EVENT_KIND_MESSAGE
	if m.Command == "NOTICE" {
		kind = quiltv1.EventKind_EVENT_KIND_NOTICE
	}
	if len(text) >= 2 && text[0] == '\x01' {
		body := strings.TrimSuffix(text[1:], "\x01")
		verb, arg, _ := strings.Cut(body, " ")
		switch strings.ToUpper(verb) {
		case "ACTION":
			kind = quiltv1.EventKind_EVENT_KIND_ACTION
			text = arg
		case "VERSION":
			if m.Command == "PRIVMSG" {
				sendText(out, "NOTICE", m.Nick(), "\x01VERSION "+s.set.Version+"\x01")
			}
			return
		case "PING":
			if m.Command == "PRIVMSG" {
				sendText(out, "NOTICE", m.Nick(), "\x01PING "+arg+"\x01")
			}
			return
		default:
			return
		}
	}
	ev := &quiltv1.Event{Kind: kind, User: s.user(m), Text: text}
	if s.isChannel(target) {
		ev.Channel = target
	} else {
		ev.Private = true
		ev.TargetUser = s.selfUser()
	}
	if s.lineHasTags {
		ev.Tags = m.AllTags()
	}
	s.emit(out, now, m, ev)
}

func (s *Session) handleJoin(now time.Time, m *ircmsg.Message, out *runtime.Output) {
	ch := param(m, 0)
	nick := m.Nick()
	f := s.cm.fold(nick)
	if s.capsAcked["extended-join"] && len(m.Params) >= 2 {
		if acct := m.Params[1]; acct != "*" && acct != "" {
			s.accounts[f] = acct
		}
	}
	u := s.user(m)
	ev := &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_JOIN, User: u, Channel: ch}
	if s.isMe(nick) {
		s.channels[s.cm.fold(ch)] = &channel{name: ch, members: map[string]*member{}}
		ev.ChannelInfo = &quiltv1.ChannelInfo{Name: ch}
	} else if c := s.channels[s.cm.fold(ch)]; c != nil {
		c.members[f] = &member{nick: nick, userhost: u.Persistent, account: s.accounts[f]}
	}
	s.emit(out, now, m, ev)
}

func (s *Session) handleNames(m *ircmsg.Message) {
	ch := param(m, 2)
	c := s.channels[s.cm.fold(ch)]
	if c == nil {
		return
	}
	if !c.inNames {
		c.inNames = true
		c.names = nil
	}
	for _, entry := range strings.Fields(param(m, 3)) {
		var modes []string
		for len(entry) > 0 {
			i := indexByte(s.prefixChars, entry[0])
			if i < 0 {
				break
			}
			modes = append(modes, string(s.prefixModes[i]))
			entry = entry[1:]
		}
		nuh, err := ircmsg.ParseNUH(entry)
		if err != nil {
			continue
		}
		mb := &member{nick: nuh.Name, modes: modes, account: s.accounts[s.cm.fold(nuh.Name)]}
		if nuh.User != "" || nuh.Host != "" {
			mb.userhost = nuh.User + "@" + nuh.Host
		}
		c.names = append(c.names, mb)
	}
}

func (s *Session) membersEvent(c *channel) *quiltv1.Event {
	ev := &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_MEMBERS, Channel: c.name, User: s.selfUser(),
		ChannelInfo: &quiltv1.ChannelInfo{Name: c.name, Topic: c.topic, MemberCount: int32(len(c.members))}}
	for _, mb := range c.members {
		u := &quiltv1.User{Transient: mb.nick, Display: mb.nick, Group: mb.nick, Persistent: mb.userhost, Self: s.isMe(mb.nick)}
		if mb.account != "" {
			u.Group = mb.account
		}
		ev.Members = append(ev.Members, &quiltv1.Member{User: u, Modes: mb.modes})
	}
	return ev
}

// handleMode turns channel mode changes that touch membership rights (op,
// voice, ...) into MODE events; other modes are not membership and are
// skipped, though their parameters are still consumed in order.
func (s *Session) handleMode(now time.Time, m *ircmsg.Message, out *runtime.Output) {
	ch := param(m, 0)
	if !s.isChannel(ch) || len(m.Params) < 2 {
		return
	}
	c := s.channels[s.cm.fold(ch)]
	args := m.Params[2:]
	adding := true
	for _, r := range m.Params[1] {
		switch r {
		case '+':
			adding = true
			continue
		case '-':
			adding = false
			continue
		}
		takes := false
		letter := string(r)
		isPrefix := strings.ContainsRune(string(s.prefixModes), r)
		switch {
		case isPrefix, strings.ContainsRune(s.chanModes[0], r), strings.ContainsRune(s.chanModes[1], r):
			takes = true
		case strings.ContainsRune(s.chanModes[2], r):
			takes = adding
		}
		arg := ""
		if takes {
			if len(args) == 0 {
				return
			}
			arg, args = args[0], args[1:]
		}
		if !isPrefix {
			continue
		}
		sign := "+"
		if !adding {
			sign = "-"
		}
		if c != nil {
			if mb := c.members[s.cm.fold(arg)]; mb != nil {
				mb.modes = applyMode(mb.modes, letter, adding)
			}
		}
		s.emit(out, now, m, &quiltv1.Event{Kind: quiltv1.EventKind_EVENT_KIND_MODE, User: s.user(m), Channel: ch,
			TargetUser: s.knownUser(arg), Text: sign + letter})
	}
}

func applyMode(modes []string, letter string, add bool) []string {
	out := modes[:0:0]
	for _, x := range modes {
		if x != letter {
			out = append(out, x)
		}
	}
	if add {
		out = append(out, letter)
	}
	return out
}

// ActionError carries a gRPC code for the action result.
type ActionError struct {
	Status codes.Code
	Msg    string
}

func (e *ActionError) Error() string { return e.Msg }

// Code is what the runtime reports in the ActionResult.
func (e *ActionError) Code() codes.Code { return e.Status }

func invalid(format string, a ...any) error {
	return &ActionError{Status: codes.InvalidArgument, Msg: fmt.Sprintf(format, a...)}
}

// Do turns an action into IRC lines.
func (s *Session) Do(now time.Time, a *quiltv1.Action) (runtime.Output, error) {
	var out runtime.Output
	if a.GetKind() == quiltv1.ActionKind_ACTION_KIND_RECONNECT {
		sendText(&out, "QUIT", "reconnecting")
		out.Close = ErrReconnect
		return out, nil
	}
	if !s.registered {
		return out, &ActionError{Status: codes.Unavailable, Msg: ErrNotRegistered.Error()}
	}
	target := a.GetTarget()
	switch a.GetKind() {
	case quiltv1.ActionKind_ACTION_KIND_SEND:
		if !validTarget(target) {
			return out, invalid("irc: bad target %q", target)
		}
		lines := sanitizeLines(a.GetText())
		if len(lines) == 0 {
			return out, invalid("irc: nothing to send")
		}
		cmd, kind := "PRIVMSG", quiltv1.EventKind_EVENT_KIND_MESSAGE
		pre, post := "", ""
		switch a.GetStyle() {
		case quiltv1.SendStyle_SEND_STYLE_NOTICE:
			cmd, kind = "NOTICE", quiltv1.EventKind_EVENT_KIND_NOTICE
		case quiltv1.SendStyle_SEND_STYLE_EMOTE:
			kind = quiltv1.EventKind_EVENT_KIND_ACTION
			pre, post = "\x01ACTION ", "\x01"
		}
		room := s.textRoom(cmd, target) - len(pre) - len(post)
		for _, l := range lines {
			for _, chunk := range splitText(l, room) {
				sendText(&out, cmd, target, pre+chunk+post)
				// IRC does not echo our own messages; record them so history
				// shows both sides of a conversation.
				ev := &quiltv1.Event{Kind: kind, User: s.selfUser(), Text: chunk}
				if s.isChannel(target) {
					ev.Channel = target
				} else {
					ev.Private = true
					ev.TargetUser = s.knownUser(target)
				}
				s.emit(&out, now, nil, ev)
			}
		}
	case quiltv1.ActionKind_ACTION_KIND_JOIN:
		if !validTarget(target) || !s.isChannel(target) {
			return out, invalid("irc: bad channel %q", target)
		}
		if k := a.GetKey(); k != "" {
			if !validTarget(k) {
				return out, invalid("irc: bad channel key")
			}
			send(&out, "JOIN", target, k)
		} else {
			send(&out, "JOIN", target)
		}
	case quiltv1.ActionKind_ACTION_KIND_PART:
		if !validTarget(target) {
			return out, invalid("irc: bad channel %q", target)
		}
		sendText(&out, "PART", target, oneLine(a.GetText()))
	case quiltv1.ActionKind_ACTION_KIND_KICK:
		if !validTarget(target) || !validTarget(a.GetUser()) {
			return out, invalid("irc: bad kick of %q from %q", a.GetUser(), target)
		}
		sendText(&out, "KICK", target, a.GetUser(), oneLine(a.GetText()))
	case quiltv1.ActionKind_ACTION_KIND_TOPIC:
		if !validTarget(target) {
			return out, invalid("irc: bad channel %q", target)
		}
		sendText(&out, "TOPIC", target, oneLine(a.GetText()))
	case quiltv1.ActionKind_ACTION_KIND_RAW:
		line := a.GetText()
		if line == "" || strings.ContainsAny(line, "\r\n\x00") {
			return out, invalid("irc: a raw line must be one non-empty line")
		}
		if _, err := ircmsg.ParseLine(line); err != nil {
			return out, invalid("irc: raw line does not parse: %v", err)
		}
		if len(line)+2 > s.set.LineLimit {
			return out, invalid("irc: raw line longer than %d bytes", s.set.LineLimit-2)
		}
		out.Send = append(out.Send, []byte(line+"\r\n"))
	default:
		return out, &ActionError{Status: codes.Unimplemented, Msg: fmt.Sprintf("irc: action %s not supported", a.GetKind())}
	}
	return out, nil
}

// oneLine flattens a reason or topic: line breaks become spaces so they
// cannot start a new command.
func oneLine(s string) string {
	return strings.Join(sanitizeLines(s), " ")
}

// textRoom is how many bytes of text fit in one CMD line to target, once the
// server has prefixed it with our nick!user@host for the recipients.
func (s *Session) textRoom(cmd, target string) int {
	// ":nick!user@host " as relayed; a host is at most 63 bytes, the user 10
	prefix := 1 + len(s.nick) + 1 + 10 + 1 + 63 + 1
	if s.lastMyHost != "" {
		prefix = 1 + len(s.nick) + 1 + len(s.lastMyHost) + 1
	}
	// prefix CMD SP target SP ":" text CRLF
	return s.set.LineLimit - (prefix + len(cmd) + 1 + len(target) + 2 + 2)
}
