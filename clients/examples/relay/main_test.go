package main

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/sourcemanagers/testdriver"
)

// TestRelayAcrossRestart relays #a of alpha to #c of beta while the query
// master restarts: every message arrives once, in order, and the bot's own
// messages in #a are not relayed; one message at a time, and with a window
// of messages in flight, where the restart leaves several in doubt.
func TestRelayAcrossRestart(t *testing.T) {
	for _, w := range []int{1, 256} {
		t.Run(fmt.Sprintf("window=%d", w), func(t *testing.T) { testRelayAcrossRestart(t, w) })
	}
}

func testRelayAcrossRestart(t *testing.T, window int) {
	c := querytest.Start(t, querytest.Options{Sources: []querytest.Source{
		{Name: "alpha", Servers: map[string][]string{"net1": {"#a"}}},
	}})
	// A throttled destination keeps a window's worth of messages queued
	// in its source manager, so the restart leaves many in doubt: some
	// sent with their results lost, some never forwarded.
	c.AddSourceFile("beta", "protocol = test\n\n[server net2]\nusers = 3\nchannels = #c\nthrottle = 10ms\nthrottle_burst = 1\n", testdriver.Driver{})
	c.WaitAttached(10*time.Second, "alpha", "beta")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := quilt.Dial(ctx, quilt.Options{ConfigDir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r := &Relay{Client: cl, From: Endpoint{"alpha", "net1", "#a"}, To: Endpoint{"beta", "net2", "#c"}, Format: "<{nick}> {text}", Window: window,
		Log: slog.New(slog.NewTextHandler(tlog{t}, nil))}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for c.Master().Subscribers() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	const n = 200
	for i := 0; i < n; i++ {
		if i == n/2 {
			c.RestartMaster()
			c.WaitAttached(10*time.Second, "alpha", "beta")
		}
		c.Raw("alpha", "net1", fmt.Sprintf("msg user%d #a line %03d", 1+i%3, i))
		if i == 10 {
			// The bot itself speaking in #a must not be relayed.
			if res, err := cl.Send(ctx, "alpha", "net1", "#a", "bot talk", quiltv1.SendStyle_SEND_STYLE_MESSAGE); err != nil || !res.Ok {
				t.Fatalf("send: %v %v", res, err)
			}
		}
	}
	f := &quiltv1.EventFilter{Sources: []string{"beta"}, Channel: "#c", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE}}
	c.WaitEvents(30*time.Second, f, n)
	time.Sleep(300 * time.Millisecond) // a duplicate would arrive now
	res, err := c.Store.QueryEvents(ctx, storeQuery(f))
	if err != nil {
		t.Fatal(err)
	}
	page := res.Events
	if len(page) != n {
		for i, e := range page {
			t.Logf("%d %s %s", i, e.Id, e.Text)
		}
		t.Fatalf("%d messages in #c, want %d", len(page), n)
	}
	for i, e := range page {
		want := fmt.Sprintf("<user%d> line %03d", 1+i%3, i)
		if e.Text != want {
			t.Fatalf("message %d in #c = %q, want %q", i, e.Text, want)
		}
	}
	cancel()
	<-done
}

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
