package config

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in one configuration file. Every problem the package
// finds is reported as an *Error so a CLI can point the operator at the exact
// place to fix. Line is 0 when the problem has no single line (a missing
// required key, an unreadable file); Section is "" for top-level keys.
//
// Msg never contains the value of a secret.
type Error struct {
	File    string
	Line    int
	Section string
	Key     string
	Msg     string
}

// Error renders `FILE:LINE: [SECTION] key "KEY": MSG`, leaving out the parts
// that are empty.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	switch {
	case e.Section != "" && e.Key != "":
		fmt.Fprintf(&b, "[%s] key %q: ", e.Section, e.Key)
	case e.Section != "":
		fmt.Fprintf(&b, "[%s]: ", e.Section)
	case e.Key != "":
		fmt.Fprintf(&b, "key %q: ", e.Key)
	}
	// Multi-line values quoted in Msg must not break Errors' one problem
	// per line.
	b.WriteString(strings.ReplaceAll(e.Msg, "\n", `\n`))
	return b.String()
}

// Errors is every problem found in one load or check, so an operator can fix
// them all in one go instead of one restart per typo. It is only ever
// returned non-empty.
type Errors []*Error

// Error prints one problem per line, in file and line order.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find the individual *Error values.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].File != es[j].File {
			return es[i].File < es[j].File
		}
		return es[i].Line < es[j].Line
	})
	return es
}

// err returns nil for an empty list: a nil Errors stored in an error
// interface would not compare equal to nil.
func (es Errors) err() error {
	if len(es) == 0 {
		return nil
	}
	return es.sorted()
}

// appendErr flattens err into es, keeping *Error values as they are so that
// nested loads (Check) still produce one flat list.
func (es Errors) appendErr(err error) Errors {
	switch e := err.(type) {
	case nil:
		return es
	case Errors:
		return append(es, e...)
	case *Error:
		return append(es, e)
	default:
		return append(es, &Error{Msg: err.Error()})
	}
}

// suggest returns the candidate closest to s when it is a plausible typo
// (edit distance ≤ 2 and shorter than s itself), or "".
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		d := levenshtein(strings.ToLower(s), strings.ToLower(c))
		if d < bestD && d < len(s) {
			best, bestD = c, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
