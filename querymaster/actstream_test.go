package querymaster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
)

func streamReq(ref uint64, source, server, text string) *quiltv1.ActStreamRequest {
	return &quiltv1.ActStreamRequest{Ref: ref, Action: &quiltv1.Action{Source: source, Server: server,
		Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#a", Text: text}}
}

// TestActStreamPipelines sends many actions before any result: they reach
// the source manager in stream order, results come back keyed by ref in
// whatever order the SM answers, and per-action failures are responses
// that leave the stream open.
func TestActStreamPipelines(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	sm := e.attach("irc1", "libera")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := e.qm.ActStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := 0; i < n; i++ {
		if err := stream.Send(streamReq(uint64(1000+i), "irc1", "libera", fmt.Sprintf("m%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	// All n arrive at the SM, in order, with none answered yet: the master
	// did not wait for earlier results.
	ids := make([]string, n)
	for i := 0; i < n; i++ {
		a := sm.next(5 * time.Second).GetAction()
		if a == nil || a.Text != fmt.Sprintf("m%d", i) || a.Id == "" {
			t.Fatalf("SM message %d: %v, want action m%d", i, a, i)
		}
		ids[i] = a.Id
	}
	// Answer in reverse order; odd ones fail at the SM.
	for i := n - 1; i >= 0; i-- {
		sm.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_ActionResult{ActionResult: &quiltv1.ActionResult{
			ActionId: ids[i], Ok: i%2 == 0, Sent: int32(i)}}})
	}
	got := map[uint64]*quiltv1.ActStreamResponse{}
	for len(got) < n {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("after %d responses: %v", len(got), err)
		}
		if got[r.Ref] != nil {
			t.Fatalf("two responses for ref %d", r.Ref)
		}
		got[r.Ref] = r
	}
	for i := 0; i < n; i++ {
		r := got[uint64(1000+i)]
		if r == nil || r.Result == nil || r.Result.ActionId != ids[i] || r.Result.Ok != (i%2 == 0) || r.Result.Sent != int32(i) {
			t.Fatalf("ref %d: %v", 1000+i, r)
		}
	}

	// Per-action errors: the stream stays open.
	stream.Send(streamReq(1, "nope", "libera", "x"))
	stream.Send(streamReq(2, "irc1", "oftc", "x"))
	stream.Send(&quiltv1.ActStreamRequest{Ref: 3, Action: &quiltv1.Action{Source: "irc1", Server: "libera"}})
	slow := streamReq(4, "irc1", "libera", "slow")
	slow.TimeoutSeconds = 1
	stream.Send(slow)
	want := map[uint64]codes.Code{1: codes.NotFound, 2: codes.NotFound, 3: codes.InvalidArgument, 4: codes.DeadlineExceeded}
	for len(want) > 0 {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		c, ok := want[r.Ref]
		if !ok || r.Result != nil || codes.Code(r.Code) != c || r.Message == "" || r.Forwarded != (r.Ref == 4) {
			t.Fatalf("response %v, want code %v for ref %d", r, c, r.Ref)
		}
		delete(want, r.Ref)
	}
	if a := sm.next(time.Second).GetAction(); a.GetText() != "slow" {
		t.Fatalf("SM got %v, want the slow action", a)
	}

	// The stream still works, and a half-close ends it with OK once the
	// last result is in.
	stream.Send(streamReq(5, "irc1", "libera", "last"))
	stream.CloseSend()
	a := sm.next(5 * time.Second).GetAction()
	if a.GetText() != "last" {
		t.Fatalf("SM got %v", a)
	}
	sm.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_ActionResult{ActionResult: &quiltv1.ActionResult{ActionId: a.Id, Ok: true}}})
	r, err := stream.Recv()
	if err != nil || r.Ref != 5 || !r.Result.GetOk() {
		t.Fatalf("last response %v, %v", r, err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after half-close: %v, want EOF", err)
	}
}

// TestActStreamDetachAndLeaderLoss: a detach answers the waiting actions
// UNAVAILABLE on the stream; a step down ends the stream FAILED_PRECONDITION.
func TestActStreamDetachAndLeaderLoss(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	sm := e.attach("irc1", "libera")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := e.qm.ActStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(streamReq(1, "irc1", "libera", "a"))
	stream.Send(streamReq(2, "irc1", "libera", "b"))
	sm.next(5 * time.Second)
	sm.next(5 * time.Second)
	sm.cancel()
	for i := 0; i < 2; i++ {
		r, err := stream.Recv()
		if err != nil || codes.Code(r.Code) != codes.Unavailable || !r.Forwarded {
			t.Fatalf("response %v, %v; want UNAVAILABLE", r, err)
		}
	}
	eventually(t, "detached", func() bool { return len(e.m.Router().Attached()) == 0 })

	sm = e.attach("irc1", "libera")
	stream.Send(streamReq(3, "irc1", "libera", "c"))
	sm.next(5 * time.Second)
	e.m.StepDown("test")
	_, err = stream.Recv()
	wantCode(t, err, codes.FailedPrecondition, "not leader")

	// A standby refuses new streams the same way.
	stream, err = e.qm.ActStream(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.FailedPrecondition, "not leader")
}
