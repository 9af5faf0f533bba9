package querymaster_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
	"github.com/quilt/quilt/quiltcore/registrar"
)

func TestAttachWelcomeCarriesDesiredAndCursors(t *testing.T) {
	st := qmtest.NewMemStore()
	ctx := context.Background()
	if err := st.SetDesiredServer(ctx, "irc1", &quiltv1.DesiredServer{Server: "libera", Enabled: false}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.InsertEvents(ctx, "irc1", nil, []*quiltv1.Cursor{{Server: "libera", Name: "since", Value: "s42"}}); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, querymaster.Options{Store: st})
	sm := e.attach("irc1", "libera")
	w := sm.welcome
	if w.MasterId != "quilt-qmd-test" {
		t.Errorf("master id %q", w.MasterId)
	}
	if len(w.Desired) != 1 || w.Desired[0].Server != "libera" || w.Desired[0].Enabled {
		t.Errorf("desired %v", w.Desired)
	}
	if len(w.Cursors) != 1 || w.Cursors[0].Value != "s42" {
		t.Errorf("cursors %v", w.Cursors)
	}
	if w.HeartbeatSeconds <= 0 {
		t.Errorf("heartbeat %d", w.HeartbeatSeconds)
	}
	rec, err := st.GetSource(ctx, "irc1")
	if err != nil || rec.Protocol != "test" || !rec.DetachedAt.IsZero() {
		t.Fatalf("source record %+v, %v", rec, err)
	}
}

func TestAttachFirstMessageMustBeHello(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	st, err := e.link.Attach(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Heartbeat{Heartbeat: &quiltv1.Heartbeat{}}})
	_, err = st.Recv()
	wantCode(t, err, codes.InvalidArgument, "must be Hello")
}

func TestAttachDuplicateNameRejected(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	first := e.attach("irc1", "libera")
	_, err := e.attachRaw("irc1", "another-process", "libera")
	wantCode(t, err, codes.AlreadyExists, "source manager irc1 is already attached from node-irc1 since")
	// The first stream is untouched.
	seq := first.sendBatch(first.ev("libera", "#a", "bob", "hi"))
	if stored, _ := first.waitAck(seq); stored != 1 {
		t.Fatalf("stored %d", stored)
	}
}

func TestAttachSameInstanceReplacesStream(t *testing.T) {
	e := newEnv(t, querymaster.Options{Store: qmtest.NewMemStore()})
	old := e.attach("irc1", "libera")
	sm, err := e.attachRaw("irc1", "irc1-instance", "libera")
	if err != nil {
		t.Fatalf("reconnect of the same process refused: %v", err)
	}
	if st := old.waitEnd(5 * time.Second); st.Code() != codes.Aborted {
		t.Fatalf("old stream ended with %v", st)
	}
	seq := sm.sendBatch(sm.ev("libera", "#a", "bob", "hi"))
	sm.waitAck(seq)
}

func TestAckOnlyAfterStore(t *testing.T) {
	gate := qmtest.NewGate(qmtest.NewMemStore())
	e := newEnv(t, querymaster.Options{Store: gate})
	sm := e.attach("irc1", "libera")
	seq := sm.sendBatch(sm.ev("libera", "#a", "bob", "one"))
	select {
	case <-gate.Entered:
	case <-time.After(5 * time.Second):
		t.Fatal("InsertEvents never called")
	}
	// Pipelining: the next batch is received while the first is stored.
	seq2 := sm.sendBatch(sm.ev("libera", "#a", "bob", "two"))
	timer := time.NewTimer(300 * time.Millisecond)
	defer timer.Stop()
wait:
	for {
		select {
		case msg := <-sm.in:
			if msg.GetAck() != nil {
				t.Fatalf("ack %v sent while the store had not returned", msg.GetAck())
			}
		case <-timer.C:
			break wait
		}
	}
	gate.Open()
	stored, dups := sm.waitAck(seq2)
	if stored != 2 || dups != 0 || seq2 != seq+1 {
		t.Fatalf("stored %d dups %d", stored, dups)
	}
}

func TestAcksReportDuplicates(t *testing.T) {
	st := qmtest.NewMemStore()
	e := newEnv(t, querymaster.Options{Store: st})
	sm := e.attach("irc1", "libera")
	a, b := sm.ev("libera", "#a", "x", "a"), sm.ev("libera", "#a", "x", "b")
	stored, dups := sm.waitAck(sm.sendBatch(a, b))
	if stored != 2 || dups != 0 {
		t.Fatalf("first batch: stored %d dups %d", stored, dups)
	}
	c := sm.ev("libera", "#a", "x", "c")
	stored, dups = sm.waitAck(sm.sendBatch(b, c))
	if stored != 1 || dups != 1 {
		t.Fatalf("second batch: stored %d dups %d, want 1 and 1", stored, dups)
	}
	if n := len(st.Events()); n != 3 {
		t.Fatalf("store holds %d events, want 3", n)
	}
}

