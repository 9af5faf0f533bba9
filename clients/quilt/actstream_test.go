package quilt_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store"
)

func sendTo(channel, text string) *quiltv1.Action {
	return &quiltv1.Action{Source: "alpha", Server: "main", Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: channel, Text: text}
}

// TestActStream pipelines sends: every action gets one outcome keyed by
// its ref, the messages land in send order, a bad action is an outcome,
// and a master restart reports the in-flight actions lost and the next
// Send reaches the new master.
func TestActStream(t *testing.T) {
	c := querytest.Start(t, querytest.Options{Sources: []querytest.Source{{Name: "alpha"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := quilt.Dial(ctx, quilt.Options{ConfigDir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	as := cl.ActStream(ctx)
	defer as.Close()

	const n = 500
	for i := 0; i < n; i++ {
		if err := as.Send(uint64(i), sendTo("#test", fmt.Sprintf("p%03d", i)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := as.Send(9999, &quiltv1.Action{Source: "nope", Server: "main", Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#test", Text: "x"}, 0); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for len(seen) < n+1 {
		select {
		case o := <-as.Outcomes():
			if seen[o.Ref] {
				t.Fatalf("two outcomes for ref %d", o.Ref)
			}
			seen[o.Ref] = true
			if o.Ref == 9999 {
				if status.Code(o.Err) != codes.NotFound || o.MayHaveRun {
					t.Fatalf("unknown source: outcome %v, want NOT_FOUND", o.Err)
				}
				continue
			}
			if o.Err != nil || !o.Result.GetOk() {
				t.Fatalf("ref %d: %v %v", o.Ref, o.Result, o.Err)
			}
		case <-ctx.Done():
			t.Fatalf("%d outcomes of %d", len(seen), n+1)
		}
	}
	f := &quiltv1.EventFilter{Sources: []string{"alpha"}, Channel: "#test", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE}, Text: "p"}
	c.WaitEvents(20*time.Second, f, n)
	res, err := c.Store.QueryEvents(ctx, store.EventQuery{Filter: f, Limit: store.MaxLimit, OldestFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Events) != n {
		t.Fatalf("%d messages stored, want %d", len(res.Events), n)
	}
	for i, e := range res.Events {
		if want := fmt.Sprintf("p%03d", i); e.Text != want {
			t.Fatalf("message %d = %q, want %q (order lost)", i, e.Text, want)
		}
	}

	// A restart with actions in flight: each gets exactly one outcome,
	// a result or ErrActLost; afterwards Send works on a new stream.
	for i := 0; i < 200; i++ {
		if i == 100 {
			c.RestartMaster()
		}
		for {
			err := as.Send(uint64(10000+i), sendTo("#test", fmt.Sprintf("r%03d", i)), 0)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	lost, got := 0, map[uint64]bool{}
	for len(got) < 200 {
		select {
		case o := <-as.Outcomes():
			if got[o.Ref] {
				t.Fatalf("two outcomes for ref %d", o.Ref)
			}
			got[o.Ref] = true
			if errors.Is(o.Err, quilt.ErrActLost) || status.Code(o.Err) == codes.Unavailable {
				lost++
			} else if o.Err != nil || !o.Result.GetOk() {
				t.Fatalf("ref %d: %v %v", o.Ref, o.Result, o.Err)
			}
		case <-ctx.Done():
			t.Fatalf("%d outcomes of 200 after the restart", len(got))
		}
	}
	if as.Streams() < 2 {
		t.Fatalf("%d streams opened: the restart did not break the stream", as.Streams())
	}
	c.WaitAttached(10*time.Second, "alpha")
	if err := as.Send(20000, sendTo("#test", "after"), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case o := <-as.Outcomes():
		if o.Ref != 20000 || !o.Result.GetOk() {
			t.Fatalf("after the restart: %+v", o)
		}
	case <-ctx.Done():
		t.Fatal("no outcome after the restart")
	}
	t.Logf("%d of 200 actions lost or refused around the restart", lost)
}
