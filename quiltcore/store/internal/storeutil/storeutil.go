// Package storeutil holds what both store implementations must compute the
// same way (user names and keys, batch checks, page tokens, globs), so the
// contract suite cannot be passed by one and failed by the other through a
// difference in a helper.
package storeutil

import (
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
	"google.golang.org/protobuf/proto"
)

// ErrBadPageToken: the page token was not produced by this store.
var ErrBadPageToken = errors.New("store: bad page token")

// Names returns the user's distinct non-empty names, lowercased, so "user by
// any of the four names" is one indexed lookup of one column.
func Names(u *quiltv1.User) []string {
	if u == nil {
		return nil
	}
	out := make([]string, 0, 4)
	for _, n := range [...]string{u.GetTransient(), u.GetPersistent(), u.GetDisplay(), u.GetGroup()} {
		if n == "" {
			continue
		}
		n = strings.ToLower(n)
		dup := false
		for _, o := range out {
			if o == n {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, n)
		}
	}
	return out
}

// UserKey is how LastSeen groups events into users: the group name when
// known, else the transient name, lowercased.
func UserKey(u *quiltv1.User) string {
	if g := u.GetGroup(); g != "" {
		return strings.ToLower(g)
	}
	return strings.ToLower(u.GetTransient())
}

// IsMessage reports whether kind counts as "something the user said" for
// LastSeen.
func IsMessage(k quiltv1.EventKind) bool {
	switch k {
	case quiltv1.EventKind_EVENT_KIND_MESSAGE, quiltv1.EventKind_EVENT_KIND_NOTICE, quiltv1.EventKind_EVENT_KIND_ACTION:
		return true
	}
	return false
}

// MessageKinds are the kinds IsMessage accepts.
var MessageKinds = []quiltv1.EventKind{
	quiltv1.EventKind_EVENT_KIND_MESSAGE, quiltv1.EventKind_EVENT_KIND_NOTICE, quiltv1.EventKind_EVENT_KIND_ACTION,
}

// CheckBatch rejects a batch the store cannot de-duplicate: the runtime
// always assigns ids, so an event without one is a bug upstream and storing
// it would make replays produce copies. It returns the events with Source
// filled in (cloning only the events that need it, since callers may share
// them between goroutines).
func CheckBatch(source string, events []*quiltv1.Event) ([]*quiltv1.Event, error) {
	if source == "" {
		return nil, errors.New("store: insert: empty source name")
	}
	if strings.Contains(source, "/") {
		// Stores key events by source + "/" + id.
		return nil, fmt.Errorf("store: insert: source name %q contains '/'", source)
	}
	out := events
	for i, e := range events {
		if e == nil {
			return nil, fmt.Errorf("store: insert from source %q: event %d of %d is nil", source, i, len(events))
		}
		if e.GetId() == "" {
			return nil, fmt.Errorf("store: insert from source %q: event %d of %d (kind %s, server %q) has no id; the batch is rejected because an event without an id cannot be de-duplicated", source, i, len(events), e.GetKind(), e.GetServer())
		}
		switch e.GetSource() {
		case source:
		case "":
			if &out[0] == &events[0] {
				out = append([]*quiltv1.Event(nil), events...)
			}
			c := proto.Clone(e).(*quiltv1.Event)
			c.Source = source
			out[i] = c
		default:
			return nil, fmt.Errorf("store: insert from source %q: event %q names source %q", source, e.GetId(), e.GetSource())
		}
	}
	return out, nil
}

// TimeNS is an event's time in Unix nanoseconds; events without a time sort
// as the epoch.
func TimeNS(e *quiltv1.Event) int64 {
	if t := e.GetTime(); t != nil {
		return t.AsTime().UnixNano()
	}
	return 0
}

// Key is a position in the (time, insertion order) sequence of events.
type Key struct {
	TimeNS int64
	Seq    int64
}

// EncodeToken makes the opaque page token for the last row of a page.
func EncodeToken(k Key) string {
	return base64.RawURLEncoding.EncodeToString([]byte("v1." + strconv.FormatInt(k.TimeNS, 36) + "." + strconv.FormatInt(k.Seq, 36)))
}

// DecodeToken parses EncodeToken's output.
func DecodeToken(tok string) (Key, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return Key{}, fmt.Errorf("%w %q: %v", ErrBadPageToken, tok, err)
	}
	parts := strings.Split(string(b), ".")
	if len(parts) != 3 || parts[0] != "v1" {
		return Key{}, fmt.Errorf("%w %q", ErrBadPageToken, tok)
	}
	t, err1 := strconv.ParseInt(parts[1], 36, 64)
	s, err2 := strconv.ParseInt(parts[2], 36, 64)
	if err1 != nil || err2 != nil {
		return Key{}, fmt.Errorf("%w %q", ErrBadPageToken, tok)
	}
	return Key{TimeNS: t, Seq: s}, nil
}

// Limit clamps a requested page size.
func Limit(n int) int {
	switch {
	case n <= 0:
		return store.DefaultLimit
	case n > store.MaxLimit:
		return store.MaxLimit
	}
	return n
}

// HasWildcard reports whether a user pattern is a glob rather than a name.
func HasWildcard(p string) bool { return strings.ContainsAny(p, "*?") }

// GlobRegex turns a user glob (* and ?) into an anchored regular
// expression matching a lowercased name; everything else is literal.
func GlobRegex(p string) string {
	var b strings.Builder
	b.WriteByte('^')
	for _, r := range strings.ToLower(p) {
		switch r {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteByte('.')
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteByte('$')
	return b.String()
}

// CheckFilter validates what a store cannot answer, before it runs anything.
func CheckFilter(f *quiltv1.EventFilter) error {
	if re := f.GetTextRegex(); re != "" {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("store: text_regex %q: %v", re, err)
		}
	}
	if f.GetSince() != nil && f.GetUntil() != nil && !f.GetSince().AsTime().Before(f.GetUntil().AsTime()) {
		return fmt.Errorf("store: since %s is not before until %s", f.GetSince().AsTime().Format(time.RFC3339Nano), f.GetUntil().AsTime().Format(time.RFC3339Nano))
	}
	return nil
}

// LastSeenRow builds the row for one user from its newest event and newest
// message (nil when none).
func LastSeenRow(last, msg *quiltv1.Event) *quiltv1.LastSeenRow {
	return &quiltv1.LastSeenRow{
		User:        last.GetUser(),
		Source:      last.GetSource(),
		Server:      last.GetServer(),
		Channel:     last.GetChannel(),
		Time:        last.GetTime(),
		Kind:        last.GetKind(),
		LastEvent:   last,
		LastMessage: msg,
	}
}
