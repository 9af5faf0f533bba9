package transport_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/quilt/quilt/quiltcore/transport"
)

// gatedRW is a ReadWriteCloser whose Write blocks until the test opens the
// gate for it, so the write queue's state is exact.
type gatedRW struct {
	gate     chan struct{} // one token per Write allowed through
	entered  chan int      // len(p) of each Write, as it starts
	mu       sync.Mutex
	written  strings.Builder
	closed   chan struct{}
	once     sync.Once
	writeErr error
}

func newGated() *gatedRW {
	return &gatedRW{gate: make(chan struct{}), entered: make(chan int, 100), closed: make(chan struct{})}
}

func (g *gatedRW) Read([]byte) (int, error) { <-g.closed; return 0, io.EOF }

func (g *gatedRW) Write(p []byte) (int, error) {
	g.entered <- len(p)
	select {
	case <-g.gate:
	case <-g.closed:
		return 0, io.ErrClosedPipe
	}
	if g.writeErr != nil {
		return 0, g.writeErr
	}
	g.mu.Lock()
	g.written.Write(p)
	g.mu.Unlock()
	return len(p), nil
}

func (g *gatedRW) Close() error { g.once.Do(func() { close(g.closed) }); return nil }

func TestWriteQueueAccounting(t *testing.T) {
	g := newGated()
	r := newRecorder()
	c := transport.NewConn(g, transport.ConnOptions{Handler: r, WriteQueueLimit: 10})
	defer func() { c.Close(); waitDone(t, c) }()

	if err := c.Write([]byte("aaaa")); err != nil {
		t.Fatal(err)
	}
	if n := <-g.entered; n != 4 { // the writer holds "aaaa" in flight
		t.Fatalf("first batch %d bytes", n)
	}
	if err := c.Write([]byte("bbbbbb")); err != nil { // 4 in flight + 6 = 10
		t.Fatal(err)
	}
	if err := c.Write([]byte("c")); !errors.Is(err, transport.ErrBackpressure) {
		t.Fatalf("Write over the limit: %v", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- c.WriteWait(context.Background(), []byte("cc")) }()
	flushed := make(chan error, 1)
	go func() { flushed <- c.Flush(context.Background()) }()
	select {
	case err := <-waited:
		t.Fatalf("WriteWait returned %v on a full queue", err)
	case err := <-flushed:
		t.Fatalf("Flush returned %v with output pending", err)
	default:
	}
	g.gate <- struct{}{} // "aaaa" done: room for "cc"
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	// "bbbbbb" and "cc" go out in one batch or two, depending on whether
	// the writer took "bbbbbb" before WriteWait queued "cc".
	for sent := 0; sent < 8; {
		sent += <-g.entered
		g.gate <- struct{}{}
	}
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if got := g.written.String(); got != "aaaabbbbbbcc" {
		t.Fatalf("written %q", got)
	}
	// A write larger than the limit goes through on an empty queue.
	if err := c.Write([]byte(strings.Repeat("z", 50))); err != nil {
		t.Fatalf("oversized write on an empty queue: %v", err)
	}
}

func TestWriteErrorClosesConn(t *testing.T) {
	g := newGated()
	g.writeErr = errors.New("broken pipe")
	r := newRecorder()
	c := transport.NewConn(g, transport.ConnOptions{Handler: r})
	c.Write([]byte("x"))
	<-g.entered
	g.gate <- struct{}{}
	if err := r.closedWith(t, c); err != g.writeErr {
		t.Fatalf("Closed(%v), want the write error", err)
	}
}

func TestCloseUnblocksWaiters(t *testing.T) {
	g := newGated()
	c := transport.NewConn(g, transport.ConnOptions{WriteQueueLimit: 1})
	c.Write([]byte("a"))
	<-g.entered
	if err := c.Write([]byte("b")); !errors.Is(err, transport.ErrBackpressure) { // "a" in flight counts
		t.Fatalf("Write: %v", err)
	}
	errs := make(chan error, 2)
	go func() { errs <- c.WriteWait(context.Background(), []byte("c")) }()
	go func() { errs <- c.Flush(context.Background()) }()
	c.Close()
	for range 2 {
		if err := <-errs; !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("waiter got %v, want ErrClosed", err)
		}
	}
	waitDone(t, c) // no handler: Close drops the held end
	if !errors.Is(c.Err(), transport.ErrClosed) {
		t.Fatalf("Err %v", c.Err())
	}
}
