package config

import (
	"bytes"
	"fmt"
	"strings"

	"gopkg.in/ini.v1"
)

// The configuration syntax is the subset of gopkg.in/ini.v1 selected by
// iniOptions:
//
//   - `# comment` and `; comment` only on their own line. There are no inline
//     comments, so `channels = #quilt` and `password = pa#ss;word` mean what
//     they say.
//   - `key = value` (or `key: value`), one per line; no backslash
//     continuation. A value wrapped in "..." or '...' loses the quotes, which
//     keeps leading and trailing spaces. A value opened with """ or ` may
//     span lines until the matching close.
//   - `[section]` headers; keys before the first header are top-level.
//
// ini.v1 reports neither line numbers nor duplicates, so scanDocument walks
// the same text to find both; the two parsers are matched section by section
// in file order.
var iniOptions = ini.LoadOptions{
	AllowNonUniqueSections: true,
	IgnoreContinuation:     true,
	IgnoreInlineComment:    true,
}

type rawKey struct {
	name  string
	value string
	line  int
}

type rawSection struct {
	name string // trimmed header text; "" for the top level
	line int    // 0 for the top level
	keys []rawKey
}

type document struct {
	file     string
	sections []*rawSection // sections[0] is the top level
}

// parseDocument returns the sections and keys of data with their line
// numbers, or every syntax error found.
func parseDocument(file string, data []byte) (*document, Errors) {
	doc, errs := scanDocument(file, data)
	if len(errs) > 0 {
		return nil, errs
	}
	f, err := ini.LoadSources(iniOptions, data)
	if err != nil {
		// Only the error's kind: ini.v1 quotes the offending line, which may
		// hold a secret.
		kind, _, _ := strings.Cut(err.Error(), ":")
		return nil, Errors{{File: file, Msg: "syntax error: " + kind}}
	}
	secs := f.Sections()
	if len(secs) != len(doc.sections) {
		return nil, Errors{{File: file, Msg: fmt.Sprintf(
			"syntax error: found %d sections, ini parser found %d", len(doc.sections), len(secs))}}
	}
	for i, s := range doc.sections {
		vals := map[string]string{}
		for _, k := range secs[i].Keys() {
			vals[k.Name()] = k.Value()
		}
		for j := range s.keys {
			v, ok := vals[s.keys[j].name]
			if !ok {
				return nil, Errors{{File: file, Line: s.keys[j].line, Msg: fmt.Sprintf(
					"syntax error: ini parser did not see key %q", s.keys[j].name)}}
			}
			s.keys[j].value = v
		}
	}
	return doc, nil
}

// scanDocument mirrors ini.v1's line grammar under iniOptions, recording
// where each section and key starts. Values are taken from ini.v1 later.
func scanDocument(file string, data []byte) (*document, Errors) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	doc := &document{file: file, sections: []*rawSection{{}}}
	cur := doc.sections[0]
	var errs Errors
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		lineNo := i + 1
		line := strings.TrimSpace(lines[i])
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' {
			end := strings.LastIndexByte(line, ']')
			if end < 0 {
				errs = append(errs, &Error{File: file, Line: lineNo, Msg: fmt.Sprintf("unclosed section header %q", line)})
				continue
			}
			name := strings.TrimSpace(line[1:end])
			if name == "" {
				errs = append(errs, &Error{File: file, Line: lineNo, Msg: "empty section name"})
				continue
			}
			if name == ini.DefaultSection {
				errs = append(errs, &Error{File: file, Line: lineNo, Section: name,
					Msg: "explicit [DEFAULT] section is not supported; put top-level keys before the first section"})
				continue
			}
			cur = &rawSection{name: name, line: lineNo}
			doc.sections = append(doc.sections, cur)
			continue
		}
		name, rest, msg := splitKey(line)
		if msg != "" {
			errs = append(errs, &Error{File: file, Line: lineNo, Section: cur.name, Msg: msg})
			continue
		}
		cur.keys = append(cur.keys, rawKey{name: name, line: lineNo})
		// A value opened by """ or ` without its close on this line runs on
		// to the first later line holding the close (ini.v1 readMultilines).
		rest = strings.TrimLeftFunc(rest, isSpace)
		q := ""
		switch {
		case len(rest) > 3 && strings.HasPrefix(rest, `"""`):
			q = `"""`
		case strings.HasPrefix(rest, "`"):
			q = "`"
		}
		if q != "" && !strings.Contains(rest[len(q):], q) {
			closed := false
			for i+1 < len(lines) {
				i++
				if strings.Contains(lines[i], q) {
					closed = true
					break
				}
			}
			if !closed {
				errs = append(errs, &Error{File: file, Line: lineNo, Section: cur.name, Key: name,
					Msg: fmt.Sprintf("unterminated %s quoted value", q)})
			}
		}
	}
	return doc, errs
}

// notKeyValue does not quote the line: it may be a bare password.
const notKeyValue = "expected `key = value`, a `[section]` header or a `#` comment"

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\r' || r == '\v' || r == '\f' }

// splitKey follows ini.v1 readKeyName: an optionally quoted name, then the
// first '=' or ':'.
func splitKey(line string) (name, rest, msg string) {
	q := ""
	switch {
	case len(line) > 6 && strings.HasPrefix(line, `"""`):
		q = `"""`
	case line[0] == '"':
		q = `"`
	case line[0] == '`':
		q = "`"
	}
	if q != "" {
		pos := strings.Index(line[len(q):], q)
		if pos < 0 {
			return "", "", "missing closing quote in key name"
		}
		pos += len(q)
		i := strings.IndexAny(line[pos+len(q):], "=:")
		if i < 0 {
			return "", "", notKeyValue
		}
		return strings.TrimSpace(line[len(q):pos]), line[pos+len(q)+i+1:], ""
	}
	i := strings.IndexAny(line, "=:")
	switch {
	case i < 0:
		return "", "", notKeyValue
	case i == 0:
		return "", "", "empty key name"
	}
	return strings.TrimSpace(line[:i]), line[i+1:], ""
}
