package querymaster_test

import (
	"context"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
)

func liveReply(id string, done bool) *quiltv1.SourceMessage {
	return &quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_LiveReply{LiveReply: &quiltv1.LiveReply{QueryId: id,
		Servers: []*quiltv1.ServerRow{{Source: "x"}}, Done: done}}}
}

type liveResult struct {
	parts    map[string]int
	problems map[string]string
	order    map[string][]string // per source: "part" or the problem reason, in order
}

func collect(ch <-chan SourceReplyAlias) liveResult {
	res := liveResult{parts: map[string]int{}, problems: map[string]string{}, order: map[string][]string{}}
	for r := range ch {
		if r.Problem != nil {
			res.problems[r.Source] = r.Problem.Reason
			res.order[r.Source] = append(res.order[r.Source], r.Problem.Reason)
			continue
		}
		res.parts[r.Source]++
		res.order[r.Source] = append(res.order[r.Source], "part")
	}
	return res
}

type SourceReplyAlias = querymaster.SourceReply

// A source that detaches mid-answer ends with "detached" after the parts
// it sent; the query does not wait for the deadline; nothing stays
// registered on the streams.
func TestLiveQueryDetachMidAnswer(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	a := e.attach("a", "s")
	b := e.attach("b", "s")
	go func() {
		q := b.next(5 * time.Second).GetLiveQuery()
		b.send(liveReply(q.GetId(), true))
	}()
	go func() {
		q := a.next(5 * time.Second).GetLiveQuery()
		a.send(liveReply(q.GetId(), false))
		a.send(liveReply(q.GetId(), false))
		time.Sleep(50 * time.Millisecond) // the parts are read before the stream ends
		a.cancel()
	}()
	start := time.Now()
	res := collect(e.m.Router().LiveQuery(context.Background(), []string{"a", "b"},
		&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS}, 5*time.Second))
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %s: waited for the deadline instead of seeing the detach", el)
	}
	if got := res.order["a"]; len(got) != 3 || got[0] != "part" || got[1] != "part" || got[2] != "detached" {
		t.Errorf("a: %v, want part part detached", got)
	}
	if res.parts["b"] != 1 || res.problems["b"] != "" {
		t.Errorf("b: %d parts, problem %q; want 1 part", res.parts["b"], res.problems["b"])
	}
	if n := e.m.Router().LiveWaiting("b"); n != 0 {
		t.Errorf("%d live queries still registered on b", n)
	}
}

// A consumer that stops reading holds a session's reader up to the
// deadline at most: the same source answers the next query. A timed-out
// query leaves nothing registered on the stream.
func TestLiveQueryStalledConsumer(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	a := e.attach("a", "s")
	q1 := &quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS}
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	stalled := e.m.Router().LiveQuery(ctx1, []string{"a"}, q1, 200*time.Millisecond)
	id1 := a.next(5 * time.Second).GetLiveQuery().GetId()
	for i := 0; i < 100; i++ { // far more than the channel holds
		a.send(liveReply(id1, false))
	}
	go func() {
		q := a.next(5 * time.Second).GetLiveQuery()
		a.send(liveReply(q.GetId(), true))
	}()
	start := time.Now()
	res := collect(e.m.Router().LiveQuery(context.Background(), []string{"a"}, q1, 3*time.Second))
	if res.parts["a"] != 1 || len(res.problems) != 0 {
		t.Errorf("second query: %d parts, problems %v; want 1 part", res.parts["a"], res.problems)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("second query took %s: the stalled consumer held the reader past its deadline", el)
	}
	// The stalled query ends once its consumer's ctx does, channel closed.
	cancel1()
	deadline := time.After(2 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-stalled:
		case <-deadline:
			t.Fatal("stalled query's channel not closed after its ctx ended")
		}
	}
	eventually(t, "no live query left on a", func() bool { return e.m.Router().LiveWaiting("a") == 0 })
}

// Every source named ends exactly once, whatever order things happen in:
// answers, unknown names (twice), silence.
func TestLiveQueryEachSourceOnce(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	a := e.attach("a", "s")
	e.attach("mute", "s")
	go func() {
		q := a.next(5 * time.Second).GetLiveQuery()
		a.send(liveReply(q.GetId(), true))
		a.send(liveReply(q.GetId(), true)) // a second final reply is dropped
	}()
	res := collect(e.m.Router().LiveQuery(context.Background(), []string{"a", "ghost", "mute", "ghost"},
		&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS}, 300*time.Millisecond))
	want := map[string]string{"a": "part", "ghost": "detached", "mute": "timeout"}
	for src, w := range want {
		if got := res.order[src]; len(got) != 1 || got[0] != w {
			t.Errorf("%s: %v, want [%s]", src, got, w)
		}
	}
	if len(res.order) != len(want) {
		t.Errorf("sources answered: %v", res.order)
	}
	for _, n := range []string{"a", "mute"} {
		if w := e.m.Router().LiveWaiting(n); w != 0 {
			t.Errorf("%d live queries still registered on %s", w, n)
		}
	}
}
