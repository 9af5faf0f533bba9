package query

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"gopkg.in/ini.v1"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/model"
)

// PatternExt is the file extension of pattern files in the patterns dir.
const PatternExt = ".pattern"

// Variable types a pattern may declare.
var VarTypes = []string{"string", "int", "duration", "time", "bool"}

// Pattern is one parsed `[pattern NAME]` section.
type Pattern struct {
	Name string
	Kind string
	Help string
	Vars []*quiltv1.PatternVar
	// Fields are the query keys (source, user, since...) with ${var}
	// references left in place; Expand fills them.
	Fields map[string]string
	File   string
	Line   int
}

// patternKeys are the query keys a pattern section may set, besides kind,
// help and var.NAME.
var patternKeys = []string{
	"source", "server", "channel", "user", "kinds", "text", "regex",
	"since", "until", "limit", "oldest_first", "source_timeout",
}

var (
	varRef   = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	nameRule = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
)

// Proto is the wire form of p for ListPatterns.
func (p *Pattern) Proto() *quiltv1.Pattern {
	out := &quiltv1.Pattern{Name: p.Name, Kind: p.Kind, Help: p.Help}
	for _, v := range p.Vars {
		out.Vars = append(out.Vars, proto.Clone(v).(*quiltv1.PatternVar))
	}
	return out
}

// LoadPatterns reads every *.pattern file of dir. A missing dir is no
// patterns, not an error (a fresh install has none). Every problem of every
// file is returned together; the patterns that parsed are returned too, so
// one broken file does not hide the others.
func LoadPatterns(dir string) (map[string]*Pattern, error) {
	out := map[string]*Pattern{}
	if dir == "" {
		return out, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, "*"+PatternExt))
	if err != nil {
		return out, fmt.Errorf("patterns dir %s: %w", dir, err)
	}
	sort.Strings(files)
	var errs []error
	for _, f := range files {
		ps, ferrs := loadPatternFile(f)
		errs = append(errs, ferrs...)
		for _, p := range ps {
			if prev, dup := out[p.Name]; dup {
				errs = append(errs, fmt.Errorf("%s:%d: pattern %q is already defined in %s:%d", p.File, p.Line, p.Name, prev.File, prev.Line))
				continue
			}
			out[p.Name] = p
		}
	}
	return out, errors.Join(errs...)
}

// sectionLines maps "pattern NAME" headers to their line numbers, since
// ini.v1 does not keep them, so errors can point at the section.
func sectionLines(data []byte) map[string]int {
	lines := map[string]int{}
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			lines[strings.Join(strings.Fields(l[1:len(l)-1]), " ")] = i + 1
		}
	}
	return lines
}

func loadPatternFile(path string) ([]*Pattern, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{fmt.Errorf("pattern file %s: %w", path, err)}
	}
	f, err := ini.LoadSources(ini.LoadOptions{
		IgnoreInlineComment:      true,
		AllowNonUniqueSections:   false,
		KeyValueDelimiters:       "=",
		SpaceBeforeInlineComment: true,
	}, data)
	if err != nil {
		return nil, []error{fmt.Errorf("pattern file %s: %w", path, err)}
	}
	lines := sectionLines(data)
	var out []*Pattern
	var errs []error
	for _, sec := range f.Sections() {
		if sec.Name() == ini.DefaultSection {
			if len(sec.Keys()) > 0 {
				errs = append(errs, fmt.Errorf("%s: key %q outside a [pattern NAME] section", path, sec.Keys()[0].Name()))
			}
			continue
		}
		header := strings.Join(strings.Fields(sec.Name()), " ")
		line := lines[header]
		name, ok := strings.CutPrefix(header, "pattern ")
		if !ok {
			errs = append(errs, fmt.Errorf("%s:%d: section [%s]: want [pattern NAME]", path, line, header))
			continue
		}
		name = strings.TrimSpace(name)
		at := fmt.Sprintf("%s:%d: [pattern %s]", path, line, name)
		if !nameRule.MatchString(name) {
			errs = append(errs, fmt.Errorf("%s: name %q: use lower-case letters, digits, - and _", at, name))
			continue
		}
		p := &Pattern{Name: name, File: path, Line: line, Fields: map[string]string{}}
		bad := false
		fail := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf(at+": "+format, args...))
			bad = true
		}
		declared := map[string]bool{}
		for _, k := range sec.Keys() {
			key, val := k.Name(), strings.TrimSpace(k.Value())
			switch {
			case key == "kind":
				p.Kind = val
			case key == "help":
				p.Help = val
			case strings.HasPrefix(key, "var."):
				v, err := parseVarSpec(strings.TrimPrefix(key, "var."), val)
				if err != nil {
					fail("%s: %v", key, err)
					continue
				}
				declared[v.Name] = true
				p.Vars = append(p.Vars, v)
			case contains(patternKeys, key):
				p.Fields[key] = val
			default:
				fail("unknown key %q (known: kind, help, var.NAME, %s)", key, strings.Join(patternKeys, ", "))
			}
		}
		if !contains(Kinds, p.Kind) {
			fail("kind %q: want one of %s", p.Kind, strings.Join(Kinds, ", "))
		}
		for _, key := range sortedKeys(p.Fields) {
			for _, m := range varRef.FindAllStringSubmatch(p.Fields[key], -1) {
				if !declared[m[1]] {
					fail("%s = %s: ${%s} is not declared (add var.%s = string, required, ...)", key, p.Fields[key], m[1], m[1])
				}
			}
		}
		if !bad {
			out = append(out, p)
		}
	}
	return out, errs
}

