package transport_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/quilt/quilt/quiltcore/transport"
	"github.com/quilt/quilt/quiltcore/transport/fixture"
)

var benchLine = []byte("PRIVMSG #channel :a typical outgoing chat line of some length\r\n")

// BenchmarkSocketWrite measures lines/s from Write through the queue and the
// writer goroutine to a loopback peer that only counts bytes. WriteWait keeps
// the loop at the queue limit rather than spinning on ErrBackpressure.
func BenchmarkSocketWrite(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	total := make(chan int64, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			total <- -1
			return
		}
		n, _ := io.Copy(io.Discard, nc)
		nc.Close()
		total <- n
	}()
	c, err := transport.Dial(context.Background(), []string{ln.Addr().String()}, transport.DialOptions{MaxAttempts: 1})
	if err != nil {
		b.Fatal(err)
	}
	benchWrites(b, c)
	c.Close()
	<-c.Done()
	if n := <-total; n != int64(b.N)*int64(len(benchLine)) {
		b.Fatalf("peer got %d bytes, want %d", n, b.N*len(benchLine))
	}
}

// BenchmarkFixtureWrite is the same through the in-memory fixture.
func BenchmarkFixtureWrite(b *testing.B) {
	c, p := fixture.New(fixture.Options{})
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, p)
		done <- n
	}()
	benchWrites(b, c)
	c.Close()
	<-c.Done()
	if n := <-done; n != int64(b.N)*int64(len(benchLine)) {
		b.Fatalf("peer got %d bytes, want %d", n, b.N*len(benchLine))
	}
}

func benchWrites(b *testing.B, c transport.Conn) {
	ctx := context.Background()
	b.SetBytes(int64(len(benchLine)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		err := c.Write(benchLine)
		if errors.Is(err, transport.ErrBackpressure) {
			err = c.WriteWait(ctx, benchLine)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
}

// BenchmarkSocketReadLines measures lines/s from a loopback peer through the
// reader goroutine and a LineSplitter in the handler.
func BenchmarkSocketReadLines(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	want := b.N
	got := make(chan struct{})
	n := 0
	var lines transport.LineSplitter
	h := transport.HandlerFuncs{OnInput: func(_ transport.Conn, data []byte) {
		lines.Feed(data)
		for _, _, ok := lines.Next(); ok; _, _, ok = lines.Next() {
			n++
			if n == want {
				close(got)
			}
		}
	}}
	c, err := transport.Dial(context.Background(), []string{ln.Addr().String()}, transport.DialOptions{MaxAttempts: 1, Handler: h})
	if err != nil {
		b.Fatal(err)
	}
	nc, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 0, 64<<10)
	for len(chunk)+len(benchLine) <= cap(chunk) {
		chunk = append(chunk, benchLine...)
	}
	per := len(chunk) / len(benchLine)
	b.SetBytes(int64(len(benchLine)))
	b.ResetTimer()
	go func() {
		left := want
		for left > 0 {
			k := min(left, per)
			if _, err := nc.Write(chunk[:k*len(benchLine)]); err != nil {
				return
			}
			left -= k
		}
	}()
	<-got
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
	b.StopTimer()
	nc.Close()
	c.Close()
	<-c.Done()
}
