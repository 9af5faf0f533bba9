package transport

import "bytes"

// DefaultMaxLine is the LineSplitter limit when none is given: an IRC line
// with message tags, which may carry 8191 bytes of tags before the 512 bytes
// of the message proper (IRCv3 message-tags).
const DefaultMaxLine = 8191 + 512

// LineSplitter turns a byte stream into lines ended by "\n" or "\r\n", for
// line protocols such as IRC. It is meant to sit in Handler.Input:
//
//	s.Feed(data)
//	for line, truncated, ok := s.Next(); ok; line, truncated, ok = s.Next() { ... }
//
// A line longer than the maximum is not an error: Next yields its first Max
// bytes with truncated set, and the rest up to the newline is discarded (what
// IRC servers do with overlong input, and it keeps one bad line from killing
// a session). Empty lines are yielded too (IRC ignores them; others may not).
//
// Complete lines inside the fed chunk are returned as slices of it, without
// copying; only a line split across chunks is assembled in an internal buffer
// of at most Max+1 bytes, so steady-state use allocates nothing.
// The zero value uses DefaultMaxLine. Not safe for concurrent use.
type LineSplitter struct {
	// Max is the longest line yielded, terminator excluded (0: DefaultMaxLine).
	Max int

	in      []byte // unconsumed part of the fed chunk
	partial []byte // start of a line that continues in a later chunk
	skip    bool   // inside an overlong line: drop bytes up to the newline
}

// NewLineSplitter returns a splitter with the given maximum line length.
func NewLineSplitter(max int) *LineSplitter { return &LineSplitter{Max: max} }

func (s *LineSplitter) max() int {
	if s.Max > 0 {
		return s.Max
	}
	return DefaultMaxLine
}

// Feed hands the splitter the next chunk. Any unconsumed remainder of the
// previous chunk is taken over first. p is referenced, not copied, until Next
// has returned !ok, so Feed data that stays unchanged until then (as
// Handler.Input data does for the duration of the call).
func (s *LineSplitter) Feed(p []byte) {
	if len(s.in) > 0 {
		s.stash(s.in)
	}
	s.in = p
}

// Buffered reports how many bytes of an incomplete line are held.
func (s *LineSplitter) Buffered() int { return len(s.partial) + len(s.in) }

// Reset drops any buffered input, e.g. when a connection is replaced.
func (s *LineSplitter) Reset() {
	s.in, s.partial, s.skip = nil, s.partial[:0], false
}

// stash keeps the start of an unfinished line, up to the limit (+1 for a
// "\r" that may turn out to be part of the terminator).
func (s *LineSplitter) stash(p []byte) {
	if s.skip {
		return
	}
	room := s.max() + 1 - len(s.partial)
	if len(p) > room {
		s.partial = append(s.partial, p[:room]...)
		s.skip = true
		return
	}
	s.partial = append(s.partial, p...)
}

// Next returns the next complete line without its terminator. ok is false
// when the fed data holds no further complete line; the incomplete rest is
// kept for the next Feed. line is valid until the next call to Next or Feed.
func (s *LineSplitter) Next() (line []byte, truncated, ok bool) {
	i := bytes.IndexByte(s.in, '\n')
	if i < 0 {
		s.stash(s.in)
		s.in = nil
		return nil, false, false
	}
	seg := s.in[:i]
	s.in = s.in[i+1:]
	max := s.max()
	if len(s.partial) == 0 && !s.skip {
		line = seg
	} else {
		s.stash(seg)
		line = s.partial
		truncated = s.skip
		s.partial, s.skip = s.partial[:0], false
	}
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > max {
		line, truncated = line[:max], true
	}
	return line, truncated, true
}
