package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
)

var (
	// ErrClosed is returned by Write, WriteWait and Flush once the connection
	// is closed, and is the reason (Err, Handler.Closed) when it was closed
	// locally with Close. It matches net.ErrClosed with errors.Is, so code
	// written for net.Conn recognises it.
	ErrClosed = fmt.Errorf("transport: connection closed: %w", net.ErrClosed)

	// ErrBackpressure is returned by Write when accepting p would take the
	// write queue over its limit. Nothing of p was queued. Callers that prefer
	// to wait use WriteWait; callers that would rather shed load drop or
	// coalesce their output.
	ErrBackpressure = errors.New("transport: write queue full")
)

// Handler receives a connection's input and its end.
//
// Both methods are called from the connection's single reader goroutine:
// Input calls arrive in the order the bytes arrived, never concurrently, and
// Closed comes exactly once, after the last Input. A slow handler stalls
// reading (and so, through TCP, the peer) but never the writer.
type Handler interface {
	// Input delivers bytes read from the peer. data is only valid during the
	// call: the reader reuses its buffer, so a handler that keeps bytes must
	// copy them. Chunks are not aligned to lines or messages; use a
	// LineSplitter for line protocols.
	Input(c Conn, data []byte)

	// Closed reports that the connection ended and why: ErrClosed when it was
	// closed with Close, io.EOF when the peer closed it cleanly, otherwise the
	// read, write or TLS error that ended it. The string form is for logs.
	Closed(c Conn, err error)
}

// Conn is an established connection. All methods are safe for concurrent use.
type Conn interface {
	// Write queues a copy of p and returns at once; it never blocks on the
	// network. Bytes from successive Writes go out in order. It returns
	// ErrClosed once the connection is closed, and ErrBackpressure (queuing
	// nothing) when the queued-but-unwritten bytes plus len(p) would exceed
	// the write queue limit. A write larger than the whole limit is accepted
	// when the queue is empty, so it cannot wait forever.
	Write(p []byte) error

	// WriteWait is Write for callers that prefer to wait: when the queue is
	// full it blocks until there is room, ctx is done (returning ctx.Err()) or
	// the connection closes (ErrClosed). Waiters are not queued fairly
	// against concurrent Write calls.
	WriteWait(ctx context.Context, p []byte) error

	// Flush waits until every byte queued so far has been handed to the
	// network (the kernel or the peer), so "write QUIT, Flush, Close" sends
	// the QUIT. It returns ErrClosed if the connection closes first.
	Flush(ctx context.Context) error

	// Close closes the connection at once, discarding queued output (Flush
	// first to send it). It is idempotent and always returns nil. When it
	// returns, the writer has exited and the reader will not read again; the
	// reader then delivers Closed(c, ErrClosed) to the handler and exits, after
	// which Done is closed. Close may be called from inside a handler.
	Close() error

	// SetHandler installs h and returns the previous handler. With no
	// handler (nil) input is held, not lost: the reader stops reading (the
	// peer is pushed back by TCP) until a handler is set, which then gets the
	// held input first. A close while no handler is set is also held and
	// reported to the next handler; if Close is called instead, held input
	// is dropped.
	SetHandler(h Handler) (old Handler)

	// RemoteAddr and LocalAddr name the endpoints ("127.0.0.1:6667"; for the
	// fixture, "fixture:N").
	RemoteAddr() string
	LocalAddr() string

	// Done is closed when the connection is finished: the network side is
	// closed, the handler's Closed has returned and both goroutines have
	// exited. Do not wait on it from inside a handler. A connection that
	// ends while it has no handler is not done until a handler is set (and
	// told) or Close is called.
	Done() <-chan struct{}

	// Err returns why the connection closed (as passed to Handler.Closed)
	// once Done is closed, and nil before.
	Err() error
}

// FactoryHandler receives the outcome of DialAsync: exactly one of its
// methods is called, once, from a goroutine of the dialer.
type FactoryHandler interface {
	Connected(c Conn)
	Failed(err error)
}

// Dialer makes client connections. SocketDialer and fixture.Dialer implement
// it; code that reconnects takes a Dialer so tests can hand it a fixture.
type Dialer interface {
	// Dial tries addrs in turn, with the backoff in opts, until one accepts
	// the connection, opts.MaxAttempts rounds have failed or ctx is done. The
	// error is then a *DialError. ctx governs only dialing: the returned Conn
	// lives until closed.
	Dial(ctx context.Context, addrs []string, opts DialOptions) (Conn, error)

	// DialAsync is Dial that returns at once and reports the result to h.
	DialAsync(ctx context.Context, addrs []string, opts DialOptions, h FactoryHandler)
}

// FactoryFuncs adapts two functions to a FactoryHandler; nil ones are skipped.
type FactoryFuncs struct {
	OnConnected func(Conn)
	OnFailed    func(error)
}

// Connected calls f.OnConnected.
func (f FactoryFuncs) Connected(c Conn) {
	if f.OnConnected != nil {
		f.OnConnected(c)
	}
}

// Failed calls f.OnFailed.
func (f FactoryFuncs) Failed(err error) {
	if f.OnFailed != nil {
		f.OnFailed(err)
	}
}

// HandlerFuncs adapts two functions to a Handler; nil ones are skipped.
type HandlerFuncs struct {
	OnInput  func(c Conn, data []byte)
	OnClosed func(c Conn, err error)
}

// Input calls h.OnInput.
func (h HandlerFuncs) Input(c Conn, data []byte) {
	if h.OnInput != nil {
		h.OnInput(c, data)
	}
}

// Closed calls h.OnClosed.
func (h HandlerFuncs) Closed(c Conn, err error) {
	if h.OnClosed != nil {
		h.OnClosed(c, err)
	}
}
