package testenv

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// IRCClient is a minimal human-like IRC client for tests: it registers,
// answers PINGs, and lets the test send lines and wait for lines.
type IRCClient struct {
	Nick string

	t     testing.TB
	conn  net.Conn
	mu    sync.Mutex
	lines []string
	cond  *sync.Cond
	done  bool
}

// DialIRC connects to addr as nick and waits for the welcome (001).
func DialIRC(t testing.TB, addr, nick string) *IRCClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("irc client %s: %v", nick, err)
	}
	c := &IRCClient{Nick: nick, t: t, conn: conn}
	c.cond = sync.NewCond(&c.mu)
	go c.read()
	t.Cleanup(c.Close)
	c.Send("NICK " + nick)
	c.Send("USER " + nick + " 0 * :test client " + nick)
	c.Wait(15*time.Second, func(l string) bool { return strings.Contains(l, " 001 ") })
	return c
}

func (c *IRCClient) read() {
	r := bufio.NewReader(c.conn)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			c.mu.Lock()
			c.done = true
			c.cond.Broadcast()
			c.mu.Unlock()
			return
		}
		l = strings.TrimRight(l, "\r\n")
		if strings.HasPrefix(l, "PING ") {
			_, _ = fmt.Fprintf(c.conn, "PONG %s\r\n", l[5:])
			continue
		}
		c.mu.Lock()
		c.lines = append(c.lines, l)
		c.cond.Broadcast()
		c.mu.Unlock()
	}
}

// Send writes one line.
func (c *IRCClient) Send(line string) {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.conn, "%s\r\n", line); err != nil {
		c.t.Fatalf("irc client %s: send %q: %v", c.Nick, line, err)
	}
}

// Wait returns the first unread line matching match, failing the test after
// d. Lines read before the match are consumed.
func (c *IRCClient) Wait(d time.Duration, match func(string) bool) string {
	c.t.Helper()
	deadline := time.Now().Add(d)
	timer := time.AfterFunc(d, func() { c.mu.Lock(); c.cond.Broadcast(); c.mu.Unlock() })
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for i, l := range c.lines {
			if match(l) {
				c.lines = c.lines[i+1:]
				return l
			}
		}
		c.lines = c.lines[:0]
		if c.done || time.Now().After(deadline) {
			c.t.Fatalf("irc client %s: no matching line within %s (closed=%v)", c.Nick, d, c.done)
		}
		c.cond.Wait()
	}
}

// Join joins channel and waits for the end of its NAMES list.
func (c *IRCClient) Join(channel string) {
	c.t.Helper()
	c.Send("JOIN " + channel)
	c.Wait(15*time.Second, func(l string) bool { return strings.Contains(l, " 366 ") && strings.Contains(l, channel) })
}

// Close quits and closes the connection.
func (c *IRCClient) Close() {
	_, _ = fmt.Fprintf(c.conn, "QUIT :bye\r\n")
	_ = c.conn.Close()
}
