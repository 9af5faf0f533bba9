package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quilt/quilt/clients/quilt"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/testenv"
	"github.com/quilt/quilt/sourcemanagers/irc"
)

// rawIRC is a bare IRC client with the receive time of each line, so the
// latency measured is from the sender's write to the receiver's read.
type rawIRC struct {
	conn  net.Conn
	w     *bufio.Writer
	lines chan timedLine
}

type timedLine struct {
	at   time.Time
	line string
}

func dialIRC(t *testing.T, addr, nick string) *rawIRC {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawIRC{conn: conn, w: bufio.NewWriter(conn), lines: make(chan timedLine, 100000)}
	t.Cleanup(func() { conn.Close() })
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			l := sc.Text()
			if strings.HasPrefix(l, "PING ") {
				fmt.Fprintf(conn, "PONG %s\r\n", l[5:])
				continue
			}
			c.lines <- timedLine{time.Now(), l}
		}
		close(c.lines)
	}()
	c.send("NICK " + nick)
	c.send("USER " + nick + " 0 * :" + nick)
	c.wait(t, " 001 ")
	return c
}

func (c *rawIRC) send(line string) {
	c.w.WriteString(line + "\r\n")
	c.w.Flush()
}

func (c *rawIRC) wait(t *testing.T, sub string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("connection closed waiting for %q", sub)
			}
			if strings.Contains(l.line, sub) {
				return
			}
		case <-timeout:
			t.Fatalf("no %q within 10s", sub)
		}
	}
}

// next returns the next relayed message body in #b.
func (c *rawIRC) next(d time.Duration) (timedLine, bool) {
	timeout := time.After(d)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return l, false
			}
			if i := strings.Index(l.line, " PRIVMSG #b :"); i >= 0 {
				return timedLine{l.at, l.line[i+len(" PRIVMSG #b :"):]}, true
			}
		case <-timeout:
			return timedLine{}, false
		}
	}
}

// TestRelayBench relays #a to #b on a real ngircd (MaxPenaltyTime 0, the
// relay's throttle off) through the whole stack: IRC driver, source
// manager runtime, query master with the SQLite store, client library.
// Run with QUILT_BENCH_RELAY=1 (make bench-relay).
func TestRelayBench(t *testing.T) {
	if os.Getenv("QUILT_BENCH_RELAY") == "" {
		t.Skip("set QUILT_BENCH_RELAY=1 (make bench-relay) to run the relay benchmark")
	}
	addr := testenv.NGIRCd(t, testenv.NGIRCdOptions{Unthrottled: true})
	host, port, _ := net.SplitHostPort(addr)
	probe := dialIRC(t, addr, "probe") // the server registers plain clients
	probe.send("QUIT")
	c := querytest.Start(t, querytest.Options{})
	c.AddSourceFile("irc", fmt.Sprintf("protocol = irc\n\n[server bench]\nhost = %s\nport = %s\ntls = false\nnick = quiltbot\nchannels = #a, #b\nthrottle = 0\n", host, port), irc.Driver{})
	c.WaitAttached(20*time.Second, "irc")

	sender := dialIRC(t, addr, "sender")
	sender.send("JOIN #a")
	sender.wait(t, "JOIN")
	recv := dialIRC(t, addr, "recv")
	recv.send("JOIN #b")
	recv.wait(t, "JOIN")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cl, err := quilt.Dial(ctx, quilt.Options{ConfigDir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r := &Relay{Client: cl, From: Endpoint{"irc", "bench", "#a"}, To: Endpoint{"irc", "bench", "#b"}, Format: "{text}"}
	go r.Run(ctx)
	for c.Master().Subscribers() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	// Warm up: one message end to end.
	sender.send("PRIVMSG #a :warmup")
	if l, ok := recv.next(10 * time.Second); !ok || l.line != "warmup" {
		t.Fatalf("warm-up message not relayed: %q", l.line)
	}

	// Blast: 5000 messages as fast as the sender can write them; all must
	// arrive, in order, once. QUILT_BENCH_RELAY_BLAST changes the count and
	// QUILT_BENCH_RELAY_CPUPROFILE=FILE profiles the blast alone.
	blast := 5000
	if v := os.Getenv("QUILT_BENCH_RELAY_BLAST"); v != "" {
		if blast, err = strconv.Atoi(v); err != nil || blast <= 0 {
			t.Fatalf("QUILT_BENCH_RELAY_BLAST=%q: want a count of messages", v)
		}
	}
	if f := os.Getenv("QUILT_BENCH_RELAY_CPUPROFILE"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			t.Fatalf("QUILT_BENCH_RELAY_CPUPROFILE: %v", err)
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			t.Fatalf("QUILT_BENCH_RELAY_CPUPROFILE: %v", err)
		}
	}
	start := time.Now()
	go func() {
		for i := 0; i < blast; i++ {
			sender.w.WriteString("PRIVMSG #a :b" + strconv.Itoa(i) + "\r\n")
		}
		sender.w.Flush()
	}()
	for i := 0; i < blast; i++ {
		l, ok := recv.next(30 * time.Second)
		if !ok {
			t.Fatalf("blast: %d of %d arrived", i, blast)
		}
		if want := "b" + strconv.Itoa(i); l.line != want {
			t.Fatalf("blast: message %d = %q, want %q", i, l.line, want)
		}
	}
	el := time.Since(start)
	pprof.StopCPUProfile()
	if l, ok := recv.next(500 * time.Millisecond); ok {
		t.Fatalf("blast: extra message %q", l.line)
	}
	fmt.Printf("bench-relay: blast %d messages whole, in order, no duplicates in %s = %.0f msgs/s sustained\n",
		blast, el.Round(time.Millisecond), float64(blast)/el.Seconds())

	// Latency at 50 msgs/s, from the sender's write to the receiver's read.
	const paced = 500
	// Written by the sender, read once the line came back through ngircd:
	// no Go synchronisation orders the two.
	sent := make([]atomic.Int64, paced)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < paced; i++ {
			<-tick.C
			sent[i].Store(time.Now().UnixNano())
			sender.send("PRIVMSG #a :p" + strconv.Itoa(i))
		}
	}()
	var lat []time.Duration
	for i := 0; i < paced; i++ {
		l, ok := recv.next(10 * time.Second)
		if !ok || l.line != "p"+strconv.Itoa(i) {
			t.Fatalf("paced: message %d = %q (ok %v)", i, l.line, ok)
		}
		lat = append(lat, l.at.Sub(time.Unix(0, sent[i].Load())))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("bench-relay: 50 msgs/s for %d messages: latency p50=%s p99=%s max=%s\n", paced,
		lat[paced/2].Round(10*time.Microsecond), lat[paced*99/100].Round(10*time.Microsecond), lat[paced-1].Round(10*time.Microsecond))
}
