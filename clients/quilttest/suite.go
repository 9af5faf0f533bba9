package quilttest

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Find lists the files in dir matching any of the globs (matched against
// the file name, as [testing] includes are), sorted, each once.
func Find(dir string, includes []string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("test dir ([testing] dir): %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		for _, g := range includes {
			ok, err := filepath.Match(g, e.Name())
			if err != nil {
				return nil, fmt.Errorf("[testing] includes: invalid glob %q: %v", g, err)
			}
			if ok {
				out = append(out, filepath.Join(dir, e.Name()))
				break
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// Load parses the files; every file's errors are reported together.
func Load(files []string) ([]*Case, error) {
	var cases []*Case
	var errs []string
	for _, f := range files {
		c, err := ParseFile(f)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		cases = append(cases, c)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return cases, nil
}

// Select keeps the cases a filter names. A filter with a glob character
// (* ? [) is matched against the case name and the file name; otherwise it
// is a case-insensitive substring of either. No filters keep every case; a
// filter that selects nothing is an error.
func Select(cases []*Case, filters []string) ([]*Case, error) {
	if len(filters) == 0 {
		return cases, nil
	}
	var out []*Case
	used := make([]bool, len(filters))
	for _, c := range cases {
		keep := false
		for i, f := range filters {
			if selects(f, c) {
				keep, used[i] = true, true
			}
		}
		if keep {
			out = append(out, c)
		}
	}
	for i, f := range filters {
		if !used[i] {
			var have []string
			for _, c := range cases {
				have = append(have, fmt.Sprintf("%q (%s)", c.Name, filepath.Base(c.File)))
			}
			return nil, fmt.Errorf("no test case matches %q; cases: %s", f, strings.Join(have, ", "))
		}
	}
	return out, nil
}

func selects(f string, c *Case) bool {
	base := filepath.Base(c.File)
	if strings.ContainsAny(f, "*?[") {
		a, _ := filepath.Match(f, c.Name)
		b, _ := filepath.Match(f, base)
		return a || b
	}
	lf := strings.ToLower(f)
	return strings.Contains(strings.ToLower(c.Name), lf) || (c.File != "" && strings.Contains(strings.ToLower(base), lf))
}

// Repeat runs the cases once, or with sleep > 0 again every sleep until ctx
// ends (a canary), calling after (when set) with each round's report. It
// returns the last complete round's report (nil if none completed).
func (r *Runner) Repeat(ctx context.Context, cases []*Case, sleep time.Duration, after func(*Report)) *Report {
	var last *Report
	for round := 1; ; round++ {
		if sleep > 0 {
			r.printf("### round %d at %s\n", round, time.Now().Format(time.RFC3339))
		}
		rep := r.Run(ctx, cases)
		if ctx.Err() != nil && len(rep.Cases) < len(cases) {
			return last // interrupted mid-round
		}
		last = rep
		if after != nil {
			after(rep)
		}
		if sleep <= 0 {
			return last
		}
		t := time.NewTimer(sleep)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return last
		}
	}
}

// JUnit XML (the subset CI systems read).
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Errors    int         `xml:"errors,attr"`
	Skipped   int         `xml:"skipped,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	File      string        `xml:"file,attr,omitempty"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
	Skipped   *junitSkipped `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

type junitSkipped struct {
	Message string `xml:"message,attr"`
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// WriteJUnit writes the report as JUnit XML: one testsuite "quilt", one
// testcase per case, the steps in system-out, the failing step in failure,
// the unmet `require` of a skipped case in skipped (tests counts skipped
// cases too, as JUnit readers expect).
func (r *Report) WriteJUnit(w io.Writer) error {
	p, f, sk := r.Tally()
	s := junitSuite{Name: "quilt", Tests: p + f + sk, Failures: f, Skipped: sk, Time: secs(r.Duration), Timestamp: r.Started.UTC().Format(time.RFC3339)}
	for _, c := range r.Cases {
		jc := junitCase{Name: c.Case.Name, Classname: "quilt." + strings.TrimSuffix(filepath.Base(c.Case.File), filepath.Ext(c.Case.File)),
			File: c.Case.File, Time: secs(c.Duration)}
		var out strings.Builder
		fmt.Fprintf(&out, "run %s\n", c.Run)
		for _, st := range c.Steps {
			mark := "ok  "
			switch {
			case st.Skipped:
				mark = "skip"
			case !st.Passed:
				mark = "FAIL"
			}
			fmt.Fprintf(&out, "%s line %d: %s (%s)\n", mark, st.Step.Line, st.Text, fmtDur(st.Duration))
			if st.Err != nil {
				fmt.Fprintf(&out, "     %s\n", strings.ReplaceAll(st.Err.Error(), "\n", "\n     "))
			}
		}
		jc.SystemOut = out.String()
		if c.Err != nil {
			jc.Failure = &junitFailure{Message: c.Err.Error(), Type: "StepFailed", Text: out.String()}
		} else if c.Skipped() {
			jc.Skipped = &junitSkipped{Message: c.SkipReason}
		}
		s.Cases = append(s.Cases, jc)
	}
	doc := junitSuites{Name: "quilt", Tests: s.Tests, Failures: f, Skipped: sk, Time: s.Time, Suites: []junitSuite{s}}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// WriteJUnitFile writes the report to path atomically (a canary rewrites it
// every round; readers never see half a file).
func (r *Report) WriteJUnitFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("junit: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := r.WriteJUnit(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("junit %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("junit %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("junit %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("junit %s: %w", path, err)
	}
	return nil
}
