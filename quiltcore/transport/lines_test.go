package transport_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/quilt/quilt/quiltcore/transport"
)

type splitLine struct {
	s     string
	trunc bool
}

func (l splitLine) String() string {
	if l.trunc {
		return l.s + "(truncated)"
	}
	return l.s
}

// splitAll feeds chunks and collects every line.
func splitAll(max int, chunks ...string) (out []splitLine, buffered int) {
	s := transport.NewLineSplitter(max)
	for _, c := range chunks {
		s.Feed([]byte(c))
		for line, trunc, ok := s.Next(); ok; line, trunc, ok = s.Next() {
			out = append(out, splitLine{string(line), trunc})
		}
	}
	return out, s.Buffered()
}

func TestLineSplitter(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		in    string
		want  []splitLine
		trail int // bytes of an unfinished line left buffered
	}{
		{"crlf and lf", 0, "PING :a\r\nPING :b\n", []splitLine{{"PING :a", false}, {"PING :b", false}}, 0},
		{"empty lines", 0, "\r\n\n", []splitLine{{"", false}, {"", false}}, 0},
		{"bare cr is data", 0, "a\rb\n", []splitLine{{"a\rb", false}}, 0},
		{"unfinished", 0, "done\npart", []splitLine{{"done", false}}, 4},
		{"exactly max", 5, "12345\r\n", []splitLine{{"12345", false}}, 0},
		{"over max", 5, "123456\r\nok\n", []splitLine{{"12345", true}, {"ok", false}}, 0},
		{"far over max", 3, strings.Repeat("x", 100) + "\nyes\n", []splitLine{{"xxx", true}, {"yes", false}}, 0},
		{"cr beyond max", 3, "abc\rd\n", []splitLine{{"abc", true}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(how string, got []splitLine, buffered int) {
				t.Helper()
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Fatalf("%s: got %v, want %v", how, got, tt.want)
				}
				if tt.trail == 0 && buffered != 0 {
					t.Fatalf("%s: %d bytes left buffered", how, buffered)
				}
			}
			got, buf := splitAll(tt.max, tt.in)
			check("one chunk", got, buf)
			if tt.trail != 0 && buf != tt.trail {
				t.Fatalf("buffered %d, want %d", buf, tt.trail)
			}
			// Every split into two chunks, and byte by byte, must agree.
			for i := range len(tt.in) + 1 {
				got, buf := splitAll(tt.max, tt.in[:i], tt.in[i:])
				check(fmt.Sprintf("split at %d", i), got, buf)
			}
			var bytesIn []string
			for i := range len(tt.in) {
				bytesIn = append(bytesIn, tt.in[i:i+1])
			}
			got, buf = splitAll(tt.max, bytesIn...)
			check("byte by byte", got, buf)
		})
	}
}

func TestLineSplitterReset(t *testing.T) {
	var s transport.LineSplitter
	s.Feed([]byte("half a li"))
	if _, _, ok := s.Next(); ok || s.Buffered() != 9 {
		t.Fatalf("Buffered %d", s.Buffered())
	}
	s.Reset()
	s.Feed([]byte("new\n"))
	if line, _, ok := s.Next(); !ok || string(line) != "new" {
		t.Fatalf("after Reset got %q", line)
	}
}

func TestLineSplitterSteadyStateAllocs(t *testing.T) {
	// Chunks that split lines, as a socket delivers them.
	data := bytes.Repeat([]byte(":nick!user@host PRIVMSG #chan :hello there\r\n"), 100)
	chunks := [][]byte{data[:1000], data[1000:2500], data[2500:]}
	var s transport.LineSplitter
	n := 0
	allocs := testing.AllocsPerRun(100, func() {
		for _, c := range chunks {
			s.Feed(c)
			for _, _, ok := s.Next(); ok; _, _, ok = s.Next() {
				n++
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run, want 0", allocs)
	}
	if n != 101*100 {
		t.Fatalf("%d lines, want %d", n, 101*100)
	}
}

func FuzzLineSplitter(f *testing.F) {
	f.Add([]byte("a\r\nbb\ncc"), uint8(3), uint8(2))
	f.Fuzz(func(t *testing.T, in []byte, max, cut uint8) {
		m := int(max%16) + 1
		i := int(cut) % (len(in) + 1)
		got, _ := splitAll(m, string(in[:i]), string(in[i:]))
		// Reference: split on \n, drop the last unfinished piece, trim one \r,
		// truncate to m.
		parts := strings.Split(string(in), "\n")
		parts = parts[:len(parts)-1]
		var want []splitLine
		for _, p := range parts {
			raw := p
			p = strings.TrimSuffix(p, "\r")
			l := splitLine{p, false}
			if len(p) > m {
				l = splitLine{raw[:m], true}
			}
			want = append(want, l)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("max %d cut %d: got %q, want %q", m, i, got, want)
		}
	})
}

func BenchmarkLineSplitter(b *testing.B) {
	line := []byte(":nick!user@host.example.org PRIVMSG #channel :a typical chat line of some length\r\n")
	data := bytes.Repeat(line, 32<<10/len(line))
	lines := bytes.Count(data, []byte("\n"))
	var s transport.LineSplitter
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		// Uneven chunks, so lines straddle the boundary.
		for _, c := range [][]byte{data[:10000], data[10000:]} {
			s.Feed(c)
			for _, _, ok := s.Next(); ok; _, _, ok = s.Next() {
				n++
			}
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "lines/s")
	_ = lines
}
