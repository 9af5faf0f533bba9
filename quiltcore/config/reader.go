package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// expandCfg replaces $QUILT_CFG and ${QUILT_CFG} with dir. Nothing else is
// expanded: values such as passwords may legitimately contain '$', and a
// config file silently picking up the daemon's environment would be a trap.
// $QUILT_CFG_DIR and similar longer names are left alone.
func expandCfg(s, dir string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "${QUILT_CFG}"):
			b.WriteString(dir)
			i += len("${QUILT_CFG}")
		case strings.HasPrefix(s[i:], "$QUILT_CFG") && !isIdentByte(s, i+len("$QUILT_CFG")):
			b.WriteString(dir)
			i += len("$QUILT_CFG")
		default:
			b.WriteByte(s[i])
			i++
		}
	}
	return b.String()
}

func isIdentByte(s string, i int) bool {
	if i >= len(s) {
		return false
	}
	c := s[i]
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// secretKeys are the keys whose literal values are secrets: never echoed in
// errors and never $QUILT_CFG-expanded.
var secretKeys = map[string]bool{"token": true, "password": true, "sasl_password": true, "access_token": true}

// section reads the typed values of one raw section. Every getter records
// its key as known, so after all getters ran, finish can reject the keys
// nobody asked for; the schema is the code that reads it.
type section struct {
	file    string
	name    string // display name, "" for top level
	line    int
	cfgDir  string // value of $QUILT_CFG
	baseDir string // relative paths resolve here
	vals    map[string]string
	lines   map[string]int
	known   []string
	errs    *Errors
}

func newSection(file string, raw *rawSection, cfgDir, baseDir string, errs *Errors) *section {
	s := &section{
		file: file, name: raw.name, line: raw.line, cfgDir: cfgDir, baseDir: baseDir,
		vals: map[string]string{}, lines: map[string]int{}, errs: errs,
	}
	for _, k := range raw.keys {
		if first, dup := s.lines[k.name]; dup {
			s.failAt(k.line, k.name, "duplicate key (first set at line %d)", first)
			continue
		}
		s.vals[k.name] = k.value
		s.lines[k.name] = k.line
	}
	return s
}

func (s *section) failAt(line int, key, format string, args ...any) {
	*s.errs = append(*s.errs, &Error{File: s.file, Line: line, Section: s.name, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// fail reports a problem with key, at its line when the key is present and
// at the section header otherwise (a missing required key).
func (s *section) fail(key, format string, args ...any) {
	line, ok := s.lines[key]
	if !ok {
		line = s.line
	}
	s.failAt(line, key, format, args...)
}

func (s *section) know(key string) {
	if !slices.Contains(s.known, key) {
		s.known = append(s.known, key)
	}
}

func (s *section) has(key string) bool {
	s.know(key)
	_, ok := s.vals[key]
	return ok
}

// raw returns the value with $QUILT_CFG expanded and whether it was set.
func (s *section) raw(key string) (string, bool) {
	s.know(key)
	v, ok := s.vals[key]
	if !ok {
		return "", false
	}
	return expandCfg(v, s.cfgDir), true
}

// str returns the value or def; both are $QUILT_CFG-expanded, since
// defaults such as "$QUILT_CFG/smd.d" use it too.
func (s *section) str(key, def string) string {
	if v, ok := s.raw(key); ok {
		return v
	}
	return expandCfg(def, s.cfgDir)
}

func (s *section) required(key, what string) string {
	v, ok := s.raw(key)
	if !ok || v == "" {
		s.fail(key, "required: %s", what)
		return ""
	}
	return v
}

func (s *section) boolean(key string, def bool) bool {
	v, ok := s.raw(key)
	if !ok {
		return def
	}
	switch strings.ToLower(v) {
	case "true", "yes", "on", "1":
		return true
	case "false", "no", "off", "0":
		return false
	}
	s.fail(key, "invalid boolean %q (use true or false)", v)
	return def
}

func (s *section) integer(key string, def, lo, hi int) int {
	v, ok := s.raw(key)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		s.fail(key, "invalid integer %q", v)
		return def
	}
	if n < lo || n > hi {
		s.fail(key, "%d out of range [%d, %d]", n, lo, hi)
		return def
	}
	return n
}

func (s *section) float(key string, def, lo float64) float64 {
	v, ok := s.raw(key)
	if !ok {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		s.fail(key, "invalid number %q", v)
		return def
	}
	if f < lo {
		s.fail(key, "%v is below the minimum %v", f, lo)
		return def
	}
	return f
}

// duration parses a Go duration ("500ms", "1m30s"); min is inclusive.
func (s *section) duration(key string, def, lo time.Duration) time.Duration {
	v, ok := s.raw(key)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		s.fail(key, "invalid duration %q (examples: 500ms, 15s, 2m, 720h)", v)
		return def
	}
	if d < lo {
		s.fail(key, "duration %s is below the minimum %s", d, lo)
		return def
	}
	return d
}

// seconds accepts a plain number of seconds (seed 003 `sleep = 0`) or a Go
// duration.
func (s *section) seconds(key string, def time.Duration) time.Duration {
	v, ok := s.raw(key)
	if !ok {
		return def
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		return time.Duration(f * float64(time.Second))
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		s.fail(key, "invalid number of seconds %q", v)
		return def
	}
	return d
}

func (s *section) enum(key, def string, allowed ...string) string {
	v, ok := s.raw(key)
	if !ok {
		return def
	}
	if slices.Contains(allowed, v) {
		return v
	}
	msg := fmt.Sprintf("invalid value %q: must be one of %s", v, strings.Join(allowed, ", "))
	if g := suggest(v, allowed); g != "" {
		msg += fmt.Sprintf("; did you mean %q?", g)
	}
	s.fail(key, "%s", msg)
	return def
}

// list splits a comma-separated value, dropping empty entries.
func (s *section) list(key string, def []string) []string {
	v, ok := s.raw(key)
	if !ok {
		return def
	}
	return splitList(v)
}

func splitList(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// path returns an absolute, cleaned path; relative values resolve against
// baseDir. An empty value stays empty.
func (s *section) path(key, def string) string {
	v := s.str(key, def)
	if v == "" {
		return ""
	}
	return absPath(v, s.baseDir)
}

func absPath(p, base string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(base, p)
	}
	return filepath.Clean(p)
}

// hostPort checks "host:port"; allowZero permits port 0 for listeners that
// let the kernel choose (tests).
func (s *section) hostPort(key, def string, allowZero bool) string {
	v := s.str(key, def)
	if v == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		s.fail(key, "invalid address %q: want host:port", v)
		return def
	}
	_ = host
	n, err := strconv.Atoi(port)
	lo := 1
	if allowZero {
		lo = 0
	}
	if err != nil || n < lo || n > 65535 {
		s.fail(key, "invalid port %q in %q", port, v)
		return def
	}
	return v
}

func (s *section) port(key string, def int) int { return s.integer(key, def, 1, 65535) }

func (s *section) httpURL(key string) string {
	v, ok := s.raw(key)
	if !ok || v == "" {
		s.fail(key, "required: URL of the homeserver (http:// or https://)")
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		s.fail(key, "invalid URL %q: want http://host[:port] or https://host[:port]", v)
		return ""
	}
	return v
}

// secret reads one secret given as exactly one of `key = literal`,
// `key_file = path` (the file's content minus trailing newlines, path
// relative to baseDir) or `key_env = VARNAME`. Keys with empty values count
// as absent, so the shipped files can list all three forms empty. Messages name the file or variable, never the value. Literal
// values are not $QUILT_CFG-expanded.
func (s *section) secret(key string, required bool) Secret {
	fileKey, envKey := key+"_file", key+"_env"
	s.know(key)
	s.know(fileKey)
	s.know(envKey)
	var forms []string
	for _, k := range []string{key, fileKey, envKey} {
		if v := s.vals[k]; v != "" {
			forms = append(forms, k)
		}
	}
	if len(forms) > 1 {
		s.fail(forms[1], "set only one of %s, %s and %s (found: %s)", key, fileKey, envKey, strings.Join(forms, ", "))
		return Secret{}
	}
	switch {
	case len(forms) == 0:
		if required {
			s.fail(key, "required: set %s, %s or %s", key, fileKey, envKey)
		}
		return Secret{}
	case forms[0] == key:
		return NewSecret(s.vals[key])
	case forms[0] == fileKey:
		p, _ := s.raw(fileKey)
		p = absPath(p, s.baseDir)
		data, err := os.ReadFile(p)
		if err != nil {
			s.fail(fileKey, "cannot read secret file %s: %s", p, osErrText(err))
			return Secret{}
		}
		v := strings.TrimRight(string(data), "\r\n")
		if v == "" {
			s.fail(fileKey, "secret file %s is empty", p)
			return Secret{}
		}
		return NewSecret(v)
	default:
		name := s.vals[envKey]
		v, ok := os.LookupEnv(name)
		switch {
		case !ok:
			s.fail(envKey, "environment variable %s is not set", name)
		case v == "":
			s.fail(envKey, "environment variable %s is empty", name)
		default:
			return NewSecret(v)
		}
		return Secret{}
	}
}

// finish reports every key that no getter asked for.
func (s *section) finish() {
	known := slices.Clone(s.known)
	slices.Sort(known)
	for k, line := range s.lines {
		if slices.Contains(known, k) {
			continue
		}
		msg := "unknown key"
		if g := suggest(k, known); g != "" {
			msg += fmt.Sprintf(", did you mean %q?", g)
		}
		s.failAt(line, k, "%s (known: %s)", msg, strings.Join(known, ", "))
	}
}

// osErrText drops the path that *fs.PathError repeats, since the caller
// already names it.
func osErrText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
