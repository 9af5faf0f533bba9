package quiltctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
)

var jsonOpts = protojson.MarshalOptions{UseProtoNames: true}

// emit writes one message in the json or yaml format: json is one object
// per line, so streams can be read line by line; yaml separates documents
// with ---.
func (a *app) emit(m proto.Message) error {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		return err
	}
	switch a.output {
	case "json":
		// protojson varies its spacing on purpose; compact it so the
		// output is stable for scripts that diff or grep it.
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", c.Bytes())
	case "yaml":
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		y, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "---\n%s", y)
		return err
	}
	return err
}

// table collects rows and prints them aligned, truncated to the terminal.
type table struct {
	head []string
	rows [][]string
}

func newTable(head ...string) *table { return &table{head: head} }

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// width is the terminal's width, or $COLUMNS, or 0 (no limit) when stdout
// is not a terminal.
func width(w io.Writer) int {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if cols, _, err := term.GetSize(int(f.Fd())); err == nil && cols > 0 {
			return cols
		}
	}
	if c, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && c > 0 {
		return c
	}
	return 0
}

func (t *table) print(w io.Writer) {
	n := len(t.head)
	ws := make([]int, n)
	for i, h := range t.head {
		ws[i] = utf8.RuneCountInString(h)
	}
	for _, r := range t.rows {
		for i := 0; i < n && i < len(r); i++ {
			ws[i] = max(ws[i], utf8.RuneCountInString(r[i]))
		}
	}
	if limit := width(w); limit > 0 {
		// Shrink the widest column until the line fits; never below 8.
		for {
			total := 2 * (n - 1)
			widest := 0
			for i, x := range ws {
				total += x
				if x > ws[widest] {
					widest = i
				}
			}
			if total <= limit || ws[widest] <= 8 {
				break
			}
			ws[widest] = max(8, ws[widest]-(total-limit))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		for i := 0; i < n; i++ {
			c := ""
			if i < len(cells) {
				c = strings.ReplaceAll(cells[i], "\n", " ")
			}
			if utf8.RuneCountInString(c) > ws[i] {
				c = string([]rune(c)[:ws[i]-1]) + "…"
			}
			if i == n-1 {
				b.WriteString(c)
				break
			}
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", ws[i]-utf8.RuneCountInString(c)+2))
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	line(t.head)
	for _, r := range t.rows {
		line(r)
	}
}

// spinner shows progress on stderr for calls that take more than 300ms,
// and only when stderr is a terminal; stop erases it.
type spinner struct {
	stop chan struct{}
	done chan struct{}
}

func (a *app) startSpinner(what string) *spinner {
	s := &spinner{stop: make(chan struct{}), done: make(chan struct{})}
	f, ok := a.stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		close(s.done)
		return s
	}
	go func() {
		defer close(s.done)
		select {
		case <-s.stop:
			return
		case <-time.After(300 * time.Millisecond):
		}
		bar := progressbar.NewOptions(-1, progressbar.OptionSetWriter(f), progressbar.OptionSpinnerType(14),
			progressbar.OptionSetDescription(what), progressbar.OptionClearOnFinish(), progressbar.OptionShowCount())
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				bar.Finish()
				return
			case <-t.C:
				bar.Add(0)
			}
		}
	}()
	return s
}

func (s *spinner) end() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

func fmtTime(t time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func fmtAgo(t time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
