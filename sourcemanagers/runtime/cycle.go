package runtime

import (
	"context"
	"errors"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/transport"
)

// cycleLoop runs the connection cycle every ConnectionCycle (default 120s)
// or as soon as it is flagged, until ctx ends.
func (m *Manager) cycleLoop(ctx context.Context) {
	for {
		m.reconcile(ctx)
		m.mu.Lock()
		every := m.cfg.ConnectionCycle
		m.mu.Unlock()
		if every <= 0 {
			every = 120 * time.Second
		}
		t := m.clock.NewTimer(every)
		select {
		case <-t.C():
		case <-m.flag:
		case <-ctx.Done():
			t.Stop()
			return
		}
		t.Stop()
	}
}

// reconcile is one connection cycle (seed 000): per server, disconnect a
// session that should not be up (disabled, removed, reconnect asked),
// forget servers that are gone, and connect servers that should be up
// and have no session. Dead sessions clear their maps and leave the
// server themselves (conn.finish), so the server is free here.
func (m *Manager) reconcile(ctx context.Context) {
	now := m.clock.Now()
	for _, s := range m.Servers() {
		s.mu.Lock()
		desired := s.enabledLocked()
		changed := false
		switch {
		case s.conn != nil && (!desired || s.reconnect):
			s.reconnect = false
			s.log.Info("disconnecting", "enabled", desired)
			s.conn.stop(errStopped)
		case s.conn == nil && desired && ctx.Err() == nil:
			s.reconnect = false
			c := newConn(s, m.runCtxOr(ctx))
			s.conn = c
			delay := backoff(s.cfg, s.failures)
			changed = s.setStateLocked(quiltv1.ServerState_SERVER_STATE_CONNECTING, s.lastErr, now)
			m.wg.Add(1)
			go m.connect(c, delay)
		case s.conn == nil:
			s.reconnect = false
			if s.removed {
				s.mu.Unlock()
				m.drop(s)
				continue
			}
			changed = s.setStateLocked(quiltv1.ServerState_SERVER_STATE_DISABLED, "", now)
		}
		s.mu.Unlock()
		if changed {
			m.statusChanged(s)
		}
	}
}

func (m *Manager) drop(s *Server) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.servers[s.name] == s {
		delete(m.servers, s.name)
		for i, n := range m.order {
			if n == s.name {
				m.order = append(m.order[:i:i], m.order[i+1:]...)
				break
			}
		}
	}
}

// connect waits out the backoff, opens the session and runs it to its end.
func (m *Manager) connect(c *conn, delay time.Duration) {
	defer m.wg.Done()
	s := c.srv
	if delay > 0 {
		s.log.Info("waiting before connecting", "delay", delay)
		if !sleep(m.clock, delay, c.ctx.Done()) {
			m.connectFailed(c, context.Cause(c.ctx))
			return
		}
	}
	m.awaitWelcome(c.ctx, s)
	s.mu.Lock()
	sc := s.cfg
	s.mu.Unlock()
	scfg := SessionConfig{
		Source:    m.name,
		Server:    sc,
		Logger:    s.log.With("session", c.id),
		Cursors:   m.cursorsFor(s.name),
		SessionID: c.id,
	}
	switch drv := m.driver.(type) {
	case StreamDriver:
		c.in = make(chan inMsg, 16)
		c.do = make(chan doReq)
		addrs := drv.Addresses(sc)
		s.mu.Lock()
		// Under mu: Act finds the conn (published by reconcile) and its
		// queue under mu.
		c.queue = newCommandQueue(m.clock, sc.Throttle, sc.ThrottleBurst, c.execStream)
		if len(addrs) > 0 {
			s.address = addrs[0]
		}
		s.mu.Unlock()
		sess := drv.NewSession(scfg)
		tc, err := m.dialer.Dial(c.ctx, addrs, transport.DialOptions{
			MinDelay:       sc.ReconnectMin,
			MaxDelay:       sc.ReconnectMax,
			Backoff:        sc.ReconnectFactor,
			MaxAttempts:    sc.ReconnectAttempts,
			ConnectTimeout: sc.ConnectTimeout,
			TLS:            drv.TLSConfig(sc),
			Handler:        c,
			Sleep: func(ctx context.Context, d time.Duration) error {
				if !sleep(m.clock, d, ctx.Done()) {
					return ctx.Err()
				}
				return nil
			},
		})
		if err != nil {
			if ctx := c.ctx; ctx.Err() != nil {
				err = context.Cause(ctx)
			}
			m.connectFailed(c, err)
			return
		}
		s.mu.Lock()
		s.address = tc.RemoteAddr()
		s.mu.Unlock()
		s.log.Info("connected", "address", tc.RemoteAddr(), "session", c.id)
		c.runStream(sess, tc)
	case ClientDriver:
		cl, err := drv.NewClient(scfg, ClientDeps{HTTP: m.opts.HTTP, Dialer: m.dialer, Clock: m.clock})
		if err != nil {
			m.connectFailed(c, err)
			return
		}
		c.client = cl
		s.mu.Lock()
		c.queue = newCommandQueue(m.clock, sc.Throttle, sc.ThrottleBurst, c.execClient)
		s.mu.Unlock()
		c.runClient()
	}
}

// connectFailed ends a conn that never got a session.
func (m *Manager) connectFailed(c *conn, err error) {
	s := c.srv
	c.cancel(err)
	close(c.done)
	now := m.clock.Now()
	s.mu.Lock()
	if s.conn == c {
		s.conn = nil
	}
	stopped := errors.Is(err, errStopped) || errors.Is(err, context.Canceled)
	st := quiltv1.ServerState_SERVER_STATE_FAILED
	text := ""
	if err != nil {
		text = err.Error()
	}
	if stopped {
		st = quiltv1.ServerState_SERVER_STATE_DISCONNECTED
		text = ""
	} else {
		s.failures++
	}
	if !s.enabledLocked() {
		st = quiltv1.ServerState_SERVER_STATE_DISABLED
	}
	s.setStateLocked(st, text, now)
	s.mu.Unlock()
	if !stopped {
		s.log.Warn("connect failed; retrying at the next connection cycle", "error", err)
	}
	m.statusChanged(s)
	if stopped {
		m.flagCycle()
	}
}
