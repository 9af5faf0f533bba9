package transport_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/quilt/quilt/quiltcore/transport"
	"github.com/quilt/quilt/quiltcore/transport/fixture"
)

func TestStreamDeadlines(t *testing.T) {
	c, p := fixture.New(fixture.Options{WriteQueueLimit: 1024, PeerBuffer: 1024})
	s := transport.Stream(c)
	defer func() { p.Close(); s.Close(); waitDone(t, c) }()

	// A read deadline in the future fires while Read waits, and can be
	// cleared again.
	s.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := s.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read: %v, want deadline exceeded", err)
	}
	s.SetReadDeadline(time.Time{})
	p.Send("ok")
	buf := make([]byte, 10)
	if n, err := s.Read(buf); err != nil || string(buf[:n]) != "ok\r\n" {
		t.Fatalf("Read after clearing the deadline: %q, %v", buf[:n], err)
	}

	// With the peer not reading, Write blocks on backpressure until the
	// write deadline.
	s.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	chunk := bytes.Repeat([]byte("x"), 512)
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = s.Write(chunk)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write on a stalled peer: %v, want deadline exceeded", err)
	}
}

// STARTTLS: a plain connection upgraded to TLS through the Stream view, on
// both ends, over the in-memory fixture (no sockets).
func TestStreamSTARTTLS(t *testing.T) {
	ca := newTestCA(t)
	c, p := fixture.New(fixture.Options{})
	cs := transport.Stream(c)
	defer func() { cs.Close(); waitDone(t, c) }()

	srv := tls.Server(p.NetConn(), &tls.Config{Certificates: []tls.Certificate{ca.server}})
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(srv, buf); err != nil {
			errc <- err
			return
		}
		_, err := srv.Write(append([]byte("got "), buf...))
		errc <- err
	}()
	cli := tls.Client(cs, &tls.Config{RootCAs: ca.pool, ServerName: "localhost"})
	if _, err := cli.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 9)
	if _, err := io.ReadFull(cli, got); err != nil || string(got) != "got hello" {
		t.Fatalf("over TLS: %q, %v", got, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	p.Close()
}
