package imap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/transport/fixture"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// fake is an in-memory IMAP server (go-imap's imapmemserver) reached through
// the transport fixture: the driver dials fixture.Dialer and the server
// serves the peer's end, so no socket is involved.
type fake struct {
	t      *testing.T
	dialer *fixture.Dialer
	user   *imapmemserver.User
	srv    *imapserver.Server
	ln     *connListener

	mu    sync.Mutex
	peers []*fixture.Peer
}

func newFake(t *testing.T, idle bool) *fake {
	t.Helper()
	mem := imapmemserver.New()
	user := imapmemserver.NewUser("alice", "alicepw")
	if err := user.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(user)
	caps := goimap.CapSet{goimap.CapIMAP4rev1: {}}
	if idle {
		caps[goimap.CapIdle] = struct{}{}
	}
	f := &fake{t: t, dialer: fixture.NewDialer(), user: user, ln: newConnListener()}
	f.srv = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         caps,
		InsecureAuth: true,
		Logger:       newTestLogger(t),
	})
	go f.srv.Serve(f.ln)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for ctx.Err() == nil {
			p, err := f.dialer.NextPeer(100 * time.Millisecond)
			if err != nil {
				continue
			}
			f.mu.Lock()
			f.peers = append(f.peers, p)
			f.mu.Unlock()
			f.ln.push(p.NetConn())
		}
	}()
	t.Cleanup(func() { cancel(); f.srv.Close() })
	return f
}

// testLogger hands the fake server's log lines to the test until it
// ends: the server's connection goroutines may still log while the test
// returns, and testing forbids (and the race detector flags) a Logf then.
type testLogger struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func newTestLogger(t *testing.T) *testLogger {
	l := &testLogger{t: t}
	t.Cleanup(func() {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
	})
	return l
}

func (l *testLogger) Printf(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Logf("imapserver: "+format, a...)
	}
}

// peer is the n-th connection's server end (0-based).
func (f *fake) peer(n int) *fixture.Peer {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n >= len(f.peers) {
		return nil
	}
	return f.peers[n]
}

func (f *fake) create(name string) {
	f.t.Helper()
	if err := f.user.Create(name, nil); err != nil {
		f.t.Fatal(err)
	}
}

// appendMail stores a mail as another client's APPEND would.
func (f *fake) appendMail(mailbox, raw string) uint32 {
	f.t.Helper()
	d, err := f.user.Append(mailbox, literal{bytes.NewReader([]byte(raw)), int64(len(raw))},
		&goimap.AppendOptions{Time: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)})
	if err != nil {
		f.t.Fatal(err)
	}
	return uint32(d.UID)
}

func (f *fake) uidValidity(mailbox string) uint32 {
	f.t.Helper()
	st, err := f.user.Status(mailbox, &goimap.StatusOptions{UIDValidity: true})
	if err != nil {
		f.t.Fatal(err)
	}
	return st.UIDValidity
}

type literal struct {
	*bytes.Reader
	n int64
}

func (l literal) Size() int64 { return l.n }

func simpleMail(from, subject, body string) string {
	return "From: " + from + "\r\nTo: alice@example.org\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@example.org>\r\n\r\n" + body + "\r\n"
}

// connListener hands the server the fixture peers' ends.
type connListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnListener() *connListener {
	return &connListener{conns: make(chan net.Conn, 16), closed: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) { l.conns <- c }

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return fakeAddr{} }

type fakeAddr struct{}

func (fakeAddr) Network() string { return "fixture" }
func (fakeAddr) String() string  { return "fixture" }

// recorder is the Emitter: it keeps every call.
type recorder struct {
	mu    sync.Mutex
	calls []emitCall
}

type emitCall struct {
	evs     []*quiltv1.Event
	cursors []*quiltv1.Cursor
}

func (r *recorder) Emit(_ context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error {
	r.mu.Lock()
	r.calls = append(r.calls, emitCall{evs, cursors})
	r.mu.Unlock()
	return nil
}

func (r *recorder) snapshot() []emitCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]emitCall(nil), r.calls...)
}

func (r *recorder) events(kind quiltv1.EventKind) []*quiltv1.Event {
	var out []*quiltv1.Event
	for _, c := range r.snapshot() {
		for _, e := range c.evs {
			if e.Kind == kind {
				out = append(out, e)
			}
		}
	}
	return out
}

// cursor is the last value emitted for name.
func (r *recorder) cursor(name string) string {
	v := ""
	for _, c := range r.snapshot() {
		for _, cur := range c.cursors {
			if cur.Name == name {
				v = cur.Value
			}
		}
	}
	return v
}

func serverConfig(mailboxes []string, idle bool, poll time.Duration) *config.Server {
	return &config.Server{
		Name: "mail", Enabled: true, ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
		ReconnectFactor: 2, ConnectTimeout: time.Second,
		IMAP: &config.IMAPSettings{Host: "imap.test", Port: 143, Username: "alice",
			Password: config.NewSecret("alicepw"), Mailboxes: mailboxes, Idle: idle, PollInterval: poll},
	}
}

// running is a Client under test.
type running struct {
	c       *Client
	rec     *recorder
	cancel  context.CancelFunc
	done    chan error
	connect chan *quiltv1.User
}

func startClient(t *testing.T, f *fake, source string, srv *config.Server, cursors map[string]string) *running {
	t.Helper()
	c, err := NewClient(runtime.SessionConfig{Source: source, Server: srv, Cursors: cursors,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))},
		runtime.ClientDeps{Dialer: f.dialer, Clock: runtime.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, rec: &recorder{}, cancel: cancel, done: make(chan error, 1), connect: make(chan *quiltv1.User, 1)}
	go func() { r.done <- c.Run(ctx, r.rec, func(u *quiltv1.User) { r.connect <- u }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	select {
	case <-r.connect:
	case err := <-r.done:
		t.Fatalf("Run ended before connecting: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("not connected after 5s")
	}
	return r
}

func (r *running) do(t *testing.T, kind quiltv1.ActionKind, target string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := r.c.Do(ctx, &quiltv1.Action{Kind: kind, Target: target})
	return err
}

func (r *running) join(t *testing.T, mailbox string) {
	t.Helper()
	if err := r.do(t, quiltv1.ActionKind_ACTION_KIND_JOIN, mailbox); err != nil {
		t.Fatalf("JOIN %s: %v", mailbox, err)
	}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func pos(uv, uid uint32) string { return fmt.Sprintf("%d:%d", uv, uid) }

var errDropped = errors.New("network gone")

var sourceSeq atomic.Int64

// uniqueSource names a source manager no other test (or -count run) used:
// positions are remembered per process.
func uniqueSource(t *testing.T) string {
	return fmt.Sprintf("%s#%d", t.Name(), sourceSeq.Add(1))
}

func configSecret(s string) config.Secret { return config.NewSecret(s) }

func sessionConfig(t *testing.T, srv *config.Server) runtime.SessionConfig {
	return runtime.SessionConfig{Source: uniqueSource(t), Server: srv,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
}

func depsFor(f *fake) runtime.ClientDeps {
	return runtime.ClientDeps{Dialer: f.dialer, Clock: runtime.SystemClock{}}
}

func slogFor(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
