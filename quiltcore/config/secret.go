package config

import (
	"fmt"
	"log/slog"
)

const redacted = "[redacted]"

// Secret holds a password or token read from the configuration. Every way of
// printing it (fmt verbs including %#v and %x, slog, encoding/json and other
// TextMarshaler users) yields "[redacted]", or "" when unset; only Reveal
// returns the value, so a secret reaches a log only if some code explicitly
// asks for it.
//
// The value sits behind a pointer on purpose: fmt does not call methods on
// unexported struct fields, and for such a field it prints a pointer as a
// bare address rather than the string it points to.
type Secret struct {
	p *string
}

// NewSecret wraps v. An empty v gives an unset Secret.
func NewSecret(v string) Secret {
	if v == "" {
		return Secret{}
	}
	return Secret{p: &v}
}

// Reveal returns the secret value ("" when unset). Call it only where the
// value is handed to the peer that needs it.
func (s Secret) Reveal() string {
	if s.p == nil {
		return ""
	}
	return *s.p
}

// IsSet reports whether a non-empty value was configured.
func (s Secret) IsSet() bool { return s.p != nil }

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s.p == nil {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer.
func (s Secret) GoString() string { return s.String() }

// Format implements fmt.Formatter so that no verb (%x, %q, %d...) can reach
// the value.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// MarshalText implements encoding.TextMarshaler (used by encoding/json and
// slog's JSON handler).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }
