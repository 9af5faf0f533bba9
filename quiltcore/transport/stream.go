package transport

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	"github.com/quilt/quilt/quiltcore/transport/internal/pipe"
)

// streamBufferLimit bounds the input a Stream holds for its reader; past it
// the connection's reader waits, which pushes back on the peer through TCP.
const streamBufferLimit = 1 << 20

// StreamLinger bounds how long a Stream's Close waits for queued output to be
// sent (less if a write deadline comes first), like SO_LINGER on a socket.
const StreamLinger = 5 * time.Second

// Stream returns a blocking net.Conn view of c, for libraries that drive a
// protocol themselves (XMPP, IMAP) and for STARTTLS: tls.Client(Stream(c), cfg)
// runs TLS over the Conn. It installs its own handler on c (input already
// held by c is delivered to it first), so c must not be given another one
// while the view is in use.
//
// Semantics follow net.Pipe: Read blocks until input arrives and returns
// io.EOF (or the close reason) after the connection ends and held input is
// drained; Write queues all of p, waiting while the write queue is full
// (WriteWait), so it blocks only on backpressure; Close closes c. Read and
// write deadlines are honoured and fail with os.ErrDeadlineExceeded, as on a
// socket. Addresses are reported as network "quilt".
func Stream(c Conn) net.Conn {
	s := &stream{
		c:      c,
		in:     pipe.New(streamBufferLimit),
		rd:     pipe.NewDeadline(),
		wd:     pipe.NewDeadline(),
		closed: make(chan struct{}),
	}
	c.SetHandler(s)
	return s
}

type stream struct {
	c         Conn
	in        *pipe.Buffer
	rd, wd    *pipe.Deadline
	closed    chan struct{}
	closeOnce sync.Once
}

// Input runs on c's reader: copying is required (data is reused) and the
// buffer's limit makes the reader wait for a slow consumer.
func (s *stream) Input(_ Conn, data []byte) {
	_, _ = s.in.Write(data, s.closed, ErrClosed)
}

func (s *stream) Closed(_ Conn, err error) { s.in.CloseWithError(err) }

func (s *stream) Read(p []byte) (int, error) {
	select {
	case <-s.closed:
		return 0, ErrClosed
	default:
	}
	return s.in.Read(p, s.rd.Wait(), os.ErrDeadlineExceeded)
}

func (s *stream) Write(p []byte) (int, error) {
	select {
	case <-s.closed:
		return 0, ErrClosed
	case <-s.wd.Wait():
		return 0, os.ErrDeadlineExceeded
	default:
	}
	err := s.c.Write(p)
	if errors.Is(err, ErrBackpressure) {
		err = s.writeWait(p)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeWait is the slow path: wait for room until the write deadline (as set
// when the wait began) or Close.
func (s *stream) writeWait(p []byte) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	deadline := s.wd.Wait()
	go func() {
		select {
		case <-deadline:
		case <-s.closed:
		case <-ctx.Done():
		}
		cancel()
	}()
	err := s.c.WriteWait(ctx, p)
	if errors.Is(err, context.Canceled) {
		select {
		case <-s.closed:
			return ErrClosed
		default:
			return os.ErrDeadlineExceeded
		}
	}
	return err
}

func (s *stream) Close() error {
	// net.Conn users expect Write-then-Close to deliver, as the kernel does
	// for a socket, so the queue is flushed first, within bounds.
	ctx, cancel := context.WithTimeout(context.Background(), StreamLinger)
	defer cancel()
	wd := s.wd.Wait()
	go func() {
		select {
		case <-wd:
			cancel()
		case <-ctx.Done():
		}
	}()
	_ = s.c.Flush(ctx)
	cancel()
	s.closeOnce.Do(func() { close(s.closed) })
	s.in.CloseWithError(ErrClosed)
	return s.c.Close()
}

func (s *stream) LocalAddr() net.Addr  { return Addr(s.c.LocalAddr()) }
func (s *stream) RemoteAddr() net.Addr { return Addr(s.c.RemoteAddr()) }

func (s *stream) SetDeadline(t time.Time) error {
	s.rd.Set(t)
	s.wd.Set(t)
	return nil
}
func (s *stream) SetReadDeadline(t time.Time) error  { s.rd.Set(t); return nil }
func (s *stream) SetWriteDeadline(t time.Time) error { s.wd.Set(t); return nil }

// Addr is a Conn address as a net.Addr.
type Addr string

// Network returns "quilt".
func (Addr) Network() string  { return "quilt" }
func (a Addr) String() string { return string(a) }
