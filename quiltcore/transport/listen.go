package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// ListenOptions configure Listen.
type ListenOptions struct {
	// TLS, when set, makes accepted connections TLS servers with this
	// configuration (it needs Certificates or GetCertificate). The handshake
	// runs in Accept, bounded by HandshakeTimeout.
	TLS              *tls.Config
	HandshakeTimeout time.Duration // 0: DefaultConnectTimeout

	// Handler, WriteQueueLimit and ReadBufferSize are passed to every
	// accepted Conn (see ConnOptions). With a nil Handler, input is held
	// until the caller sets one.
	Handler         Handler
	WriteQueueLimit int
	ReadBufferSize  int
}

// Listener accepts connections (seed 001's server connection factory).
type Listener interface {
	// Accept waits for the next connection. It returns ctx.Err() when ctx is
	// done and ErrClosed after Close. A failed TLS handshake is returned as
	// an error; the listener stays usable.
	Accept(ctx context.Context) (Conn, error)
	// Addr is the bound address, e.g. "127.0.0.1:40123" after ":0".
	Addr() string
	// Close stops listening; established connections are not affected.
	Close() error
}

// Listen binds a TCP address. ctx bounds only the bind.
func Listen(ctx context.Context, addr string, opts ListenOptions) (Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: net.KeepAliveConfig{Enable: true}}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &listener{ln: ln.(*net.TCPListener), opts: opts}, nil
}

type listener struct {
	ln   *net.TCPListener
	opts ListenOptions
	mu   sync.Mutex // serialises Accept, whose cancellation moves the deadline
}

func (l *listener) Addr() string { return l.ln.Addr().String() }

func (l *listener) Close() error {
	err := l.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// aLongTimeAgo is a deadline that has passed, to unblock Accept.
var aLongTimeAgo = time.Unix(1, 0)

func (l *listener) Accept(ctx context.Context) (Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = l.ln.SetDeadline(aLongTimeAgo)
		close(fired)
	})
	nc, err := l.ln.Accept()
	if !stop() {
		<-fired
		_ = l.ln.SetDeadline(time.Time{})
		if nc != nil {
			_ = nc.Close()
		}
		return nil, ctx.Err()
	}
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, err
	}
	var rw net.Conn = nc
	if l.opts.TLS != nil {
		timeout := l.opts.HandshakeTimeout
		if timeout <= 0 {
			timeout = DefaultConnectTimeout
		}
		hctx, cancel := context.WithTimeout(ctx, timeout)
		tc := tls.Server(nc, l.opts.TLS)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			_ = nc.Close()
			return nil, err
		}
		rw = tc
	}
	return NewConn(rw, ConnOptions{
		Handler:         l.opts.Handler,
		WriteQueueLimit: l.opts.WriteQueueLimit,
		ReadBufferSize:  l.opts.ReadBufferSize,
		LocalAddr:       nc.LocalAddr().String(),
		RemoteAddr:      nc.RemoteAddr().String(),
	}), nil
}
