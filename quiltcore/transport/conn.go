package transport

import (
	"context"
	"io"
	"sync"
)

const (
	// DefaultWriteQueueLimit bounds a connection's unwritten output when the
	// options leave it 0: ample for a chat line burst, small enough that a
	// peer that stops reading is noticed (ErrBackpressure) early.
	DefaultWriteQueueLimit = 1 << 20
	// DefaultReadBufferSize is the reader's buffer, and so the largest chunk
	// passed to Handler.Input.
	DefaultReadBufferSize = 32 << 10
	// maxSpare is the largest write batch buffer kept for reuse; a burst
	// beyond it is left to the garbage collector.
	maxSpare = 4 << 20
)

// ConnOptions configure NewConn.
type ConnOptions struct {
	// Handler is installed before the reader starts (nil: input is held until
	// SetHandler).
	Handler Handler
	// WriteQueueLimit bounds queued, unwritten bytes: 0 means
	// DefaultWriteQueueLimit, a negative value means unbounded.
	WriteQueueLimit int
	// ReadBufferSize is the size of the reader's buffer (0: default).
	ReadBufferSize int
	// LocalAddr and RemoteAddr are returned by the Conn's methods.
	LocalAddr, RemoteAddr string
}

// NewConn starts the reader and writer goroutines over rw and returns the
// Conn that owns it. rw's Read and Write are each called from one goroutine,
// concurrently with each other; Close must unblock both (net.Conn, tls.Conn
// and the fixture's pipe do). This is the hook for other transports: anything
// that is an io.ReadWriteCloser gets quilt's queueing and handler rules.
func NewConn(rw io.ReadWriteCloser, opts ConnOptions) Conn {
	c := &conn{
		rw:         rw,
		local:      opts.LocalAddr,
		remote:     opts.RemoteAddr,
		limit:      opts.WriteQueueLimit,
		handler:    opts.Handler,
		handlerSet: make(chan struct{}),
		wake:       make(chan struct{}, 1),
		room:       make(chan struct{}),
		closing:    make(chan struct{}),
		localClose: make(chan struct{}),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	if c.limit == 0 {
		c.limit = DefaultWriteQueueLimit
	}
	size := opts.ReadBufferSize
	if size <= 0 {
		size = DefaultReadBufferSize
	}
	c.readBuf = make([]byte, size)
	go c.writeLoop()
	go c.readLoop()
	return c
}

type conn struct {
	rw            io.ReadWriteCloser
	local, remote string
	limit         int
	readBuf       []byte // owned by the reader goroutine

	// readMu is held by the reader only while inside rw.Read, so Close can
	// wait for the reader to leave the network without waiting for a handler
	// (which may be the caller of Close).
	readMu sync.Mutex

	mu         sync.Mutex
	handler    Handler
	handlerSet chan struct{} // closed and replaced by SetHandler
	pending    []byte        // queued output, in order
	spare      []byte        // the writer's previous batch, reused
	inflight   int           // bytes the writer is writing now
	room       chan struct{} // closed and replaced when output drains
	roomWanted bool          // a WriteWait or Flush waits on room
	reason     error         // first cause of the close; set once
	closedLoc  bool

	wake       chan struct{} // cap 1: output became non-empty
	closing    chan struct{} // closed when reason is set
	localClose chan struct{} // closed by Close
	writerDone chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
}

func (c *conn) RemoteAddr() string    { return c.remote }
func (c *conn) LocalAddr() string     { return c.local }
func (c *conn) Done() <-chan struct{} { return c.done }

func (c *conn) Err() error {
	select {
	case <-c.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.reason
	default:
		return nil
	}
}

// fits reports whether n more bytes may be queued. Called with mu held.
func (c *conn) fits(n int) bool {
	queued := len(c.pending) + c.inflight
	return c.limit < 0 || queued == 0 || queued+n <= c.limit
}

// enqueue appends p. Called with mu held; unlocks.
func (c *conn) enqueue(p []byte) {
	wasEmpty := len(c.pending) == 0
	c.pending = append(c.pending, p...)
	c.mu.Unlock()
	if wasEmpty {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

func (c *conn) Write(p []byte) error {
	c.mu.Lock()
	if c.reason != nil {
		c.mu.Unlock()
		return ErrClosed
	}
	if len(p) == 0 {
		c.mu.Unlock()
		return nil
	}
	if !c.fits(len(p)) {
		c.mu.Unlock()
		return ErrBackpressure
	}
	c.enqueue(p)
	return nil
}

func (c *conn) WriteWait(ctx context.Context, p []byte) error {
	for {
		c.mu.Lock()
		if c.reason != nil {
			c.mu.Unlock()
			return ErrClosed
		}
		if len(p) == 0 {
			c.mu.Unlock()
			return nil
		}
		if c.fits(len(p)) {
			c.enqueue(p)
			return nil
		}
		c.roomWanted = true
		ch := c.room
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *conn) Flush(ctx context.Context) error {
	for {
		c.mu.Lock()
		if c.reason != nil {
			c.mu.Unlock()
			return ErrClosed
		}
		if len(c.pending) == 0 && c.inflight == 0 {
			c.mu.Unlock()
			return nil
		}
		c.roomWanted = true
		ch := c.room
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// signalRoom wakes WriteWait and Flush callers. Called with mu held.
func (c *conn) signalRoom() {
	if c.roomWanted {
		close(c.room)
		c.room = make(chan struct{})
		c.roomWanted = false
	}
}

func (c *conn) SetHandler(h Handler) Handler {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.handler
	c.handler = h
	close(c.handlerSet)
	c.handlerSet = make(chan struct{})
	return old
}

// fail records the first reason the connection ends and closes the network
// side, which unblocks the reader and writer.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.reason != nil {
		c.mu.Unlock()
		return
	}
	c.reason = err
	close(c.closing)
	close(c.room) // every waiter must see the close
	c.room = make(chan struct{})
	c.pending = nil
	c.mu.Unlock()
	_ = c.rw.Close()
}

func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closedLoc = true
		c.mu.Unlock()
		close(c.localClose)
		c.fail(ErrClosed)
	})
	<-c.writerDone
	// The reader checks for the close under readMu before every Read, so once
	// we hold it the reader is out of rw for good.
	c.readMu.Lock()
	c.readMu.Unlock() //nolint:staticcheck // an empty critical section is the point
	return nil
}

func (c *conn) writeLoop() {
	defer close(c.writerDone)
	for {
		c.mu.Lock()
		for len(c.pending) == 0 && c.reason == nil {
			c.mu.Unlock()
			select {
			case <-c.wake:
			case <-c.closing:
			}
			c.mu.Lock()
		}
		if c.reason != nil {
			c.mu.Unlock()
			return
		}
		batch := c.pending
		c.pending = c.spare[:0]
		c.spare = nil
		c.inflight = len(batch)
		c.mu.Unlock()

		_, err := c.rw.Write(batch)

		c.mu.Lock()
		c.inflight = 0
		if cap(batch) <= maxSpare {
			c.spare = batch[:0]
		}
		c.signalRoom()
		c.mu.Unlock()
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// currentHandler waits until a handler is set, or returns nil when Close was
// called while waiting (held input and events are then dropped).
func (c *conn) currentHandler() Handler {
	for {
		c.mu.Lock()
		h, ch, local := c.handler, c.handlerSet, c.closedLoc
		c.mu.Unlock()
		if h != nil {
			return h
		}
		if local {
			return nil
		}
		select {
		case <-ch:
		case <-c.localClose:
		}
	}
}

func (c *conn) readLoop() {
	defer close(c.done)
	for {
		c.readMu.Lock()
		select {
		case <-c.closing:
			c.readMu.Unlock()
			c.finish()
			return
		default:
		}
		n, err := c.rw.Read(c.readBuf)
		c.readMu.Unlock()
		select {
		case <-c.localClose: // whatever arrived with the close is not wanted
			c.finish()
			return
		default:
		}
		if n > 0 {
			h := c.currentHandler()
			if h == nil {
				c.finish()
				return
			}
			h.Input(c, c.readBuf[:n])
		}
		if err != nil {
			c.fail(err)
			c.finish()
			return
		}
	}
}

// finish runs on the reader once it has stopped reading: it waits for the
// writer, then reports the close to the handler.
func (c *conn) finish() {
	<-c.writerDone
	c.mu.Lock()
	reason := c.reason
	c.mu.Unlock()
	if h := c.currentHandler(); h != nil {
		h.Closed(c, reason)
	}
}
