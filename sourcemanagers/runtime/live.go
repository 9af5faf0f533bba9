package runtime

import (
	"sort"
	"strings"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/model"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
	"time"
)

// Act routes an action to its server's command queue; report receives the
// result exactly once (possibly before Act returns). Unknown servers fail
// with NOT_FOUND, servers without a session with UNAVAILABLE. RECONNECT is
// not queued: it flags the connection cycle.
func (m *Manager) Act(a *quiltv1.Action, report func(*quiltv1.ActionResult)) {
	s := m.Server(a.GetServer())
	if s == nil {
		report(failed(a, codes.NotFound, "no server "+quoted(a.GetServer())+" in source manager "+quoted(m.name)))
		return
	}
	if a.GetKind() == quiltv1.ActionKind_ACTION_KIND_RECONNECT {
		s.mu.Lock()
		s.reconnect = true
		s.mu.Unlock()
		m.flagCycle()
		report(&quiltv1.ActionResult{ActionId: a.GetId(), Ok: true, DoneAt: tsNow(m.clock)})
		return
	}
	s.mu.Lock()
	c := s.conn
	st := s.state
	var q *commandQueue
	if c != nil {
		q = c.queue // set under mu once the session is being opened
	}
	s.mu.Unlock()
	if q == nil || c.ctx.Err() != nil {
		report(failed(a, codes.Unavailable, "server "+quoted(s.name)+" is not connected ("+stateName(st)+")"))
		return
	}
	q.push(a, report)
}

func quoted(s string) string { return "\"" + s + "\"" }

func stateName(st quiltv1.ServerState) string {
	switch st {
	case quiltv1.ServerState_SERVER_STATE_CONNECTED:
		return "connected"
	case quiltv1.ServerState_SERVER_STATE_CONNECTING:
		return "connecting"
	case quiltv1.ServerState_SERVER_STATE_DISABLED:
		return "disabled"
	case quiltv1.ServerState_SERVER_STATE_FAILED:
		return "failed"
	}
	return "disconnected"
}

// Query answers a live query from the servers' maps. The reply is whole
// (Done set); QueryId is q's id.
func (m *Manager) Query(q *quiltv1.LiveQuery) *quiltv1.LiveReply {
	r := &quiltv1.LiveReply{QueryId: q.GetId(), Done: true}
	var servers []*Server
	if q.GetServer() != "" {
		s := m.Server(q.GetServer())
		if s == nil {
			r.Error = "no server " + quoted(q.GetServer()) + " in source manager " + quoted(m.name)
			return r
		}
		servers = []*Server{s}
	} else {
		servers = m.Servers()
	}
	glob := model.CompileGlob(q.GetUser())
	// names is reused across channels: a presence query matches a few of
	// many members, and a fresh slice per channel sized for every member
	// was most of a presence query's garbage.
	var names []string
	for _, s := range servers {
		s.mu.Lock()
		switch q.GetKind() {
		case quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS:
			r.Servers = append(r.Servers, &quiltv1.ServerRow{Source: m.name, Status: s.statusLocked()})
		case quiltv1.LiveQueryKind_LIVE_QUERY_KIND_CHANNELS:
			for _, cn := range s.channelNamesLocked(q.GetChannel()) {
				ch := s.channels[cn]
				info := cloneInfo(ch.info)
				info.MemberCount = int32(len(ch.members))
				r.Channels = append(r.Channels, &quiltv1.ChannelRow{Source: m.name, Server: s.name, Info: info})
			}
		case quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS, quiltv1.LiveQueryKind_LIVE_QUERY_KIND_PRESENCE:
			presence := q.GetKind() == quiltv1.LiveQueryKind_LIVE_QUERY_KIND_PRESENCE
			for _, cn := range s.channelNamesLocked(q.GetChannel()) {
				ch := s.channels[cn]
				names = names[:0]
				for n, mem := range ch.members {
					if presence && !glob.MatchUser(mem.u) {
						continue
					}
					names = append(names, n)
				}
				sort.Strings(names)
				for _, n := range names {
					mem := ch.members[n]
					pm := &quiltv1.Member{User: mem.u.Proto(), Modes: append([]string(nil), mem.modes...),
						Since: timestamppb.New(time.Unix(0, mem.since))}
					if presence {
						r.Presence = append(r.Presence, &quiltv1.PresenceRow{Source: m.name, Server: s.name, Channel: cn, Member: pm})
					} else {
						r.Members = append(r.Members, &quiltv1.MemberRow{Source: m.name, Server: s.name, Channel: cn, Member: pm})
					}
				}
			}
		default:
			r.Error = "unsupported live query kind " + q.GetKind().String()
		}
		s.mu.Unlock()
	}
	return r
}

// channelNamesLocked lists the channels matching only (all when empty),
// sorted.
func (s *Server) channelNamesLocked(only string) []string {
	if only != "" {
		if _, ok := s.channels[only]; ok {
			return []string{only}
		}
		// Operators name channels as they configured them: a Matrix room by
		// its alias (#room:server) while events carry the room id, an IRC
		// channel in another case than the server's.
		for n, c := range s.channels {
			if strings.EqualFold(n, only) || (c.info != nil && c.info.CanonicalAlias != "" && strings.EqualFold(c.info.CanonicalAlias, only)) {
				return []string{n}
			}
		}
		return nil
	}
	out := make([]string, 0, len(s.channels))
	for n := range s.channels {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func cloneInfo(in *quiltv1.ChannelInfo) *quiltv1.ChannelInfo {
	out := &quiltv1.ChannelInfo{
		Name: in.Name, DisplayName: in.DisplayName, Topic: in.Topic, TopicSetBy: in.TopicSetBy,
		TopicSetAt: in.TopicSetAt, CanonicalAlias: in.CanonicalAlias, MemberCount: in.MemberCount,
	}
	if len(in.Attrs) > 0 {
		out.Attrs = make(map[string]string, len(in.Attrs))
		for k, v := range in.Attrs {
			out.Attrs[k] = v
		}
	}
	return out
}
