package querymaster_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
	"github.com/quilt/quilt/quiltcore/store"
)

func send(source, server string) *quiltv1.ActRequest {
	return &quiltv1.ActRequest{Action: &quiltv1.Action{Source: source, Server: server, Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#a", Text: "hi"}}
}

func TestActRouting(t *testing.T) {
	st := qmtest.NewMemStore()
	ctx := context.Background()
	// Known from the store (attached once), not attached now.
	st.PutSource(ctx, store.SourceRecord{Name: "gone", Protocol: "irc"})
	e := newEnv(t, querymaster.Options{Store: st, KnownSources: func() []string { return []string{"configured"} }})
	sm := e.attach("irc1", "libera")

	_, err := e.qm.Act(ctx, send("nope", "libera"))
	wantCode(t, err, codes.NotFound, `unknown source "nope"`)
	_, err = e.qm.Act(ctx, send("irc1", "oftc"))
	wantCode(t, err, codes.NotFound, `has no server "oftc"`)
	_, err = e.qm.Act(ctx, send("gone", "libera"))
	wantCode(t, err, codes.Unavailable, "not attached")
	_, err = e.qm.Act(ctx, send("configured", "x"))
	wantCode(t, err, codes.Unavailable, "not attached")

	// A routed action: the SM sees it with an id and answers.
	go func() {
		msg := sm.next(5 * time.Second)
		a := msg.GetAction()
		if a == nil || a.Id == "" || a.Text != "hi" {
			t.Errorf("SM got %v", msg)
			return
		}
		sm.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_ActionResult{ActionResult: &quiltv1.ActionResult{ActionId: a.Id, Ok: true, Sent: 1}}})
	}()
	res, err := e.qm.Act(ctx, send("irc1", "libera"))
	if err != nil || !res.Ok || res.Sent != 1 || len(res.ActionId) != 26 {
		t.Fatalf("result %v, %v", res, err)
	}

	// No answer in time.
	req := send("irc1", "libera")
	req.TimeoutSeconds = 1
	start := time.Now()
	_, err = e.qm.Act(ctx, req)
	wantCode(t, err, codes.DeadlineExceeded, "did not answer within 1s")
	if time.Since(start) > 3*time.Second {
		t.Fatal("timeout not honoured")
	}
	sm.next(time.Second) // the action that timed out

	// Detaching while an action waits: UNAVAILABLE, not a hang.
	go func() {
		sm.next(5 * time.Second)
		sm.cancel()
	}()
	_, err = e.qm.Act(ctx, send("irc1", "libera"))
	wantCode(t, err, codes.Unavailable, "detached")
	// And after: the source is known but detached.
	eventually(t, "detached", func() bool { return len(e.m.Router().Attached()) == 0 })
	_, err = e.qm.Act(ctx, send("irc1", "libera"))
	wantCode(t, err, codes.Unavailable, "not attached")
}

func TestControlServer(t *testing.T) {
	st := qmtest.NewMemStore()
	ctx := context.Background()
	e := newEnv(t, querymaster.Options{Store: st})
	sm := e.attach("irc1", "libera")

	resp, err := e.qm.ControlServer(ctx, &quiltv1.ControlServerRequest{Source: "irc1", Server: "libera", Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_DISABLE, RequestedBy: "op"})
	if err != nil || !resp.Delivered || resp.Desired.Enabled {
		t.Fatalf("disable: %v, %v", resp, err)
	}
	c := sm.next(5 * time.Second).GetControl()
	if c == nil || c.Server != "libera" || c.Op != quiltv1.ServerControlOp_SERVER_CONTROL_OP_DISABLE || c.RequestedBy != "op" {
		t.Fatalf("control down the stream: %v", c)
	}
	_, err = e.qm.ControlServer(ctx, &quiltv1.ControlServerRequest{Source: "irc1", Server: "oftc", Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE})
	wantCode(t, err, codes.NotFound, "oftc")
	_, err = e.qm.ControlServer(ctx, &quiltv1.ControlServerRequest{Source: "nope", Server: "x", Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE})
	wantCode(t, err, codes.NotFound, "unknown source")

	// Detached: stored, not delivered; the next Welcome carries it once.
	sm.cancel()
	eventually(t, "detached", func() bool { return len(e.m.Router().Attached()) == 0 })
	resp, err = e.qm.ControlServer(ctx, &quiltv1.ControlServerRequest{Source: "irc1", Server: "libera", Op: quiltv1.ServerControlOp_SERVER_CONTROL_OP_RECONNECT})
	if err != nil || resp.Delivered || !resp.Desired.Reconnect || resp.Desired.Enabled {
		t.Fatalf("reconnect while detached: %v, %v", resp, err)
	}
	sm2 := e.attach("irc1", "libera")
	if len(sm2.welcome.Desired) != 1 || !sm2.welcome.Desired[0].Reconnect {
		t.Fatalf("welcome desired %v", sm2.welcome.Desired)
	}
	// the one-shot flag is cleared once the Welcome carrying it is sent
	var d []*quiltv1.DesiredServer
	eventually(t, "reconnect cleared after delivery", func() bool {
		d, _ = st.DesiredServers(ctx, "irc1")
		return len(d) == 1 && !d[0].Reconnect
	})
	if d[0].Enabled {
		t.Fatalf("stored after delivery %v (reconnect is one-shot, disable stays)", d)
	}
}

