package irc

import (
	"strings"
	"unicode/utf8"
)

// sanitizeLines turns action text into the lines to send. CR, LF and NUL can
// never reach the wire inside a parameter: a line break starts a new message
// to the same target (so "hi\r\nQUIT" sends the text "QUIT" to the target,
// not a QUIT command), and NUL is dropped.
func sanitizeLines(text string) []string {
	text = strings.ReplaceAll(text, "\x00", "")
	text = strings.ReplaceAll(text, "\r\n", "\n")
	text = strings.ReplaceAll(text, "\r", "\n")
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// splitText cuts text into chunks of at most max bytes, never inside a UTF-8
// sequence, preferring to break after a space when one falls in the second
// half of the chunk (so words stay whole without wasting most of a line).
func splitText(text string, max int) []string {
	if max < utf8.UTFMax {
		max = utf8.UTFMax
	}
	var out []string
	for len(text) > max {
		cut := max
		// back up to a rune boundary
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		if text[cut] == ' ' {
			out = append(out, text[:cut])
			text = text[cut+1:]
			continue
		}
		if sp := strings.LastIndexByte(text[:cut], ' '); sp > cut/2 {
			out = append(out, text[:sp])
			text = text[sp+1:]
			continue
		}
		out = append(out, text[:cut])
		text = text[cut:]
	}
	if text != "" {
		out = append(out, text)
	}
	return out
}

// validTarget reports whether s can be used as a command parameter that is
// not the last one: non-empty, no space, no leading ':', no control bytes
// that end or split a line.
func validTarget(s string) bool {
	if s == "" || s[0] == ':' {
		return false
	}
	return !strings.ContainsAny(s, " \r\n\x00\x07,")
}
