package querymaster_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
)

// subscribe opens a Subscribe stream and waits until the hub has it, so no
// event published afterwards can be missed.
func (e *env) subscribe(ctx context.Context, req *quiltv1.SubscribeRequest) quiltv1.QueryMaster_SubscribeClient {
	e.t.Helper()
	before := e.m.Subscribers()
	s, err := e.qm.Subscribe(ctx, req)
	if err != nil {
		e.t.Fatal(err)
	}
	eventually(e.t, "subscriber registered", func() bool { return e.m.Subscribers() > before })
	return s
}

func TestSubscribeFilters(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := e.attach("a", "s1", "s2")
	b := e.attach("b", "s1")

	cases := []struct {
		name   string
		filter *quiltv1.EventFilter
		want   []string // texts
	}{
		{"all", nil, []string{"1", "2", "3", "4", "5", "6"}},
		{"source", &quiltv1.EventFilter{Sources: []string{"b"}}, []string{"5"}},
		{"server", &quiltv1.EventFilter{Server: "s2"}, []string{"4"}},
		{"channel", &quiltv1.EventFilter{Channel: "#OPS"}, []string{"1", "2", "5", "6"}},
		{"user glob", &quiltv1.EventFilter{User: "ali*"}, []string{"1", "3"}},
		{"user other name", &quiltv1.EventFilter{User: "alice@example.org/*"}, []string{"3"}},
		{"kinds", &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_JOIN}}, []string{"6"}},
		{"text", &quiltv1.EventFilter{Text: "OUTAGE"}, []string{"2"}},
		{"combined", &quiltv1.EventFilter{Channel: "#ops", User: "bob"}, []string{"2"}},
	}
	subs := make([]quiltv1.QueryMaster_SubscribeClient, len(cases))
	for i, c := range cases {
		subs[i] = e.subscribe(ctx, &quiltv1.SubscribeRequest{Filter: c.filter, RequestedBy: c.name})
	}
	ev := func(sm *fakeSM, server, channel, user, text string) *quiltv1.Event {
		return sm.ev(server, channel, user, text)
	}
	e1 := ev(a, "s1", "#ops", "alice", "1")
	e2 := ev(a, "s1", "#ops", "bob", "2 the outage")
	e3 := ev(a, "s1", "#dev", "x", "3")
	e3.User.Persistent = "alice@example.org/laptop"
	e3.User.Display = "Alicia"
	e4 := ev(a, "s2", "#dev", "carol", "4")
	a.waitAck(a.sendBatch(e1, e2, e3, e4))
	e5 := ev(b, "s1", "#ops", "dave", "5")
	b.waitAck(b.sendBatch(e5))
	e6 := ev(a, "s1", "", "erin", "6")
	e6.Kind = quiltv1.EventKind_EVENT_KIND_JOIN
	e6.Channels = []string{"#ops"}
	a.waitAck(a.sendBatch(e6))

	for i, c := range cases {
		var got []string
		for range c.want {
			e, err := subs[i].Recv()
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			got = append(got, e.Text[:1])
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
	// Nothing more arrives for the narrow ones: a sentinel event matching
	// every filter must be the next thing each sees.
	sent := ev(a, "s1", "#ops", "alice", "9 bob outage")
	sent.User.Display = "bob"
	sent.Kind = quiltv1.EventKind_EVENT_KIND_MESSAGE
	a.waitAck(a.sendBatch(sent))
	for i, c := range cases {
		if c.name == "source" || c.name == "server" || c.name == "kinds" || c.name == "user other name" {
			continue
		}
		e, err := subs[i].Recv()
		if err != nil || e.Text[:1] != "9" {
			t.Errorf("%s: extra event %v, %v", c.name, e.GetText(), err)
		}
	}
}

func TestSubscribeBadFilter(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	s, err := e.qm.Subscribe(context.Background(), &quiltv1.SubscribeRequest{Filter: &quiltv1.EventFilter{TextRegex: "("}})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "text_regex")
}

