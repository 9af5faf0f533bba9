package quilttest

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// fields is a flattened event or query row: each field may have several
// values (a user's four names, a source's servers). A condition with = or
// ~ holds when any value matches; with != or !~ when none does.
type fields map[string][]string

// Field names per row type, for error messages and checks.
var (
	eventFields    = []string{"id", "source", "server", "protocol", "kind", "user", "nick", "self", "channel", "private", "target", "text", "raw", "topic", "members"}
	memberFields   = []string{"source", "server", "channel", "user", "nick", "self", "modes"}
	channelFields  = []string{"source", "server", "channel", "topic", "members"}
	serverFields   = []string{"source", "server", "state", "enabled", "address", "channels", "users", "error", "user", "nick"}
	lastSeenFields = []string{"source", "server", "channel", "user", "nick", "kind", "time", "text"}
	sourceFields   = []string{"source", "protocol", "version", "node", "attached", "health", "server", "events"}
)

func checkFields(cs []cond, known []string) error {
	for _, c := range cs {
		if !contains(known, c.Field) && !strings.HasPrefix(c.Field, "tags.") {
			return fmt.Errorf("unknown field %q: want %s (or tags.NAME)", c.Field, strings.Join(known, ", "))
		}
	}
	return nil
}

func names(u *quiltv1.User) []string {
	if u == nil {
		return nil
	}
	var out []string
	for _, n := range []string{u.GetTransient(), u.GetPersistent(), u.GetDisplay(), u.GetGroup()} {
		if n != "" && !contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func one(s string) []string { return []string{s} }

func boolStr(b bool) []string { return one(strconv.FormatBool(b)) }

func kindName(k quiltv1.EventKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "EVENT_KIND_"))
}

func eventKind(s string) (quiltv1.EventKind, bool) {
	v, ok := quiltv1.EventKind_value["EVENT_KIND_"+strings.ToUpper(strings.TrimSpace(s))]
	if !ok || v == 0 {
		return 0, false
	}
	return quiltv1.EventKind(v), true
}

func eventKindNames() []string {
	var out []string
	for v := range quiltv1.EventKind_name {
		if v != 0 {
			out = append(out, kindName(quiltv1.EventKind(v)))
		}
	}
	sort.Strings(out)
	return out
}

func eventFieldsOf(e *quiltv1.Event) fields {
	f := fields{
		"id": one(e.GetId()), "source": one(e.GetSource()), "server": one(e.GetServer()),
		"protocol": one(e.GetProtocol()), "kind": one(kindName(e.GetKind())),
		"user": names(e.GetUser()), "nick": one(e.GetUser().GetTransient()),
		"self": boolStr(e.GetUser().GetSelf()), "channel": one(e.GetChannel()),
		"private": boolStr(e.GetPrivate()), "target": names(e.GetTargetUser()),
		"text": one(e.GetText()), "raw": one(e.GetRaw()),
		"topic":   one(e.GetChannelInfo().GetTopic()),
		"members": one(strconv.Itoa(len(e.GetMembers()))),
	}
	for k, v := range e.GetTags() {
		f["tags."+k] = one(v)
	}
	return f
}

func memberFieldsOf(source, server, channel string, m *quiltv1.Member) fields {
	return fields{
		"source": one(source), "server": one(server), "channel": one(channel),
		"user": names(m.GetUser()), "nick": one(m.GetUser().GetTransient()),
		"self": boolStr(m.GetUser().GetSelf()), "modes": m.GetModes(),
	}
}

