// Package pipe holds the in-memory byte queue behind the transport fixture and
// the Stream view: a buffer one side writes and the other reads, with blocking
// reads, an optional bound on unread bytes (so a writer can be made to stall,
// as a TCP send buffer would) and close-with-error. It starts no goroutines and
// never sleeps: waiting is on channels the caller can cancel.
package pipe

import (
	"io"
	"sync"
	"time"
)

// Buffer is a one-direction byte queue. The zero value is not usable; call New.
type Buffer struct {
	mu      sync.Mutex
	data    []byte
	r       int   // read offset into data
	limit   int   // writers wait while unread bytes >= limit; 0 = never
	err     error // set once by CloseWithError; readers see it after draining
	changed chan struct{}
}

// New returns an empty buffer. limit bounds unread bytes (0 = unbounded).
func New(limit int) *Buffer {
	return &Buffer{limit: limit, changed: make(chan struct{})}
}

// broadcast wakes every waiter. Called with mu held.
func (b *Buffer) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// Len reports the number of unread bytes.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.data) - b.r
}

// Write appends all of p, first waiting while the buffer holds limit or more
// unread bytes (one write may overshoot the limit by len(p)). It returns the
// close error once the buffer is closed, or errCancel when cancel fires first.
func (b *Buffer) Write(p []byte, cancel <-chan struct{}, errCancel error) (int, error) {
	b.mu.Lock()
	for {
		if b.err != nil {
			err := b.err
			b.mu.Unlock()
			return 0, err
		}
		if b.limit <= 0 || len(b.data)-b.r < b.limit {
			break
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-cancel:
			return 0, errCancel
		}
		b.mu.Lock()
	}
	if b.r > 0 && b.r == len(b.data) {
		b.data, b.r = b.data[:0], 0
	}
	b.data = append(b.data, p...)
	b.broadcast()
	b.mu.Unlock()
	return len(p), nil
}

// Read copies unread bytes into p, waiting until there are some. Once the
// buffer is closed and drained it returns the close error.
func (b *Buffer) Read(p []byte, cancel <-chan struct{}, errCancel error) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b.mu.Lock()
	for len(b.data) == b.r {
		if b.err != nil {
			err := b.err
			b.mu.Unlock()
			return 0, err
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-cancel:
			return 0, errCancel
		}
		b.mu.Lock()
	}
	n := copy(p, b.data[b.r:])
	b.r += n
	if b.r == len(b.data) {
		b.data, b.r = b.data[:0], 0
	}
	b.broadcast()
	b.mu.Unlock()
	return n, nil
}

// ReadLine returns the next line (without "\n" and an optional "\r" before it),
// waiting until one is complete. When the buffer is closed, a final unterminated
// fragment is returned before the close error.
func (b *Buffer) ReadLine(cancel <-chan struct{}, errCancel error) (string, error) {
	b.mu.Lock()
	for {
		unread := b.data[b.r:]
		for i, c := range unread {
			if c == '\n' {
				line := unread[:i]
				if n := len(line); n > 0 && line[n-1] == '\r' {
					line = line[:n-1]
				}
				s := string(line)
				b.r += i + 1
				b.broadcast()
				b.mu.Unlock()
				return s, nil
			}
		}
		if b.err != nil {
			if len(unread) > 0 {
				s := string(unread)
				b.r = len(b.data)
				b.broadcast()
				b.mu.Unlock()
				return s, nil
			}
			err := b.err
			b.mu.Unlock()
			return "", err
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
		case <-cancel:
			return "", errCancel
		}
		b.mu.Lock()
	}
}

// CloseWithError makes later writes fail with err and reads return err once
// the unread bytes are drained. A nil err means io.EOF. Only the first call
// has an effect; it reports whether it was the first.
func (b *Buffer) CloseWithError(err error) bool {
	if err == nil {
		err = io.EOF
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return false
	}
	b.err = err
	b.broadcast()
	return true
}

// Closed reports whether CloseWithError was called.
func (b *Buffer) Closed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err != nil
}

// Deadline is a resettable deadline as a channel that is closed once the
// deadline passes (modelled on net.Pipe's pipeDeadline), so it can be selected
// on next to a Buffer's data.
type Deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

// NewDeadline returns a deadline that is not set.
func NewDeadline() *Deadline { return &Deadline{cancel: make(chan struct{})} }

// Set arms the deadline; the zero time clears it, a past time fires it now.
func (d *Deadline) Set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		ch := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(ch) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// Wait returns the channel that is closed when the deadline passes.
func (d *Deadline) Wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