func TestSlowSubscriberCutOff(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewDiscard(), SubscriberBuffer: 8})
	// A subscriber never cut off would otherwise wait here forever.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sm := e.attach("a", "s")
	slow := e.subscribe(ctx, &quiltv1.SubscribeRequest{RequestedBy: "slow"})
	// Far more than the buffer plus what gRPC flow control holds in flight.
	var last uint64
	for range 200 {
		batch := make([]*quiltv1.Event, 100)
		for j := range batch {
			batch[j] = sm.ev("s", "#a", "u", "padding padding padding padding padding padding")
		}
		last = sm.sendBatch(batch...)
	}
	// The pipeline did not wait for the subscriber.
	if stored, _ := sm.waitAck(last); stored != 20000 {
		t.Fatalf("acked %d events", stored)
	}
	var err error
	n := 0
	for err == nil {
		_, err = slow.Recv()
		n++
	}
	// Cut off once it owes 64 times its queue (8) in missed events, plus
	// what is still queued (the stream drains it meanwhile) and the one
	// that did not fit.
	wantCode(t, err, codes.ResourceExhausted, "subscriber too slow: ")
	var behind int
	if _, serr := fmt.Sscanf(status.Convert(err).Message(), "subscriber too slow: %d events behind", &behind); serr != nil || behind < 513 || behind > 521 {
		t.Fatalf("%q: want 513 to 521 events behind", status.Convert(err).Message())
	}
	if n > 19000 {
		t.Fatalf("received %d events before the cut", n)
	}
}

// A subscriber whose queue overflows gets what it missed from the store,
// in order, on the same stream, then live events again.
func TestSlowSubscriberCatchesUpFromStore(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore(), SubscriberBuffer: 16})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sm := e.attach("a", "s")
	sub := e.subscribe(ctx, &quiltv1.SubscribeRequest{Filter: &quiltv1.EventFilter{Channel: "#a"}, RequestedBy: "slow"})
	// Batches of 100 overflow the queue of 16 whatever the reader does;
	// 1000 stays under the 64×16 missed events that would cut it off.
	const total = 1000
	k := 0
	for b := 0; b < total/100; b++ {
		batch := make([]*quiltv1.Event, 0, 110)
		for j := 0; j < 100; j++ {
			batch = append(batch, sm.ev("s", "#a", "u", fmt.Sprint(k)))
			k++
			if j%10 == 0 {
				batch = append(batch, sm.ev("s", "#b", "u", "other channel"))
			}
		}
		sm.waitAck(sm.sendBatch(batch...))
	}
	for i := 0; i < total; i++ {
		ev, err := sub.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", i, err)
		}
		if ev.Text != fmt.Sprint(i) {
			t.Fatalf("event %d is %q (%s), want %d", i, ev.Text, ev.Channel, i)
		}
	}
	if n := e.m.CaughtUp(); n == 0 || n > total-16 {
		t.Fatalf("%d events sent from the store; want some, and not those that fit the queue", n)
	}
	sm.waitAck(sm.sendBatch(sm.ev("s", "#a", "u", "live")))
	if ev, err := sub.Recv(); err != nil || ev.Text != "live" {
		t.Fatalf("after the catch-up: %v, %v; want the live event", ev.GetText(), err)
	}
}

func TestSubscribeReplaySeam(t *testing.T) {
	for _, size := range []int{100000, 64} {
		t.Run(fmt.Sprint("buffer", size), func(t *testing.T) { testReplaySeam(t, size) })
	}
}

// testReplaySeam: with a small buffer the events held back during the
// replay overflow, and the seam goes through a catch-up as well.
func testReplaySeam(t *testing.T, buffer int) {
	st := qmtest.NewMemStore()
	e := newEnv(t, querymaster.Options{Store: st, SubscriberBuffer: buffer})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sm := e.attach("a", "s")
	const before, during = 3000, 3000
	for i := 0; i < before; i += 100 {
		batch := make([]*quiltv1.Event, 100)
		for j := range batch {
			batch[j] = sm.ev("s", "#a", "u", "old")
		}
		sm.waitAck(sm.sendBatch(batch...))
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < during; i += 10 {
			batch := make([]*quiltv1.Event, 10)
			for j := range batch {
				batch[j] = sm.ev("s", "#a", "u", "new")
			}
			sm.sendBatch(batch...)
		}
	}()
	sub, err := e.qm.Subscribe(ctx, &quiltv1.SubscribeRequest{ReplaySince: timestamppb.New(evTime.Add(-time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for len(seen) < before+during {
		ev, err := sub.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(seen), err)
		}
		seen[ev.Id]++
		if seen[ev.Id] > 1 {
			t.Fatalf("event %s delivered twice", ev.Id)
		}
	}
	<-done
	// Nothing extra trails the seam.
	extra := make(chan *quiltv1.Event, 1)
	go func() {
		if ev, err := sub.Recv(); err == nil {
			extra <- ev
		}
	}()
	select {
	case ev := <-extra:
		t.Fatalf("extra event %s after all were seen", ev.Id)
	case <-time.After(200 * time.Millisecond):
	}
}