// rowFields flattens a query row; known lists its field names.
func rowFields(r *quiltv1.QueryResult) (f fields, kind string, known []string) {
	switch x := r.GetResult().(type) {
	case *quiltv1.QueryResult_Event:
		return eventFieldsOf(x.Event), "events", eventFields
	case *quiltv1.QueryResult_Presence:
		p := x.Presence
		return memberFieldsOf(p.GetSource(), p.GetServer(), p.GetChannel(), p.GetMember()), "presence", memberFields
	case *quiltv1.QueryResult_Member:
		m := x.Member
		return memberFieldsOf(m.GetSource(), m.GetServer(), m.GetChannel(), m.GetMember()), "members", memberFields
	case *quiltv1.QueryResult_Channel:
		c := x.Channel
		chans := []string{c.GetInfo().GetName()}
		for _, n := range []string{c.GetInfo().GetDisplayName(), c.GetInfo().GetCanonicalAlias()} {
			if n != "" && !contains(chans, n) {
				chans = append(chans, n)
			}
		}
		return fields{"source": one(c.GetSource()), "server": one(c.GetServer()), "channel": chans,
			"topic": one(c.GetInfo().GetTopic()), "members": one(strconv.Itoa(int(c.GetInfo().GetMemberCount())))}, "channels", channelFields
	case *quiltv1.QueryResult_Server:
		s := x.Server.GetStatus()
		return fields{"source": one(x.Server.GetSource()), "server": one(s.GetName()),
			"state":   one(strings.ToLower(strings.TrimPrefix(s.GetState().String(), "SERVER_STATE_"))),
			"enabled": boolStr(s.GetEnabled()), "address": one(s.GetAddress()),
			"channels": one(strconv.Itoa(int(s.GetChannels()))), "users": one(strconv.Itoa(int(s.GetUsers()))),
			"error": one(s.GetLastError()), "user": names(s.GetSelf()), "nick": one(s.GetSelf().GetTransient())}, "servers", serverFields
	case *quiltv1.QueryResult_LastSeen:
		l := x.LastSeen
		t := ""
		if l.GetTime() != nil {
			t = l.GetTime().AsTime().UTC().Format(time.RFC3339)
		}
		return fields{"source": one(l.GetSource()), "server": one(l.GetServer()), "channel": one(l.GetChannel()),
			"user": names(l.GetUser()), "nick": one(l.GetUser().GetTransient()), "kind": one(kindName(l.GetKind())),
			"time": one(t), "text": one(l.GetLastMessage().GetText())}, "lastseen", lastSeenFields
	case *quiltv1.QueryResult_Source:
		s := x.Source
		var servers []string
		for _, sv := range s.GetServers() {
			servers = append(servers, sv.GetName())
		}
		return fields{"source": one(s.GetName()), "protocol": one(s.GetProtocol()), "version": one(s.GetVersion()),
			"node": one(s.GetNode()), "attached": boolStr(s.GetAttached()), "health": one(s.GetHealth()),
			"server": servers, "events": one(strconv.FormatUint(s.GetEventsStored(), 10))}, "sources", sourceFields
	}
	return fields{}, "unknown", nil
}

// compiled is a condition with its variables expanded and regexp built.
type compiled struct {
	cond
	re *regexp.Regexp
}

func (c compiled) holds(f fields) bool {
	vals, ok := f[c.Field]
	if !ok || len(vals) == 0 {
		vals = []string{""}
	}
	any := false
	for _, v := range vals {
		if c.one(v) {
			any = true
			break
		}
	}
	switch c.Op {
	case "!=":
		return !anyEqual(vals, c.Value)
	case "!~":
		for _, v := range vals {
			if c.re.MatchString(v) {
				return false
			}
		}
		return true
	}
	return any
}

func anyEqual(vals []string, want string) bool {
	for _, v := range vals {
		if v == want {
			return true
		}
	}
	return false
}

func (c compiled) one(v string) bool {
	switch c.Op {
	case "=":
		return v == c.Value
	case "~":
		return c.re.MatchString(v)
	case ">", ">=", "<", "<=":
		a, err1 := strconv.ParseFloat(v, 64)
		b, err2 := strconv.ParseFloat(c.Value, 64)
		if err1 != nil || err2 != nil {
			return false
		}
		return compare(a, c.Op, b)
	}
	return false
}

func compare(a float64, op string, b float64) bool {
	switch op {
	case "=", "==":
		return a == b
	case "!=":
		return a != b
	case "<":
		return a < b
	case "<=":
		return a <= b
	case ">":
		return a > b
	case ">=":
		return a >= b
	}
	return false
}

func allHold(cs []compiled, f fields) bool {
	for _, c := range cs {
		if !c.holds(f) {
			return false
		}
	}
	return true
}

// describe shows a flattened row for failure messages, known fields only,
// empty ones left out.
func describe(f fields, known []string) string {
	var b strings.Builder
	for _, k := range known {
		v := f[k]
		if len(v) == 0 || (len(v) == 1 && v[0] == "") {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if len(v) == 1 {
			fmt.Fprintf(&b, "%s=%s", k, quoteIfNeeded(v[0]))
		} else {
			q := make([]string, len(v))
			for i, x := range v {
				q[i] = quoteIfNeeded(x)
			}
			fmt.Fprintf(&b, "%s=[%s]", k, strings.Join(q, ","))
		}
	}
	return b.String()
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\"\n") {
		return strconv.Quote(s)
	}
	return s
}
