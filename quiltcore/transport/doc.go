// Package transport is quilt's networking layer (seed 001): the only code in
// quilt that opens sockets, apart from gRPC and HTTP clients.
//
// It is deliberately small. Protocol logic lives in I/O-free sessions; a
// source manager's runtime binds a session to a [Conn] with a [Handler]:
//
//	type loop struct{ lines transport.LineSplitter; sess *irc.Session }
//
//	func (l *loop) Input(c transport.Conn, data []byte) {
//		l.lines.Feed(data)
//		for {
//			line, truncated, ok := l.lines.Next()
//			if !ok {
//				break
//			}
//			out := l.sess.Step(line, truncated) // pure
//			if err := c.Write(out); err != nil { ... }
//		}
//	}
//	func (l *loop) Closed(c transport.Conn, err error) { ... reconnect ... }
//
//	conn, err := transport.Dial(ctx, []string{"irc.example.net:6697"},
//		transport.DialOptions{TLS: &tls.Config{}, Handler: l, MaxDelay: time.Minute, Backoff: 2})
//
// There are two implementations of [Conn] and [Dialer]:
//
//   - sockets: [Dial], [DialAsync], [SocketDialer] and [Listen] (TCP, TLS);
//   - the fixture, package transport/fixture: an in-memory peer a test
//     scripts line by line (Expect, Send, Drop) and a Dialer that hands out
//     fresh peers and can be told to fail.
//
// Both are built on [NewConn], which turns any io.ReadWriteCloser into a Conn
// with the same goroutine and queueing rules, and are held to the same
// behaviour by one contract test suite (contract_test.go).
//
// # Goroutines
//
// A Conn owns two goroutines: a reader, which reads into one reusable buffer
// and calls the handler (Input in order, then Closed exactly once), and a
// writer, which drains the write queue in batches. No other goroutine touches
// the network. Write only appends to the queue, so it never blocks.
//
// Libraries that want a net.Conn (XMPP, IMAP, STARTTLS via crypto/tls) use
// [Stream], a blocking view over the same Conn.
package transport
