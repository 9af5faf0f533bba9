package querymaster

import (
	"fmt"
	"regexp"
	"strings"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// eventMatcher is an EventFilter compiled once per subscriber, so the hot
// path (every stored event × every subscriber) does no parsing.
type eventMatcher struct {
	sources map[string]bool
	server  string
	channel string
	user    string // lower-cased glob
	kinds   map[quiltv1.EventKind]bool
	text    string // lower-cased
	re      *regexp.Regexp
	f       *quiltv1.EventFilter
}

// compileFilter checks f and prepares it; a nil filter matches everything.
// Errors name the bad field (they become INVALID_ARGUMENT).
func compileFilter(f *quiltv1.EventFilter) (*eventMatcher, error) {
	m := &eventMatcher{f: f}
	if f == nil {
		return m, nil
	}
	if len(f.Sources) > 0 {
		m.sources = make(map[string]bool, len(f.Sources))
		for _, s := range f.Sources {
			m.sources[s] = true
		}
	}
	m.server = f.Server
	m.channel = strings.ToLower(f.Channel)
	if f.User != "" {
		m.user = strings.ToLower(f.User)
	}
	if len(f.Kinds) > 0 {
		m.kinds = make(map[quiltv1.EventKind]bool, len(f.Kinds))
		for _, k := range f.Kinds {
			m.kinds[k] = true
		}
	}
	m.text = strings.ToLower(f.Text)
	if f.TextRegex != "" {
		re, err := regexp.Compile(f.TextRegex)
		if err != nil {
			return nil, fmt.Errorf("filter.text_regex %q: %v", f.TextRegex, err)
		}
		m.re = re
	}
	if f.Since != nil && f.Until != nil && f.Until.AsTime().Before(f.Since.AsTime()) {
		return nil, fmt.Errorf("filter.until %s is before filter.since %s",
			f.Until.AsTime().Format("2006-01-02T15:04:05Z07:00"), f.Since.AsTime().Format("2006-01-02T15:04:05Z07:00"))
	}
	return m, nil
}

func (m *eventMatcher) match(e *quiltv1.Event) bool {
	if m.f == nil {
		return true
	}
	if m.sources != nil && !m.sources[e.Source] {
		return false
	}
	if m.server != "" && m.server != e.Server {
		return false
	}
	if m.channel != "" && !m.matchChannel(e) {
		return false
	}
	if m.kinds != nil && !m.kinds[e.Kind] {
		return false
	}
	if m.user != "" && !matchUser(m.user, e.User) && !matchUser(m.user, e.TargetUser) {
		return false
	}
	if m.text != "" && !strings.Contains(strings.ToLower(e.Text), m.text) {
		return false
	}
	if m.re != nil && !m.re.MatchString(e.Text) {
		return false
	}
	if m.f.Since != nil && e.Time != nil && e.Time.AsTime().Before(m.f.Since.AsTime()) {
		return false
	}
	if m.f.Until != nil && e.Time != nil && !e.Time.AsTime().Before(m.f.Until.AsTime()) {
		return false
	}
	return true
}

// matchChannel also looks at Event.channels, so a QUIT or NICK (which have
// no channel of their own) reaches a subscriber watching one of the
// channels the user shared with the bot.
func (m *eventMatcher) matchChannel(e *quiltv1.Event) bool {
	if strings.ToLower(e.Channel) == m.channel {
		return true
	}
	for _, c := range e.Channels {
		if strings.ToLower(c) == m.channel {
			return true
		}
	}
	return false
}

// matchUser matches a lower-cased glob against any of the four names.
func matchUser(glob string, u *quiltv1.User) bool {
	if u == nil {
		return false
	}
	for _, n := range [...]string{u.Transient, u.Persistent, u.Display, u.Group} {
		if n == "" {
			continue
		}
		if globMatch(glob, strings.ToLower(n)) {
			return true
		}
	}
	return false
}

// globMatch matches s against a pattern where * is any run of characters
// and ? one character. Unlike path.Match, * crosses '/', which XMPP full
// JIDs (user@host/resource) need.
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	starP, starS := -1, 0
	pr, sr := []rune(pattern), []rune(s)
	for sx < len(sr) {
		switch {
		case px < len(pr) && (pr[px] == '?' || pr[px] == sr[sx]):
			px++
			sx++
		case px < len(pr) && pr[px] == '*':
			starP, starS = px, sx
			px++
		case starP >= 0:
			starS++
			px, sx = starP+1, starS
		default:
			return false
		}
	}
	for px < len(pr) && pr[px] == '*' {
		px++
	}
	return px == len(pr)
}
