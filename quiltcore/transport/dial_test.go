package transport_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quilt/quilt/quiltcore/transport"
	"github.com/quilt/quilt/quiltcore/transport/fixture"
)

// fakeSleep records requested delays and returns at once (or fails from the
// given call on, to model ctx cancellation).
type fakeSleep struct {
	mu     sync.Mutex
	delays []time.Duration
	cancel func() // called on call number cancelAt
	at     int
}

func (f *fakeSleep) sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	f.delays = append(f.delays, d)
	n := len(f.delays)
	f.mu.Unlock()
	if f.cancel != nil && n == f.at {
		f.cancel()
	}
	return ctx.Err()
}

func TestRetryBackoffAndMaxAttempts(t *testing.T) {
	var fs fakeSleep
	var tried []string
	refused := errors.New("refused")
	opts := transport.DialOptions{
		MinDelay: time.Second, MaxDelay: 5 * time.Second, Backoff: 2,
		MaxAttempts: 6, Sleep: fs.sleep,
	}
	_, err := transport.Retry(context.Background(), []string{"a:1", "b:2"}, opts,
		func(_ context.Context, addr string) (transport.Conn, error) {
			tried = append(tried, addr)
			return nil, refused
		})
	var de *transport.DialError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want *DialError", err)
	}
	want := []time.Duration{1, 2, 4, 5, 5}
	for i := range want {
		want[i] *= time.Second
	}
	if !reflect.DeepEqual(fs.delays, want) {
		t.Fatalf("delays %v, want %v (no sleep after the last round)", fs.delays, want)
	}
	if len(tried) != 12 || strings.Count(strings.Join(tried, " "), "a:1") != 6 {
		t.Fatalf("attempts %v, want 6 per address, alternating", tried)
	}
	if de.Rounds != 6 || de.Cause != nil || len(de.Addrs) != 2 || de.Addrs[1].Addr != "b:2" || !errors.Is(err, refused) {
		t.Fatalf("DialError %+v", de)
	}
	if msg := err.Error(); !strings.Contains(msg, "a:1: refused") || !strings.Contains(msg, "b:2: refused") {
		t.Fatalf("message %q does not name every address", msg)
	}
}

func TestRetryDefaultsAndSuccess(t *testing.T) {
	var fs fakeSleep
	calls := 0
	c, p := fixture.New(fixture.Options{})
	defer func() { c.Close(); p.Close(); waitDone(t, c) }()
	got, err := transport.Retry(context.Background(), []string{"x"}, transport.DialOptions{Sleep: fs.sleep},
		func(ctx context.Context, _ string) (transport.Conn, error) {
			if _, ok := ctx.Deadline(); !ok {
				t.Error("attempt has no connect timeout")
			}
			calls++
			if calls < 4 {
				return nil, errors.New("no")
			}
			return c, nil
		})
	if err != nil || got != c {
		t.Fatalf("Retry = %v, %v", got, err)
	}
	// Zero options: one second, no growth.
	if want := []time.Duration{time.Second, time.Second, time.Second}; !reflect.DeepEqual(fs.delays, want) {
		t.Fatalf("delays %v, want %v", fs.delays, want)
	}
}

func TestRetryContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fs := fakeSleep{cancel: cancel, at: 3}
	attempts := 0
	_, err := transport.Retry(ctx, []string{"a"}, transport.DialOptions{Sleep: fs.sleep},
		func(context.Context, string) (transport.Conn, error) {
			attempts++
			return nil, errors.New("down")
		})
	if !errors.Is(err, context.Canceled) || attempts != 3 {
		t.Fatalf("err %v after %d attempts, want context.Canceled after 3", err, attempts)
	}
	if _, err := transport.Retry(ctx, nil, transport.DialOptions{}, nil); !errors.Is(err, transport.ErrNoAddresses) {
		t.Fatalf("no addresses: %v", err)
	}
}

func TestRetryRealSleepCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := transport.Retry(ctx, []string{"a"}, transport.DialOptions{MinDelay: time.Hour},
		func(context.Context, string) (transport.Conn, error) { return nil, errors.New("down") })
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestSocketDialRefusedPerAddress(t *testing.T) {
	var fs fakeSleep
	a, b := closedPort(t), closedPort(t)
	_, err := transport.Dial(context.Background(), []string{a, b},
		transport.DialOptions{MaxAttempts: 3, MinDelay: 10 * time.Millisecond, Backoff: 3, MaxDelay: time.Second, Sleep: fs.sleep})
	var de *transport.DialError
	if !errors.As(err, &de) || len(de.Addrs) != 2 || de.Rounds != 3 {
		t.Fatalf("err = %#v", err)
	}
	if !errors.Is(err, syscallECONNREFUSED()) {
		t.Logf("note: error is %v", err)
	}
	if want := []time.Duration{10 * time.Millisecond, 30 * time.Millisecond}; !reflect.DeepEqual(fs.delays, want) {
		t.Fatalf("delays %v, want %v", fs.delays, want)
	}
}

