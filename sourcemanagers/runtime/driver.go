package runtime

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/transport"
)

// A Driver teaches the runtime one protocol. It is either a StreamDriver (the
// runtime owns the connection and feeds an I/O-free Session: IRC, BZFlag) or
// a ClientDriver (a protocol library owns the exchange and the runtime hands
// it an *http.Client or transport connections: Matrix, XMPP, IMAP).
type Driver interface {
	// Protocol is the smd.d `protocol =` value this driver serves.
	Protocol() string
}

// SessionConfig is what a new session or client gets.
type SessionConfig struct {
	Source string         // source manager name
	Server *config.Server // the [server NAME] settings (secrets inside)
	Logger *slog.Logger
	// Cursors stored by the query master for this server, by name.
	Cursors map[string]string
	// SessionID is unique per connection; drivers that have no stable
	// network ids build event ids from it and a sequence number.
	SessionID string
}

// StreamDriver serves protocols spoken over one byte stream.
type StreamDriver interface {
	Driver
	// Addresses lists host:port candidates for the server, tried in turn.
	Addresses(s *config.Server) []string
	// TLSConfig is nil for plain TCP.
	TLSConfig(s *config.Server) *tls.Config
	NewSession(cfg SessionConfig) Session
}

// Session is an I/O-free protocol session: bytes and actions in, bytes and
// events out. It starts no goroutines, opens no sockets and reads no clock
// (now is passed in). The runtime calls it from one goroutine at a time.
//
// Events: the session emits CONNECTED (User = its own account, Self set)
// once the protocol session is usable (IRC: after 001); the runtime then
// joins the configured channels through Do. The runtime emits DISCONNECTED
// itself when the connection ends, so a session never needs to. A session
// may leave Event.Id empty: the runtime then assigns SessionID:N, which is
// stable across replays of the source manager's buffer. Source, Server,
// Protocol and Received are always filled in by the runtime.
type Session interface {
	// Start is called once the connection is up (IRC: CAP LS, NICK, USER).
	Start(now time.Time) Output
	// Input feeds bytes read from the connection, in any chunking.
	Input(now time.Time, data []byte) Output
	// Tick is called at or after the last Output.NextTick.
	Tick(now time.Time) Output
	// Do turns an action into protocol output. An error means the action
	// cannot be carried out (bad target, not connected); nothing was sent.
	Do(now time.Time, a *quiltv1.Action) (Output, error)
}

// Output is what a Session asks the runtime to do, in this order: write Send
// to the connection, publish Events (after applying them to the server's
// user and channel maps), store Cursors with the events, then close the
// connection with Close if it is set.
type Output struct {
	Send   [][]byte
	Events []*quiltv1.Event
	// Cursors to store together with Events (resume positions).
	Cursors []*quiltv1.Cursor
	// Close, when non-nil, ends the connection after Send is written; the
	// error is the reason reported in the DISCONNECTED event.
	Close error
	// NextTick asks for a Tick call at that time (zero: no change).
	NextTick time.Time
	// Lag, when non-zero, is the round-trip time of the protocol's last
	// keep-alive (IRC PING/PONG); SERVERS live queries report it.
	Lag time.Duration
}

// Merge appends o2 to o, keeping the earlier non-zero NextTick and the first
// Close.
func (o *Output) Merge(o2 Output) {
	o.Send = append(o.Send, o2.Send...)
	o.Events = append(o.Events, o2.Events...)
	o.Cursors = append(o.Cursors, o2.Cursors...)
	if o.Close == nil {
		o.Close = o2.Close
	}
	if !o2.NextTick.IsZero() && (o.NextTick.IsZero() || o2.NextTick.Before(o.NextTick)) {
		o.NextTick = o2.NextTick
	}
	if o2.Lag != 0 {
		o.Lag = o2.Lag
	}
}

// ClientDriver serves protocols whose library owns the exchange.
type ClientDriver interface {
	Driver
	NewClient(cfg SessionConfig, deps ClientDeps) (Client, error)
}

// ClientDeps are the only ways a Client may reach the network, so tests can
// replace them (a fake RoundTripper, the fixture dialer).
type ClientDeps struct {
	HTTP   *http.Client
	Dialer transport.Dialer
	// Clock is the runtime's clock; clients that pace themselves use it so
	// tests control their timing.
	Clock Clock
}

// Emitter receives what a Client observes. Emit blocks while the source
// manager's unacknowledged-event buffer is full (back-pressure), and returns
// an error only when the client must stop (ctx ended). Emit applies the
// events to the server's user and channel maps and may change them (ids,
// names filled in); the client must not touch them after the call. It is
// safe to call from several goroutines.
type Emitter interface {
	Emit(ctx context.Context, events []*quiltv1.Event, cursors []*quiltv1.Cursor) error
}

// Client is a library-driven protocol session.
type Client interface {
	// Run connects, emits events until ctx ends or the session fails, and
	// returns why it stopped. CONNECTED/DISCONNECTED events are the
	// runtime's job, not the client's: Run should call connected() once the
	// session is up.
	Run(ctx context.Context, emit Emitter, connected func(self *quiltv1.User)) error
	// Do carries out an action; sent counts protocol requests written.
	Do(ctx context.Context, a *quiltv1.Action) (sent int, err error)
}
