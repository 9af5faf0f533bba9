package bzflag_test

import (
	"net"
	"sync"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/sourcemanagers/bzflag"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// gameClient is a second real BZFlag client for end-to-end tests: the
// package's own Session driven over a TCP connection by a small loop, so
// the server in between is the real bzfs.
type gameClient struct {
	t    testing.TB
	conn net.Conn

	mu     sync.Mutex
	s      *bzflag.Session
	events []*quiltv1.Event
	closed error
	notify chan struct{}
	done   chan struct{}
}

func dialGame(t testing.TB, addr, callsign string) *gameClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial bzfs %s: %v", addr, err)
	}
	team, _ := bzflag.TeamCode("observer")
	c := &gameClient{t: t, conn: conn, notify: make(chan struct{}, 1), done: make(chan struct{}),
		s: bzflag.NewSession(runtime.SessionConfig{Source: "client"}, bzflag.Settings{Callsign: callsign, Team: team, Motto: "test client"})}
	c.mu.Lock()
	c.apply(c.s.Start(time.Now()))
	c.mu.Unlock()
	go c.read()
	t.Cleanup(c.Close)
	c.Wait(10*time.Second, func(e *quiltv1.Event) bool { return e.Kind == quiltv1.EventKind_EVENT_KIND_CONNECTED })
	return c
}

// apply writes what the session asks for; called with mu held.
func (c *gameClient) apply(o runtime.Output) {
	for _, b := range o.Send {
		if _, err := c.conn.Write(b); err != nil && c.closed == nil {
			c.closed = err
		}
	}
	c.events = append(c.events, o.Events...)
	if o.Close != nil && c.closed == nil {
		c.closed = o.Close
		c.conn.Close()
	}
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *gameClient) read() {
	defer close(c.done)
	buf := make([]byte, 4096)
	for {
		n, err := c.conn.Read(buf)
		c.mu.Lock()
		if n > 0 {
			c.apply(c.s.Input(time.Now(), buf[:n]))
		}
		if err != nil {
			if c.closed == nil {
				c.closed = err
			}
			c.mu.Unlock()
			select {
			case c.notify <- struct{}{}:
			default:
			}
			return
		}
		c.mu.Unlock()
	}
}

// Say sends chat to a target the way the bot's actions name them.
func (c *gameClient) Say(target, text string) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	o, err := c.s.Do(time.Now(), &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: target, Text: text})
	if err != nil {
		c.t.Fatalf("client say to %q: %v", target, err)
	}
	c.apply(o)
}

// Wait returns the first event (seen so far or arriving in d) that ok
// accepts, removing it and everything before it.
func (c *gameClient) Wait(d time.Duration, ok func(*quiltv1.Event) bool) *quiltv1.Event {
	c.t.Helper()
	deadline := time.After(d)
	for {
		c.mu.Lock()
		for i, e := range c.events {
			if ok(e) {
				c.events = c.events[i+1:]
				c.mu.Unlock()
				return e
			}
		}
		closed := c.closed
		c.mu.Unlock()
		if closed != nil {
			c.t.Fatalf("client connection ended while waiting: %v", closed)
		}
		select {
		case <-c.notify:
		case <-deadline:
			c.t.Fatalf("client: no matching event in %s", d)
		}
	}
}

// Close leaves the game (MsgExit) and closes the connection.
func (c *gameClient) Close() {
	c.mu.Lock()
	if c.closed == nil {
		o, _ := c.s.Do(time.Now(), &quiltv1.Action{Kind: quiltv1.ActionKind_ACTION_KIND_RECONNECT})
		c.apply(o)
	}
	c.mu.Unlock()
	c.conn.Close()
	<-c.done
}