func TestListSources(t *testing.T) {
	st := qmtest.NewMemStore()
	ctx := context.Background()
	e := newEnv(t, querymaster.Options{Store: st})
	a := e.attach("a", "s1", "s2")
	b := e.attach("b", "t1")
	b.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Status{Status: &quiltv1.ServerStatusUpdate{Servers: []*quiltv1.ServerStatus{
		{Name: "t1", State: quiltv1.ServerState_SERVER_STATE_FAILED, LastError: "refused"}}}}})
	a.waitAck(a.sendBatch(a.ev("s1", "#x", "u", "m")))
	eventually(t, "status update applied", func() bool {
		r, _ := e.qm.ListSources(ctx, &quiltv1.ListSourcesRequest{})
		return len(r.GetSources()) == 2 && r.Sources[1].Servers[0].State == quiltv1.ServerState_SERVER_STATE_FAILED
	})
	r, _ := e.qm.ListSources(ctx, &quiltv1.ListSourcesRequest{})
	if r.Sources[0].Name != "a" || len(r.Sources[0].Servers) != 2 || !r.Sources[0].Attached || r.Sources[0].EventsStored != 1 {
		t.Fatalf("a: %v", r.Sources[0])
	}
	b.cancel()
	eventually(t, "b detached", func() bool { return len(e.m.Router().Attached()) == 1 })
	r, _ = e.qm.ListSources(ctx, &quiltv1.ListSourcesRequest{})
	if len(r.Sources) != 1 {
		t.Fatalf("without detached: %v", r.Sources)
	}
	r, _ = e.qm.ListSources(ctx, &quiltv1.ListSourcesRequest{IncludeDetached: true})
	if len(r.Sources) != 2 || r.Sources[1].Attached || r.Sources[1].DetachedAt == nil || r.Sources[1].Servers[0].LastError != "refused" {
		t.Fatalf("with detached: %v", r.Sources)
	}
}

func TestLiveQuery(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	a := e.attach("a", "s")
	e.attach("b", "s") // never answers
	go func() {
		q := a.next(5 * time.Second).GetLiveQuery()
		if q == nil || q.Id == "" || q.Deadline == nil {
			t.Errorf("live query %v", q)
			return
		}
		a.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_LiveReply{LiveReply: &quiltv1.LiveReply{QueryId: q.Id,
			Servers: []*quiltv1.ServerRow{{Source: "a"}}}}})
		a.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_LiveReply{LiveReply: &quiltv1.LiveReply{QueryId: q.Id,
			Servers: []*quiltv1.ServerRow{{Source: "a"}}, Done: true}}})
	}()
	ch := e.m.Router().LiveQuery(context.Background(), []string{"a", "b", "c"},
		&quiltv1.LiveQuery{Kind: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS}, 300*time.Millisecond)
	rows, problems := 0, map[string]string{}
	for r := range ch {
		if r.Problem != nil {
			problems[r.Source] = r.Problem.Reason
			continue
		}
		rows += len(r.Reply.Servers)
	}
	if rows != 2 || problems["b"] != "timeout" || problems["c"] != "detached" || len(problems) != 2 {
		t.Fatalf("rows %d problems %v", rows, problems)
	}
}
