package mongostore

import (
	"errors"
	"strings"
)

// RedactURI returns uri with the password of its userinfo replaced, for
// logs and errors.
func RedactURI(uri string) string {
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return "(unparsable uri)"
	}
	auth, after := splitAuth(rest)
	if auth == "" {
		return uri
	}
	user, _, hasPass := strings.Cut(auth, ":")
	if hasPass {
		return scheme + "://" + user + ":xxxxx@" + after
	}
	return uri
}

// splitAuth splits "user:pass@hosts/db?opts" at the userinfo's '@' (the
// last one before the path, since a password may contain '@' only
// escaped, but be lenient).
func splitAuth(rest string) (auth, after string) {
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndex(rest[:end], "@")
	if at < 0 {
		return "", rest
	}
	return rest[:at], rest[at+1:]
}

// Hosts returns the host list of a mongodb:// or mongodb+srv:// URI, for
// error messages.
func Hosts(uri string) string {
	_, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return "(unparsable uri)"
	}
	_, after := splitAuth(rest)
	if end := strings.IndexAny(after, "/?"); end >= 0 {
		after = after[:end]
	}
	return after
}

// uriPassword is the password embedded in uri, if any, so errors can be
// scrubbed of it.
func uriPassword(uri string) string {
	_, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return ""
	}
	auth, _ := splitAuth(rest)
	_, pass, _ := strings.Cut(auth, ":")
	return pass
}

// scrubbed wraps an error whose text must not contain any of secrets.
type scrubbed struct {
	msg string
	err error
}

func (s scrubbed) Error() string { return s.msg }
func (s scrubbed) Unwrap() error { return s.err }

// scrub removes secrets from err's text, keeping it unwrappable. The
// driver's errors can echo the connection string.
func scrub(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range secrets {
		if len(s) >= 1 && strings.Contains(msg, s) {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
			changed = true
		}
	}
	if !changed {
		return err
	}
	var sc scrubbed
	if errors.As(err, &sc) {
		return scrubbed{msg: msg, err: sc.err}
	}
	return scrubbed{msg: msg, err: err}
}