func TestStoreFailureEndsStreamWithoutAck(t *testing.T) {
	st := qmtest.NewMemStore()
	st.FailInserts(context.DeadlineExceeded)
	e := newEnv(t, querymaster.Options{Store: st})
	sm := e.attach("irc1", "libera")
	sm.sendBatch(sm.ev("libera", "#a", "x", "a"))
	for {
		select {
		case msg, ok := <-sm.in:
			if !ok {
				wantCode(t, <-sm.end, codes.Unavailable, "store")
				return
			}
			if msg.GetAck() != nil {
				t.Fatal("acked a batch the store refused")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("stream not ended")
		}
	}
}

func TestDetachRecordedAndDeregistered(t *testing.T) {
	st := qmtest.NewMemStore()
	reg := newFakeRegistrar()
	reg.locks <- &fakeLock{lost: make(chan struct{})}
	e := newEnv(t, querymaster.Options{Store: st, Registrar: reg, Advertise: "127.0.0.1:1", SourceTTL: 60 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.m.Run(ctx)
	eventually(t, "leading", e.m.IsLeader)
	if r, ok := reg.get("quilt-qmd-test"); !ok || r.GRPCHealth != "127.0.0.1:1" || r.Name != "quilt-qmd" {
		t.Fatalf("master registration %+v", r)
	}
	sm := e.attach("irc1", "libera")
	eventually(t, "source manager registered", func() bool { _, ok := reg.get("quilt-sm-irc1"); return ok })
	r, _ := reg.get("quilt-sm-irc1")
	if r.Name != "quilt-sm" || r.Meta["protocol"] != "test" || r.Meta["node"] != "node-irc1" || r.Meta["version"] != "t" || !r.ManualHeartbeat {
		t.Fatalf("registration %+v", r)
	}
	// The TTL is kept passing while the stream is heard from.
	for range 5 {
		sm.send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Heartbeat{Heartbeat: &quiltv1.Heartbeat{}}})
		time.Sleep(20 * time.Millisecond)
	}
	reg.mu.Lock()
	passes := reg.passes["quilt-sm-irc1"]
	reg.mu.Unlock()
	if passes == 0 {
		t.Fatal("TTL check never passed")
	}
	sm.stream.CloseSend()
	sm.waitEnd(5 * time.Second)
	eventually(t, "deregistered", func() bool { _, ok := reg.get("quilt-sm-irc1"); return !ok })
	eventually(t, "detached in the store", func() bool {
		rec, err := st.GetSource(ctx, "irc1")
		return err == nil && !rec.DetachedAt.IsZero()
	})
}

func TestLeaderLossEndsStreamsAndRefusesClients(t *testing.T) {
	st := qmtest.NewMemStore()
	reg := newFakeRegistrar()
	lock := &fakeLock{lost: make(chan struct{})}
	reg.locks <- lock
	e := newEnv(t, querymaster.Options{Store: st, Registrar: reg, Advertise: "127.0.0.1:1"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.m.Run(ctx)
	eventually(t, "leading", e.m.IsLeader)
	sm := e.attach("irc1", "libera")
	sub, err := e.qm.Subscribe(ctx, &quiltv1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}

	reg.setLeader(registrar.Leader{ID: "quilt-qmd-other", Address: "10.0.0.2:7000"})
	lock.Release(ctx) // the registrar says the lock is gone
	end := sm.waitEnd(5 * time.Second)
	if end.Code() != codes.FailedPrecondition {
		t.Fatalf("attach ended with %v", end)
	}
	_, err = sub.Recv()
	wantCode(t, err, codes.FailedPrecondition, "not leader")
	if e.m.IsLeader() {
		t.Fatal("still leading")
	}
	_, err = e.attachRaw("irc2", "x", "s")
	wantCode(t, err, codes.FailedPrecondition, "10.0.0.2:7000")
	_, err = e.qm.Act(ctx, &quiltv1.ActRequest{Action: &quiltv1.Action{Source: "irc1", Server: "libera", Kind: quiltv1.ActionKind_ACTION_KIND_SEND}})
	wantCode(t, err, codes.FailedPrecondition, "the leader is quilt-qmd-other at 10.0.0.2:7000")
	stat, err := e.qm.Status(ctx, &quiltv1.StatusRequest{})
	if err != nil || stat.Leader || stat.LeaderAddress != "10.0.0.2:7000" {
		t.Fatalf("status %v, %v", stat, err)
	}
	// Back to waiting: a new lock makes it lead again.
	reg.locks <- &fakeLock{lost: make(chan struct{})}
	eventually(t, "leading again", e.m.IsLeader)
	e.attach("irc2", "s")
}