func TestSocketDialFallsThroughToLiveAddress(t *testing.T) {
	l, err := transport.Listen(context.Background(), "127.0.0.1:0", transport.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var fs fakeSleep
	c, err := transport.Dial(context.Background(), []string{closedPort(t), l.Addr()}, transport.DialOptions{Sleep: fs.sleep})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := l.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c.RemoteAddr() != l.Addr() || srv.RemoteAddr() != c.LocalAddr() || len(fs.delays) != 0 {
		t.Fatalf("addrs %s %s %s, delays %v", c.RemoteAddr(), srv.RemoteAddr(), c.LocalAddr(), fs.delays)
	}
	r := newRecorder()
	srv.SetHandler(r)
	c.Write([]byte("ping\n"))
	if got := r.line(t); got != "ping" {
		t.Fatalf("server got %q", got)
	}
	c.Close()
	if err := r.closedWith(t, srv); !errors.Is(err, transport.ErrClosed) && err.Error() != "EOF" {
		t.Fatalf("server Closed(%v)", err)
	}
	waitDone(t, c)
}

func TestListenerAcceptCancel(t *testing.T) {
	l, err := transport.Listen(context.Background(), "127.0.0.1:0", transport.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := l.Accept(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept = %v, want context.Canceled", err)
	}
	// Still usable after a cancelled Accept.
	go func() {
		nc, err := net.Dial("tcp", l.Addr())
		if err == nil {
			nc.Close()
		}
	}()
	c, err := l.Accept(context.Background())
	if err != nil {
		t.Fatalf("Accept after cancel: %v", err)
	}
	c.Close()
	waitDone(t, c)
	l.Close()
	if _, err := l.Accept(context.Background()); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Accept after Close = %v", err)
	}
}

func TestTLSVerification(t *testing.T) {
	ca := newTestCA(t)
	l, err := transport.Listen(context.Background(), "127.0.0.1:0", transport.ListenOptions{
		TLS: &tls.Config{Certificates: []tls.Certificate{ca.server}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	serverErrs := make(chan error, 4)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept(context.Background())
			if errors.Is(err, transport.ErrClosed) {
				return
			}
			if err != nil {
				serverErrs <- err
				continue
			}
			// Echo server on the blocking view.
			s := transport.Stream(c)
			br := bufio.NewReader(s)
			line, _ := br.ReadString('\n')
			s.Write([]byte("echo " + line))
			s.Close()
			serverErrs <- nil
		}
	}()

	// Not trusted: the system roots do not know our CA.
	_, err = transport.Dial(context.Background(), []string{l.Addr()},
		transport.DialOptions{TLS: &tls.Config{}, MaxAttempts: 1})
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("untrusted dial: %v, want x509.UnknownAuthorityError", err)
	}
	if err := <-serverErrs; err == nil {
		t.Fatal("server accepted a handshake the client refused")
	}

	// Trusted, with ServerName taken from the address.
	r := newRecorder()
	c, err := transport.Dial(context.Background(), []string{l.Addr()},
		transport.DialOptions{TLS: &tls.Config{RootCAs: ca.pool}, MaxAttempts: 1, Handler: r})
	if err != nil {
		t.Fatalf("trusted dial: %v", err)
	}
	c.Write([]byte("hello\r\n"))
	if got := r.line(t); got != "echo hello" {
		t.Fatalf("got %q", got)
	}
	if err := r.closedWith(t, c); err == nil {
		t.Fatal("Closed(nil)")
	}
	if err := <-serverErrs; err != nil {
		t.Fatal(err)
	}

	// Wrong name: verification is by host name, not just by CA.
	_, err = transport.Dial(context.Background(), []string{l.Addr()},
		transport.DialOptions{TLS: &tls.Config{RootCAs: ca.pool, ServerName: "irc.example.net"}, MaxAttempts: 1})
	var host x509.HostnameError
	if !errors.As(err, &host) {
		t.Fatalf("wrong name: %v, want x509.HostnameError", err)
	}
	<-serverErrs
	l.Close()
	wg.Wait()
}

func TestDialAsync(t *testing.T) {
	l, err := transport.Listen(context.Background(), "127.0.0.1:0", transport.ListenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan any, 1)
	h := transport.FactoryFuncs{
		OnConnected: func(c transport.Conn) { got <- c },
		OnFailed:    func(err error) { got <- err },
	}
	transport.DialAsync(context.Background(), []string{l.Addr()}, transport.DialOptions{}, h)
	srv, err := l.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c, ok := (<-got).(transport.Conn)
	if !ok {
		t.Fatal("DialAsync did not report Connected")
	}
	c.Close()
	srv.Close()
	waitDone(t, c)
	waitDone(t, srv)

	transport.DialAsync(context.Background(), []string{closedPort(t)}, transport.DialOptions{MaxAttempts: 1}, h)
	if err, ok := (<-got).(error); !ok || err == nil {
		t.Fatal("DialAsync did not report Failed")
	}
}

// TLS against a plain-text server (the IRC default tls = true on port 6667)
// must say what is wrong, not only quote the record header.
func TestTLSAgainstPlainTextServerHints(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(":irc.example NOTICE * :*** Looking up your hostname...\r\n"))
		time.Sleep(100 * time.Millisecond)
	}()
	_, err = transport.Dial(context.Background(), []string{ln.Addr().String()},
		transport.DialOptions{TLS: &tls.Config{}, MaxAttempts: 1})
	if err == nil || !strings.Contains(err.Error(), "tls = false") {
		t.Fatalf("want a hint to set tls = false, got %v", err)
	}
}
