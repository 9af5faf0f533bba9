package runtime

import (
	"log/slog"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"weak"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/model"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Server is one [server NAME] of the source manager: its settings, its
// current session, the users and channels that session sees, and its
// command queue (seed 000's Server object).
//
// Locking: mu guards every field below it. It is never held while calling
// a session, a client, the link or the transport, so a blocked publisher
// cannot wedge live queries.
type Server struct {
	name string
	log  *slog.Logger
	mgr  *Manager

	mu  sync.Mutex
	cfg *config.Server
	// override is the query master's stored enable/disable (nil: none).
	override *bool
	// reconnect asks the next cycle to drop the session and connect again.
	reconnect bool
	// removed: the server left the smd.d file; it goes once disconnected.
	removed bool

	conn     *conn // current session, nil when none
	failures int   // consecutive failed connects/sessions, for backoff
	state    quiltv1.ServerState
	since    time.Time
	lastErr  string
	address  string
	lag      time.Duration

	// users is the weak user map keyed by transient name: it does not keep
	// users alive. Channel members (and self) do. A cleanup removes the entry
	// when its user is collected.
	users    map[string]*userEntry
	channels map[string]*channel
	self     *model.User
}

type userEntry struct {
	wp   weak.Pointer[model.User]
	name string // the key it is stored under; follows renames
}

type channel struct {
	info    *quiltv1.ChannelInfo
	members map[string]*member // by transient name; strong refs
}

type member struct {
	u     *model.User
	modes []string
	since int64 // unix nanoseconds
}

func newServer(m *Manager, cfg *config.Server) *Server {
	s := &Server{
		name:     cfg.Name,
		mgr:      m,
		log:      m.log.With("server", cfg.Name),
		cfg:      cfg,
		state:    quiltv1.ServerState_SERVER_STATE_DISCONNECTED,
		since:    m.clock.Now(),
		users:    map[string]*userEntry{},
		channels: map[string]*channel{},
	}
	return s
}

// Name is the server's [server NAME].
func (s *Server) Name() string { return s.name }

// lookupLocked returns the user tracked under name, creating (and tracking)
// an empty one when there is none. Called with mu held.
func (s *Server) lookupLocked(name string) *model.User {
	if e := s.users[name]; e != nil {
		if u := e.wp.Value(); u != nil {
			return u
		}
	}
	u := &model.User{Transient: name, Tracked: true}
	s.trackLocked(u)
	return u
}

func (s *Server) trackLocked(u *model.User) {
	e := &userEntry{wp: weak.Make(u), name: u.Transient}
	s.users[u.Transient] = e
	u.Tracked = true
	goruntime.AddCleanup(u, s.forget, e)
}

// forget drops the entry of a collected user. It runs on the runtime's
// cleanup goroutine.
func (s *Server) forget(e *userEntry) {
	s.mu.Lock()
	if s.users[e.name] == e && e.wp.Value() == nil {
		delete(s.users, e.name)
	}
	s.mu.Unlock()
}

// resolveLocked finds the tracked user for p, updates it from the names p
// gives and fills the names p lacks. Called with mu held.
func (s *Server) resolveLocked(p *quiltv1.User) *model.User {
	if p == nil || p.Transient == "" {
		return nil
	}
	u := s.lookupLocked(p.Transient)
	u.Update(p)
	if s.self != nil && u != s.self && p.Transient == s.self.Transient {
		u = s.self
	}
	u.Fill(p)
	return u
}

func (s *Server) isSelf(u *model.User) bool {
	return u != nil && (u.Self || (s.self != nil && u == s.self))
}

// renameLocked re-keys the user tracked as old under new_ (seed 000). A user
// still tracked under new_ is a conflict: it is dropped from the map and
// every channel, marked untracked, and a warning is logged.
func (s *Server) renameLocked(old string, target *quiltv1.User) *model.User {
	newName := target.Transient
	var u *model.User
	if e := s.users[old]; e != nil {
		u = e.wp.Value()
	}
	if old == newName {
		return s.resolveLocked(target)
	}
	if e := s.users[newName]; e != nil {
		if holder := e.wp.Value(); holder != nil && holder != u {
			s.log.Warn("rename onto a name still tracked: dropping the old holder",
				"old", old, "new", newName, "holder_persistent", holder.Persistent)
			holder.Tracked = false
			for _, ch := range s.channels {
				if m := ch.members[newName]; m != nil && m.u == holder {
					delete(ch.members, newName)
				}
			}
		}
		delete(s.users, newName)
	}
	if u == nil {
		return s.resolveLocked(target)
	}
	e := s.users[old]
	delete(s.users, old)
	e.name = newName
	s.users[newName] = e
	u.Transient = newName
	for _, ch := range s.channels {
		if m := ch.members[old]; m != nil {
			delete(ch.members, old)
			ch.members[newName] = m
		}
	}
	u.Update(target)
	u.Fill(target)
	return u
}

// sharedLocked lists the channels user name is in, sorted.
func (s *Server) sharedLocked(name string) []string {
	var out []string
	for cn, ch := range s.channels {
		if _, ok := ch.members[name]; ok {
			out = append(out, cn)
		}
	}
	sort.Strings(out)
	return out
}

func (s *Server) channelLocked(name string) *channel {
	ch := s.channels[name]
	if ch == nil {
		ch = &channel{info: &quiltv1.ChannelInfo{Name: name}, members: map[string]*member{}}
		s.channels[name] = ch
	}
	return ch
}

// clearLocked forgets every channel and user (disconnect).
func (s *Server) clearLocked() {
	for _, e := range s.users {
		if u := e.wp.Value(); u != nil {
			u.Tracked = false
		}
	}
	s.users = map[string]*userEntry{}
	s.channels = map[string]*channel{}
	s.self = nil
}

// applyLocked updates the maps from ev and completes ev from them: the
// names of its users, and Channels for QUIT and NICK. Called with mu held,
// in event order.
func (s *Server) applyLocked(ev *quiltv1.Event, now time.Time) {
	k := ev.Kind
	if k == quiltv1.EventKind_EVENT_KIND_DISCONNECTED {
		s.clearLocked()
		return
	}
	var u *model.User
	if k == quiltv1.EventKind_EVENT_KIND_NICK {
		if ev.User != nil && ev.TargetUser != nil && ev.TargetUser.Transient != "" {
			old := ev.User.Transient
			ev.Channels = s.sharedLocked(old)
			if e := s.users[old]; e != nil {
				if cur := e.wp.Value(); cur != nil {
					cur.Update(ev.User)
					cur.Fill(ev.User)
				}
			}
			u = s.renameLocked(old, ev.TargetUser)
		}
		return
	}
	u = s.resolveLocked(ev.User)
	var target *model.User
	if ev.TargetUser != nil {
		target = s.resolveLocked(ev.TargetUser)
	}
	ts := now.UnixNano()
	switch k {
	case quiltv1.EventKind_EVENT_KIND_CONNECTED:
		if u != nil {
			u.Self = true
			ev.User.Self = true
			s.self = u
		}
	case quiltv1.EventKind_EVENT_KIND_JOIN:
		if u == nil || ev.Channel == "" {
			return
		}
		if s.isSelf(u) {
			// A fresh join: whatever we knew of the channel is stale.
			delete(s.channels, ev.Channel)
		}
		ch := s.channelLocked(ev.Channel)
		if ev.ChannelInfo != nil {
			mergeInfo(ch.info, ev.ChannelInfo)
		}
		if _, ok := ch.members[u.Transient]; !ok {
			ch.members[u.Transient] = &member{u: u, since: ts}
		}
	case quiltv1.EventKind_EVENT_KIND_PART:
		if u == nil {
			return
		}
		if s.isSelf(u) {
			delete(s.channels, ev.Channel)
		} else if ch := s.channels[ev.Channel]; ch != nil {
			delete(ch.members, u.Transient)
		}
	case quiltv1.EventKind_EVENT_KIND_KICK:
		if target == nil {
			return
		}
		if s.isSelf(target) {
			delete(s.channels, ev.Channel)
		} else if ch := s.channels[ev.Channel]; ch != nil {
			delete(ch.members, target.Transient)
		}
	case quiltv1.EventKind_EVENT_KIND_QUIT:
		if u == nil {
			return
		}
		ev.Channels = s.sharedLocked(u.Transient)
		for _, cn := range ev.Channels {
			delete(s.channels[cn].members, u.Transient)
		}
	case quiltv1.EventKind_EVENT_KIND_MEMBERS:
		if ev.Channel == "" {
			return
		}
		ch := s.channelLocked(ev.Channel)
		old := ch.members
		ch.members = make(map[string]*member, len(ev.Members))
		for _, m := range ev.Members {
			mu := s.resolveLocked(m.GetUser())
			if mu == nil {
				continue
			}
			nm := &member{u: mu, modes: slices.Clone(m.Modes), since: ts}
			if prev := old[mu.Transient]; prev != nil {
				nm.since = prev.since
			}
			if m.Since != nil {
				nm.since = m.Since.AsTime().UnixNano()
			}
			ch.members[mu.Transient] = nm
		}
		if s.self != nil {
			// The bot is in every channel it has a member list for.
			if _, ok := ch.members[s.self.Transient]; !ok {
				if prev := old[s.self.Transient]; prev != nil {
					ch.members[s.self.Transient] = prev
				}
			}
		}
	case quiltv1.EventKind_EVENT_KIND_MODE:
		who := target
		if who == nil {
			return
		}
		ch := s.channels[ev.Channel]
		if ch == nil {
			return
		}
		m := ch.members[who.Transient]
		if m == nil {
			return
		}
		// A session that knows the full resulting modes sends them in
		// Members (Matrix power levels); otherwise text is IRC-style
		// "+o", "-v", "+ov".
		if len(ev.Members) == 1 {
			m.modes = slices.Clone(ev.Members[0].Modes)
		} else {
			m.modes = applyModeString(m.modes, ev.Text)
		}
	case quiltv1.EventKind_EVENT_KIND_TOPIC:
		ch := s.channels[ev.Channel]
		if ch == nil {
			return
		}
		ch.info.Topic = ev.Text
		if u != nil {
			ch.info.TopicSetBy = u.Transient
		}
		if ev.Time != nil {
			ch.info.TopicSetAt = ev.Time
		}
		if ev.ChannelInfo != nil {
			mergeInfo(ch.info, ev.ChannelInfo)
		}
	case quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO:
		if ch := s.channels[ev.Channel]; ch != nil && ev.ChannelInfo != nil {
			mergeInfo(ch.info, ev.ChannelInfo)
		}
	}
}

// applyModeString applies "+ov-h"-style changes to modes.
func applyModeString(modes []string, text string) []string {
	add := true
	for _, r := range strings.TrimSpace(text) {
		switch r {
		case '+':
			add = true
		case '-':
			add = false
		case ' ':
			return modes
		default:
			m := string(r)
			i := slices.Index(modes, m)
			if add && i < 0 {
				modes = append(modes, m)
			} else if !add && i >= 0 {
				modes = slices.Delete(modes, i, i+1)
			}
		}
	}
	return modes
}

// mergeInfo copies the non-empty fields of src into dst.
func mergeInfo(dst, src *quiltv1.ChannelInfo) {
	if src.DisplayName != "" {
		dst.DisplayName = src.DisplayName
	}
	if src.Topic != "" {
		dst.Topic = src.Topic
	}
	if src.TopicSetBy != "" {
		dst.TopicSetBy = src.TopicSetBy
	}
	if src.TopicSetAt != nil {
		dst.TopicSetAt = src.TopicSetAt
	}
	if src.CanonicalAlias != "" {
		dst.CanonicalAlias = src.CanonicalAlias
	}
	for k, v := range src.Attrs {
		if dst.Attrs == nil {
			dst.Attrs = map[string]string{}
		}
		dst.Attrs[k] = v
	}
}

// enabledLocked is the desired state: the query master's override, else
// the smd.d setting (and the file's top-level enabled).
func (s *Server) enabledLocked() bool {
	if s.removed {
		return false
	}
	if s.override != nil {
		return *s.override
	}
	return s.cfg.Enabled && s.mgr.fileEnabled()
}

// setStateLocked records a state change; it reports whether it was one.
func (s *Server) setStateLocked(st quiltv1.ServerState, errText string, now time.Time) bool {
	if s.state == st && s.lastErr == errText {
		return false
	}
	if s.state != st {
		s.since = now
	}
	s.state = st
	s.lastErr = errText
	return true
}

// statusLocked is the ServerStatus the link and live queries report.
func (s *Server) statusLocked() *quiltv1.ServerStatus {
	st := &quiltv1.ServerStatus{
		Name:      s.name,
		State:     s.state,
		Since:     timestamppb.New(s.since),
		LastError: s.lastErr,
		Address:   s.address,
		Channels:  int32(len(s.channels)),
		Users:     int32(s.liveUsersLocked()),
		Enabled:   s.enabledLocked(),
	}
	if s.lag > 0 {
		st.Lag = durationpb.New(s.lag)
	}
	if s.self != nil {
		st.Self = s.self.Proto()
	}
	return st
}

// liveUsersLocked counts distinct channel members: the weak map may still
// hold users awaiting collection, which would make the count wobble.
func (s *Server) liveUsersLocked() int {
	if len(s.channels) == 1 {
		for _, ch := range s.channels {
			return len(ch.members)
		}
	}
	seen := map[*model.User]struct{}{}
	for _, ch := range s.channels {
		for _, m := range ch.members {
			seen[m.u] = struct{}{}
		}
	}
	return len(seen)
}

// Status returns the server's current status.
func (s *Server) Status() *quiltv1.ServerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statusLocked()
}

// User returns a copy of the user tracked under transient name, if any.
func (s *Server) User(name string) (model.User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.users[name]; e != nil {
		if u := e.wp.Value(); u != nil {
			return *u, true
		}
	}
	return model.User{}, false
}

// TrackedUsers counts the entries of the weak user map whose users are
// still alive.
func (s *Server) TrackedUsers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.users {
		if e.wp.Value() != nil {
			n++
		}
	}
	return n
}

// Channels returns the names of the channels the server is in, sorted.
func (s *Server) Channels() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.channels))
	for n := range s.channels {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Members returns the transient names of channel's members, sorted.
func (s *Server) Members(channel string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.channels[channel]
	if ch == nil {
		return nil
	}
	out := make([]string, 0, len(ch.members))
	for n := range ch.members {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
