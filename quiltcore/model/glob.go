package model

import (
	"strings"
	"unicode/utf8"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// Glob is a case-insensitive wildcard pattern: * matches any run of
// characters (including none), ? exactly one character. There is no escape
// and no character class: chat names may contain [ and ] (IRC nicks do).
type Glob struct {
	pattern string // lower-cased
	literal bool   // no wildcard: plain equality
}

// CompileGlob prepares pattern for matching. The empty pattern matches
// everything, as an unrestricted query expects.
func CompileGlob(pattern string) Glob {
	if pattern == "" {
		pattern = "*"
	}
	p := strings.ToLower(pattern)
	return Glob{pattern: p, literal: !strings.ContainsAny(p, "*?")}
}

// String returns the (lower-cased) pattern.
func (g Glob) String() string { return g.pattern }

// Match reports whether s matches the whole pattern, ignoring case.
func (g Glob) Match(s string) bool {
	if g.literal {
		return strings.EqualFold(g.pattern, s)
	}
	return globMatch(g.pattern, strings.ToLower(s))
}

// MatchUser reports whether any of u's four names matches. Empty names
// never match (a pattern of "*" should not find users by a name they lack,
// but it still matches through the transient name, which is always set).
func (g Glob) MatchUser(u *User) bool {
	if u == nil {
		return false
	}
	for _, n := range u.Names() {
		if n != "" && g.Match(n) {
			return true
		}
	}
	return false
}

// MatchProto is MatchUser for the wire form.
func (g Glob) MatchProto(u *quiltv1.User) bool {
	if u == nil {
		return false
	}
	for _, n := range [4]string{u.Transient, u.Persistent, u.Display, u.Group} {
		if n != "" && g.Match(n) {
			return true
		}
	}
	return false
}

// globMatch is the classic linear-time wildcard matcher with one backtrack
// point (the last *), working on runes so ? consumes one character.
func globMatch(p, s string) bool {
	px, sx := 0, 0
	starP, starS := -1, -1
	for sx < len(s) {
		if px < len(p) {
			switch c := p[px]; c {
			case '*':
				starP, starS = px, sx
				px++
				continue
			case '?':
				_, n := utf8.DecodeRuneInString(s[sx:])
				px++
				sx += n
				continue
			default:
				pr, pn := utf8.DecodeRuneInString(p[px:])
				sr, sn := utf8.DecodeRuneInString(s[sx:])
				if pr == sr {
					px += pn
					sx += sn
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		// Let the last * swallow one more character and retry.
		_, n := utf8.DecodeRuneInString(s[starS:])
		starS += n
		px, sx = starP+1, starS
	}
	for px < len(p) && p[px] == '*' {
		px++
	}
	return px == len(p)
}
