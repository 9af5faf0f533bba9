package imap

import (
	"bytes"
	"html"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message"
	// Registers the common charsets (ISO-8859-*, Windows-125x, ...) with
	// go-message, so bodies and RFC 2047 words in them decode to UTF-8.
	_ "github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/mail"
)

// maxDepth bounds multipart nesting; a crafted mail could nest without end.
const maxDepth = 16

// parsed is what a MAIL event takes from a mail's bytes.
type parsed struct {
	MessageID string
	From      string // address, domain in lower case; raw header text when unparsable
	FromName  string // display name, when present
	To        []string
	Subject   string
	Body      string
	Truncated bool // Body was cut at MaxBody
}

// parseMail reads at most the headers and the body text of raw, which may
// itself be cut short (MaxFetch). It never fails: a part it cannot read
// leaves its field empty, as a mail client shows what it can.
func parseMail(raw []byte) parsed {
	var p parsed
	e, err := message.Read(bytes.NewReader(raw))
	if e == nil {
		_ = err // an unreadable header: nothing to show
		return p
	}
	h := mail.Header{Header: e.Header}
	p.From, p.FromName = sender(&h)
	if to, err := h.AddressList("To"); err == nil {
		for _, a := range to {
			if a != nil && a.Address != "" {
				p.To = append(p.To, normAddr(a.Address))
			}
		}
	} else if v := h.Get("To"); v != "" {
		p.To = []string{clean(v)}
	}
	// On a decoding error Subject returns the raw text, which beats nothing.
	s, _ := h.Subject()
	p.Subject = clean(s)
	if id, err := h.MessageID(); err == nil {
		p.MessageID = id
	} else {
		p.MessageID = strings.Trim(clean(h.Get("Message-Id")), "<>")
	}

	var pick textPick
	pick.walk(e, 0)
	body, trunc := pick.plain, pick.plainCut
	if !pick.havePlain && pick.haveHTML {
		body, trunc = htmlText(pick.html), pick.htmlCut
	}
	body = strings.ReplaceAll(body, "\r\n", "\n")
	body = strings.TrimRight(body, " \t\r\n")
	if len(body) > MaxBody {
		body, trunc = body[:MaxBody], true
	}
	if trunc {
		// Never leave half a UTF-8 sequence at the cut.
		for i := 0; i < utf8.UTFMax-1 && len(body) > 0; i++ {
			if r, size := utf8.DecodeLastRuneInString(body); r != utf8.RuneError || size != 1 {
				break
			}
			body = body[:len(body)-1]
		}
	}
	p.Body = strings.ToValidUTF8(body, "\uFFFD")
	p.Truncated = trunc
	return p
}

// sender is the From address (or Sender's when From is empty) and its name.
func sender(h *mail.Header) (addr, name string) {
	for _, key := range []string{"From", "Sender"} {
		list, err := h.AddressList(key)
		if err == nil {
			for _, a := range list {
				if a != nil && a.Address != "" {
					return normAddr(a.Address), clean(a.Name)
				}
			}
		}
		if v := clean(h.Get(key)); v != "" {
			// Unparsable: the text is still the best name for the sender.
			return v, ""
		}
	}
	return "", ""
}

// normAddr lowers the domain, which is case-insensitive, so one sender is one
// user; the local part may be case-sensitive (RFC 5321 §2.4) and is kept.
func normAddr(a string) string {
	a = clean(a)
	if i := strings.LastIndexByte(a, '@'); i >= 0 {
		return a[:i] + strings.ToLower(a[i:])
	}
	return a
}

// clean makes header text safe to show: valid UTF-8, no control characters,
// folded whitespace collapsed.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\r' || r == '\n' || r < 0x20 || r == 0x7f
	}), " ")
}

// textPick finds the first text/plain part that is not an attachment, and
// the first text/html one as a fallback.
type textPick struct {
	plain, html         string
	havePlain, haveHTML bool
	plainCut, htmlCut   bool
}

func (t *textPick) walk(e *message.Entity, depth int) {
	if t.havePlain || depth > maxDepth {
		return
	}
	if mr := e.MultipartReader(); mr != nil {
		for !t.havePlain {
			p, err := mr.NextPart()
			if p == nil || (err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err)) {
				// io.EOF, or a mail cut short at MaxFetch: keep what was found.
				return
			}
			t.walk(p, depth+1)
		}
		return
	}
	mt, _, _ := e.Header.ContentType()
	if disp, _, _ := e.Header.ContentDisposition(); disp == "attachment" {
		return
	}
	switch {
	case mt == "text/plain" || (mt == "" && depth == 0):
		t.plain, t.plainCut = readAtMost(e.Body, MaxBody)
		t.havePlain = true
	case mt == "text/html" && !t.haveHTML:
		t.html, t.htmlCut = readAtMost(e.Body, MaxFetch)
		t.haveHTML = true
	}
}

// readAtMost reads up to n bytes; a read error (a truncated base64 part)
// keeps what was decoded before it.
func readAtMost(r io.Reader, n int) (string, bool) {
	b, _ := io.ReadAll(io.LimitReader(r, int64(n)+1))
	if len(b) > n {
		return string(b[:n]), true
	}
	return string(b), false
}

// htmlText is a crude HTML-to-text for mails without a plain part: tags go,
// block ends become line breaks, entities are decoded, script and style
// content is dropped.
func htmlText(s string) string {
	var b strings.Builder
	skip := ""
	for len(s) > 0 {
		i := strings.IndexByte(s, '<')
		if i < 0 {
			if skip == "" {
				b.WriteString(s)
			}
			break
		}
		if skip == "" {
			b.WriteString(s[:i])
		}
		s = s[i:]
		j := strings.IndexByte(s, '>')
		if j < 0 {
			break
		}
		tag := strings.ToLower(strings.TrimLeft(s[1:j], "/ \t\r\n"))
		if k := strings.IndexAny(tag, " \t\r\n/"); k >= 0 {
			tag = tag[:k]
		}
		closing := strings.HasPrefix(s[1:], "/")
		switch {
		case skip != "":
			if closing && tag == skip {
				skip = ""
			}
		case !closing && (tag == "script" || tag == "style"):
			skip = tag
		case tag == "br" || tag == "p" || tag == "div" || tag == "tr" || tag == "li" ||
			(len(tag) == 2 && tag[0] == 'h' && tag[1] >= '1' && tag[1] <= '6'):
			b.WriteByte('\n')
		}
		s = s[j+1:]
	}
	lines := strings.Split(html.UnescapeString(b.String()), "\n")
	out := lines[:0]
	for _, l := range lines {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