// parseVarSpec reads `TYPE[, required][, default=VALUE][, help text...]`.
func parseVarSpec(name, spec string) (*quiltv1.PatternVar, error) {
	if !varRef.MatchString("${" + name + "}") {
		return nil, fmt.Errorf("variable name %q: use letters, digits and _", name)
	}
	parts := strings.Split(spec, ",")
	v := &quiltv1.PatternVar{Name: name, Type: strings.TrimSpace(parts[0])}
	if !contains(VarTypes, v.Type) {
		return nil, fmt.Errorf("type %q: want one of %s (spec: TYPE[, required][, default=VALUE][, help])", v.Type, strings.Join(VarTypes, ", "))
	}
	i := 1
	for ; i < len(parts); i++ {
		p := strings.TrimSpace(parts[i])
		if p == "required" {
			v.Required = true
		} else if d, ok := strings.CutPrefix(p, "default="); ok {
			v.Default = strings.TrimSpace(d)
		} else {
			break
		}
	}
	v.Help = strings.TrimSpace(strings.Join(parts[i:], ","))
	if v.Default != "" {
		if err := checkVar(v, v.Default); err != nil {
			return nil, fmt.Errorf("default: %v", err)
		}
	}
	if v.Required && v.Default != "" {
		return nil, errors.New("both required and a default: a default makes the variable optional")
	}
	return v, nil
}

func checkVar(v *quiltv1.PatternVar, val string) error {
	switch v.Type {
	case "int":
		if _, err := strconv.Atoi(val); err != nil {
			return fmt.Errorf("%s=%q is not an int", v.Name, val)
		}
	case "duration":
		if _, err := time.ParseDuration(val); err != nil {
			return fmt.Errorf("%s=%q is not a duration (e.g. 90s, 2h)", v.Name, val)
		}
	case "time":
		if _, err := ParseTime(val, time.Now()); err != nil {
			return fmt.Errorf("%s=%q: %v", v.Name, val, err)
		}
	case "bool":
		if _, err := strconv.ParseBool(val); err != nil {
			return fmt.Errorf("%s=%q is not a bool (true/false)", v.Name, val)
		}
	}
	return nil
}

// ParseTime reads an RFC 3339 time or a duration meaning that long before
// now ("2h" is two hours ago).
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("want a duration ago (90m, 24h) or an RFC 3339 time (2026-01-02T15:04:05Z), got %q", s)
}

// describeVars lists a pattern's variables with their types, for errors.
func describeVars(p *Pattern) string {
	if len(p.Vars) == 0 {
		return "it takes no variables"
	}
	var parts []string
	for _, v := range p.Vars {
		s := v.Name + " (" + v.Type
		switch {
		case v.Required:
			s += ", required"
		case v.Default != "":
			s += ", default " + v.Default
		}
		s += ")"
		if v.Help != "" {
			s += ": " + v.Help
		}
		parts = append(parts, s)
	}
	return "its variables: " + strings.Join(parts, "; ")
}

