// Package model holds the protocol-independent shapes the source-manager
// runtime works with: the four-name User (DESIGN.md §4), glob matching over
// those names, and helpers to build and name events.
package model

import quiltv1 "github.com/quilt/quilt/proto/quilt/v1"

// User is one person or bot on one server, named four ways. Only Transient is
// guaranteed; the others are filled in as the protocol reveals them.
//
// A server's runtime owns its User values and mutates them under the server's
// lock; other goroutines must work on copies (Proto).
type User struct {
	// Transient is unique on the server at an instant (IRC nick, callsign,
	// full JID, e-mail address, MXID). The user map is keyed by it.
	Transient string
	// Persistent is the identity used for authentication (IRC user@host,
	// "+callsign" when verified, bare JID, e-mail, MXID).
	Persistent string
	// Display is for humans (nick, callsign, XMPP nickname, displayname).
	Display string
	// Group ties the sessions of one account together (nick or account,
	// callsign, bare JID, e-mail, MXID).
	Group string
	// Self marks the source manager's own account.
	Self bool
	// Tracked is true while the user is reachable through its server's user
	// map. A rename conflict (the protocol renames someone onto a name still
	// tracked) drops the old holder and clears its flag, so code holding the
	// stale object can tell it no longer names anyone.
	Tracked bool
}

// FromProto makes a User from the wire form; nil gives nil.
func FromProto(p *quiltv1.User) *User {
	if p == nil {
		return nil
	}
	return &User{
		Transient:  p.GetTransient(),
		Persistent: p.GetPersistent(),
		Display:    p.GetDisplay(),
		Group:      p.GetGroup(),
		Self:       p.GetSelf(),
	}
}

// Proto returns the wire form of u (a copy); nil gives nil.
func (u *User) Proto() *quiltv1.User {
	if u == nil {
		return nil
	}
	return &quiltv1.User{
		Transient:  u.Transient,
		Persistent: u.Persistent,
		Display:    u.Display,
		Group:      u.Group,
		Self:       u.Self,
	}
}

// Update copies the names p gives (non-empty) into u, leaving the others as
// they are. Transient is not touched: changing it is a rename, which only
// the user map may do. Self is sticky: once known it stays set.
// It reports whether anything changed.
func (u *User) Update(p *quiltv1.User) bool {
	if p == nil {
		return false
	}
	changed := false
	set := func(dst *string, v string) {
		if v != "" && *dst != v {
			*dst = v
			changed = true
		}
	}
	set(&u.Persistent, p.GetPersistent())
	set(&u.Display, p.GetDisplay())
	set(&u.Group, p.GetGroup())
	if p.GetSelf() && !u.Self {
		u.Self = true
		changed = true
	}
	return changed
}

// Fill sets the names p leaves empty from u, so events carry everything the
// server knows about their users. Names p gives are kept.
func (u *User) Fill(p *quiltv1.User) {
	if u == nil || p == nil {
		return
	}
	if p.Transient == "" {
		p.Transient = u.Transient
	}
	if p.Persistent == "" {
		p.Persistent = u.Persistent
	}
	if p.Display == "" {
		p.Display = u.Display
	}
	if p.Group == "" {
		p.Group = u.Group
	}
	if u.Self {
		p.Self = true
	}
}

// Names returns the four names in the order transient, persistent,
// display, group (empty ones included).
func (u *User) Names() [4]string {
	return [4]string{u.Transient, u.Persistent, u.Display, u.Group}
}
