package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// DialOptions configure a Dialer. The zero value dials plain TCP, retrying
// every second forever.
type DialOptions struct {
	// MinDelay is the wait after the first failed round of addresses
	// (0: one second). Each further round multiplies the wait by Backoff
	// (values below 1 mean 1), up to MaxDelay (0 or less than MinDelay:
	// MinDelay). The addresses of one round are tried back to back.
	MinDelay, MaxDelay time.Duration
	Backoff            float64

	// MaxAttempts is how many times each address is tried before Dial gives
	// up with a *DialError; 0 means no limit (until ctx is done).
	MaxAttempts int

	// ConnectTimeout bounds one attempt, TLS handshake included
	// (0: DefaultConnectTimeout).
	ConnectTimeout time.Duration

	// TLS, when set, makes connections TLS with this configuration. The
	// certificate is verified unless the caller sets InsecureSkipVerify; an
	// empty ServerName is taken from the address's host.
	TLS *tls.Config

	// Handler, WriteQueueLimit and ReadBufferSize are passed to the Conn
	// (see ConnOptions).
	Handler         Handler
	WriteQueueLimit int
	ReadBufferSize  int

	// Sleep waits between rounds; nil uses a real timer. Tests inject a
	// function that records the delays and returns at once. It must return
	// ctx.Err() (or another error, which ends the dial) when ctx is done.
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultConnectTimeout bounds one connection attempt when
// DialOptions.ConnectTimeout is 0.
const DefaultConnectTimeout = 30 * time.Second

// AddrError is the last error seen for one address.
type AddrError struct {
	Addr string
	Err  error
}

// DialError is returned when Dial gives up: every address failed
// MaxAttempts times (Cause nil), or ctx ended the dial or Sleep failed
// (Cause is that error, e.g. context.Canceled).
type DialError struct {
	Rounds int         // complete or partial rounds made
	Addrs  []AddrError // the last error of each address tried, in order
	Cause  error
}

func (e *DialError) Error() string {
	var b strings.Builder
	b.WriteString("transport: dial failed")
	if e.Cause != nil {
		fmt.Fprintf(&b, " (%v)", e.Cause)
	}
	fmt.Fprintf(&b, " after %d round(s)", e.Rounds)
	for i, a := range e.Addrs {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %v", a.Addr, a.Err)
	}
	return b.String()
}

// Unwrap exposes the cause and every address's error to errors.Is/As.
func (e *DialError) Unwrap() []error {
	errs := make([]error, 0, len(e.Addrs)+1)
	if e.Cause != nil {
		errs = append(errs, e.Cause)
	}
	for _, a := range e.Addrs {
		errs = append(errs, a.Err)
	}
	return errs
}

// AttemptFunc makes one connection attempt to addr.
type AttemptFunc func(ctx context.Context, addr string) (Conn, error)

// ErrNoAddresses is returned (inside a *DialError) by Dial with no addresses.
var ErrNoAddresses = errors.New("transport: no addresses to dial")

// Retry runs the address/backoff loop of DialOptions around attempt; it is
// the whole of Dial except for making one connection, so every Dialer
// implementation (sockets, the fixture) shares the same retry behaviour.
// attempt gets a ctx bounded by ConnectTimeout.
func Retry(ctx context.Context, addrs []string, opts DialOptions, attempt AttemptFunc) (Conn, error) {
	if len(addrs) == 0 {
		return nil, &DialError{Cause: ErrNoAddresses}
	}
	delay, maxDelay, backoff := opts.MinDelay, opts.MaxDelay, opts.Backoff
	if delay <= 0 {
		delay = time.Second
	}
	if maxDelay < delay {
		maxDelay = delay
	}
	if backoff < 1 {
		backoff = 1
	}
	timeout := opts.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	sleep := opts.Sleep
	if sleep == nil {
		sleep = sleepTimer
	}
	last := make([]AddrError, 0, len(addrs))
	record := func(addr string, err error) {
		for i := range last {
			if last[i].Addr == addr {
				last[i].Err = err
				return
			}
		}
		last = append(last, AddrError{Addr: addr, Err: err})
	}
	fail := func(rounds int, cause error) error {
		return &DialError{Rounds: rounds, Addrs: last, Cause: cause}
	}
	for round := 1; ; round++ {
		for _, addr := range addrs {
			if err := ctx.Err(); err != nil {
				return nil, fail(round, err)
			}
			actx, cancel := context.WithTimeout(ctx, timeout)
			c, err := attempt(actx, addr)
			cancel()
			if err == nil {
				return c, nil
			}
			record(addr, err)
		}
		if opts.MaxAttempts > 0 && round >= opts.MaxAttempts {
			return nil, fail(round, nil)
		}
		if err := sleep(ctx, delay); err != nil {
			return nil, fail(round, err)
		}
		delay = min(time.Duration(float64(delay)*backoff), maxDelay)
	}
}

func sleepTimer(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SocketDialer dials TCP (and TLS over it). The zero value is ready to use.
type SocketDialer struct {
	// DialContext, when set, replaces net.Dialer.DialContext for the TCP
	// step: the hook for fake sockets, proxies or a fixed source address.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

var _ Dialer = SocketDialer{}

// Dial implements Dialer over TCP/TLS.
func (d SocketDialer) Dial(ctx context.Context, addrs []string, opts DialOptions) (Conn, error) {
	return Retry(ctx, addrs, opts, func(ctx context.Context, addr string) (Conn, error) {
		return d.dialOne(ctx, addr, opts)
	})
}

// DialAsync implements Dialer: Dial on a new goroutine, reporting to h.
func (d SocketDialer) DialAsync(ctx context.Context, addrs []string, opts DialOptions, h FactoryHandler) {
	DialAsyncWith(ctx, func(ctx context.Context) (Conn, error) { return d.Dial(ctx, addrs, opts) }, h)
}

func reportDial(h FactoryHandler) func(Conn, error) {
	return func(c Conn, err error) {
		if err != nil {
			h.Failed(err)
			return
		}
		h.Connected(c)
	}
}

// DialAsyncWith runs any Dialer's blocking Dial on a new goroutine and reports
// the result to h; Dialer implementations can use it for DialAsync.
func DialAsyncWith(ctx context.Context, dial func(context.Context) (Conn, error), h FactoryHandler) {
	go func() { reportDial(h)(dial(ctx)) }()
}

func (d SocketDialer) dialOne(ctx context.Context, addr string, opts DialOptions) (Conn, error) {
	dial := d.DialContext
	if dial == nil {
		nd := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true}}
		dial = nd.DialContext
	}
	nc, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	var rw net.Conn = nc
	if opts.TLS != nil {
		cfg := opts.TLS
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			cfg = cfg.Clone()
			cfg.ServerName = host
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			var rhe tls.RecordHeaderError
			if errors.As(err, &rhe) {
				// The commonest misconfiguration: TLS (the default) against a
				// plain-text port.
				return nil, fmt.Errorf("tls handshake with %s: %w (the server answered in plain text: is this a non-TLS port? set tls = false or use the TLS port)", addr, err)
			}
			return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
		}
		rw = tc
	}
	return NewConn(rw, ConnOptions{
		Handler:         opts.Handler,
		WriteQueueLimit: opts.WriteQueueLimit,
		ReadBufferSize:  opts.ReadBufferSize,
		LocalAddr:       nc.LocalAddr().String(),
		RemoteAddr:      nc.RemoteAddr().String(),
	}), nil
}

// Dial connects over TCP/TLS with the default SocketDialer.
func Dial(ctx context.Context, addrs []string, opts DialOptions) (Conn, error) {
	return SocketDialer{}.Dial(ctx, addrs, opts)
}

// DialAsync is Dial on a new goroutine, reporting the result to h.
func DialAsync(ctx context.Context, addrs []string, opts DialOptions, h FactoryHandler) {
	SocketDialer{}.DialAsync(ctx, addrs, opts, h)
}