// Expand checks vars against the pattern and returns the request it stands
// for. Errors are INVALID_ARGUMENT naming the pattern's variables.
func (p *Pattern) Expand(vars map[string]string, now time.Time) (*quiltv1.QueryRequest, error) {
	known := map[string]*quiltv1.PatternVar{}
	for _, v := range p.Vars {
		known[v.Name] = v
	}
	for _, k := range sortedKeys(vars) {
		if known[k] == nil {
			return nil, status.Errorf(codes.InvalidArgument, "pattern %s has no variable %q; %s", p.Name, k, describeVars(p))
		}
	}
	vals := map[string]string{}
	var missing []string
	for _, v := range p.Vars {
		val, ok := vars[v.Name]
		if !ok || val == "" {
			if v.Required {
				missing = append(missing, v.Name)
				continue
			}
			val = v.Default
		}
		if val != "" {
			if err := checkVar(v, val); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "pattern %s: %v; %s", p.Name, err, describeVars(p))
			}
		}
		vals[v.Name] = val
	}
	if len(missing) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "pattern %s: missing variable %s (give -v %s=VALUE); %s",
			p.Name, strings.Join(missing, ", "), missing[0], describeVars(p))
	}
	field := map[string]string{}
	for k, raw := range p.Fields {
		field[k] = strings.TrimSpace(varRef.ReplaceAllStringFunc(raw, func(ref string) string {
			return vals[ref[2:len(ref)-1]]
		}))
	}
	req := &quiltv1.QueryRequest{Kind: p.Kind, Filter: &quiltv1.EventFilter{}}
	bad := func(key string, err error) error {
		return status.Errorf(codes.InvalidArgument, "pattern %s (%s:%d): %s = %q: %v", p.Name, p.File, p.Line, key, field[key], err)
	}
	f := req.Filter
	for _, key := range sortedKeys(field) {
		val := field[key]
		if val == "" {
			continue
		}
		switch key {
		case "source":
			f.Sources = splitList(val)
		case "server":
			f.Server = val
		case "channel":
			f.Channel = val
		case "user":
			f.User = val
		case "kinds":
			ks, err := model.ParseKinds(val)
			if err != nil {
				return nil, bad(key, err)
			}
			f.Kinds = ks
		case "text":
			f.Text = val
		case "regex":
			f.TextRegex = val
		case "since", "until":
			t, err := ParseTime(val, now)
			if err != nil {
				return nil, bad(key, err)
			}
			if key == "since" {
				f.Since = tspb(t)
			} else {
				f.Until = tspb(t)
			}
		case "limit":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return nil, bad(key, errors.New("want a count ≥ 0"))
			}
			req.Limit = int32(n)
		case "oldest_first":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return nil, bad(key, err)
			}
			req.OldestFirst = b
		case "source_timeout":
			d, err := time.ParseDuration(val)
			if err != nil {
				return nil, bad(key, err)
			}
			req.SourceTimeout = durationpb.New(d)
		}
	}
	return req, nil
}

// mergeRequest lays what the caller gave explicitly over the expanded
// pattern: a caller's non-empty field wins, so `-p said --channel #x`
// narrows a pattern without editing it.
func mergeRequest(base, over *quiltv1.QueryRequest) {
	if o := over.GetFilter(); o != nil {
		f := base.Filter
		if len(o.Sources) > 0 {
			f.Sources = o.Sources
		}
		if o.Server != "" {
			f.Server = o.Server
		}
		if o.Channel != "" {
			f.Channel = o.Channel
		}
		if o.User != "" {
			f.User = o.User
		}
		if len(o.Kinds) > 0 {
			f.Kinds = o.Kinds
		}
		if o.Text != "" {
			f.Text = o.Text
		}
		if o.TextRegex != "" {
			f.TextRegex = o.TextRegex
		}
		if o.Since != nil {
			f.Since = o.Since
		}
		if o.Until != nil {
			f.Until = o.Until
		}
	}
	if over.Limit > 0 {
		base.Limit = over.Limit
	}
	if over.OldestFirst {
		base.OldestFirst = true
	}
	if over.SourceTimeout != nil {
		base.SourceTimeout = over.SourceTimeout
	}
	base.PageToken = over.PageToken
	base.RequestedBy = over.RequestedBy
	base.Pattern = over.Pattern
	base.Vars = over.Vars
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// dirStamp summarises the pattern files' names, sizes and mtimes, so a
// change to any of them is noticed without parsing.
func dirStamp(dir string) string {
	if dir == "" {
		return "-"
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"+PatternExt))
	var b strings.Builder
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%s|%d|%d;", f, st.Size(), st.ModTime().UnixNano())
		}
	}
	return b.String()
}
