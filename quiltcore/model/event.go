package model

import (
	"fmt"
	"sort"
	"strings"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// kindNames are the short names used by the CLI and in logs. They are part
// of the user interface: do not rename.
var kindNames = map[quiltv1.EventKind]string{
	quiltv1.EventKind_EVENT_KIND_MESSAGE:      "message",
	quiltv1.EventKind_EVENT_KIND_NOTICE:       "notice",
	quiltv1.EventKind_EVENT_KIND_ACTION:       "action",
	quiltv1.EventKind_EVENT_KIND_JOIN:         "join",
	quiltv1.EventKind_EVENT_KIND_PART:         "part",
	quiltv1.EventKind_EVENT_KIND_QUIT:         "quit",
	quiltv1.EventKind_EVENT_KIND_KICK:         "kick",
	quiltv1.EventKind_EVENT_KIND_NICK:         "nick",
	quiltv1.EventKind_EVENT_KIND_TOPIC:        "topic",
	quiltv1.EventKind_EVENT_KIND_MEMBERS:      "members",
	quiltv1.EventKind_EVENT_KIND_CONNECTED:    "connected",
	quiltv1.EventKind_EVENT_KIND_DISCONNECTED: "disconnected",
	quiltv1.EventKind_EVENT_KIND_MAIL:         "mail",
	quiltv1.EventKind_EVENT_KIND_GAME_CHAT:    "game_chat",
	quiltv1.EventKind_EVENT_KIND_RAW:          "raw",
	quiltv1.EventKind_EVENT_KIND_MODE:         "mode",
	quiltv1.EventKind_EVENT_KIND_CHANNEL_INFO: "channel_info",
	quiltv1.EventKind_EVENT_KIND_PRESENCE:     "presence",
}

var kindByName = func() map[string]quiltv1.EventKind {
	m := make(map[string]quiltv1.EventKind, len(kindNames))
	for k, n := range kindNames {
		m[n] = k
	}
	return m
}()

// KindName returns the short name of k ("message", "join", ...), or the
// enum's own name for values this package does not know.
func KindName(k quiltv1.EventKind) string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return k.String()
}

// ParseKind turns a short name back into an EventKind. It also accepts the
// enum's full name (EVENT_KIND_JOIN) and ignores case and '-' vs '_'.
func ParseKind(s string) (quiltv1.EventKind, error) {
	n := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(s)), "-", "_")
	n = strings.TrimPrefix(n, "event_kind_")
	if k, ok := kindByName[n]; ok {
		return k, nil
	}
	return 0, fmt.Errorf("unknown event kind %q (known: %s)", s, strings.Join(KindNames(), ", "))
}

// ParseKinds parses a comma-separated list of kind names; empty gives nil.
func ParseKinds(s string) ([]quiltv1.EventKind, error) {
	var out []quiltv1.EventKind
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		k, err := ParseKind(part)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

// KindNames lists every short name in enum order.
func KindNames() []string {
	ks := make([]quiltv1.EventKind, 0, len(kindNames))
	for k := range kindNames {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = kindNames[k]
	}
	return out
}

// NewEvent starts an event of kind k done by user (may be nil) at now, with
// Time and Received both set to now. Source, server, protocol and id are
// the runtime's to fill in.
func NewEvent(k quiltv1.EventKind, now time.Time, user *quiltv1.User) *quiltv1.Event {
	ts := timestamppb.New(now)
	return &quiltv1.Event{Kind: k, Time: ts, Received: ts, User: user}
}

// NewMessage is NewEvent for a MESSAGE from user to channel (or, with
// channel empty, a private message to the bot).
func NewMessage(now time.Time, user *quiltv1.User, channel, text string) *quiltv1.Event {
	e := NewEvent(quiltv1.EventKind_EVENT_KIND_MESSAGE, now, user)
	e.Channel = channel
	e.Text = text
	e.Private = channel == ""
	return e
}

// U is shorthand for a wire user known only by its transient name.
func U(transient string) *quiltv1.User { return &quiltv1.User{Transient: transient} }
