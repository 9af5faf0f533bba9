package quilt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
)

func TestDialByConfigAndQuery(t *testing.T) {
	c := querytest.Start(t, querytest.Options{Sources: []querytest.Source{{Name: "alpha"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl, err := quilt.Dial(ctx, quilt.Options{ConfigDir: c.Dir, Identity: "tester"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if cl.Address() != c.Addr {
		t.Errorf("resolved %s, want %s", cl.Address(), c.Addr)
	}
	a, err := cl.QueryAll(ctx, &quiltv1.QueryRequest{Kind: "members", Filter: &quiltv1.EventFilter{Channel: "#test"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Rows) != 4 || a.Done == nil || a.Header.QueryId == "" {
		t.Errorf("members = %d rows, done %v", len(a.Rows), a.Done)
	}
	h, err := cl.History(ctx, 1, "tester")
	if err != nil || len(h) != 1 || h[0].Id != a.Header.QueryId {
		t.Errorf("history = %v, %v", h, err)
	}
	res, err := cl.Send(ctx, "alpha", "main", "#test", "hi", quiltv1.SendStyle_SEND_STYLE_MESSAGE)
	if err != nil || !res.Ok {
		t.Errorf("send: %v %v", res, err)
	}
}

func TestDialNoMaster(t *testing.T) {
	dir := t.TempDir()
	writeCfg(t, dir, "[query_master]\nlisten = 127.0.0.1:1\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := quilt.Dial(ctx, quilt.Options{ConfigDir: dir})
	if !errors.Is(err, quilt.ErrNoMaster) {
		t.Fatalf("err = %v, want ErrNoMaster", err)
	}
	t.Log(err)
}

// TestSubscribeAcrossRestart restarts the query master in the middle of a
// stream of messages: the subscriber must see every message exactly once,
// in order.
func TestSubscribeAcrossRestart(t *testing.T) {
	c := querytest.Start(t, querytest.Options{Sources: []querytest.Source{{Name: "alpha"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := quilt.Dial(ctx, quilt.Options{ConfigDir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const total = 300
	got := make(chan string, 2*total)
	var reconnects atomic.Int32
	subErr := make(chan error, 1)
	go func() {
		subErr <- cl.Subscribe(ctx, quilt.SubscribeOptions{
			Filter:      &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE}},
			OnReconnect: func(error) { reconnects.Add(1) },
		}, func(e *quiltv1.Event) error {
			got <- e.Text
			return nil
		})
	}()
	for c.Master().Subscribers() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	for i := 0; i < total; i++ {
		if i == total/2 {
			c.RestartMaster()
			c.WaitAttached(10*time.Second, "alpha")
		}
		c.Raw("alpha", "main", fmt.Sprintf("msg user1 #test m%03d", i))
	}
	for i := 0; i < total; i++ {
		select {
		case s := <-got:
			if want := fmt.Sprintf("m%03d", i); s != want {
				t.Fatalf("message %d = %s, want %s", i, s, want)
			}
		case err := <-subErr:
			t.Fatalf("subscribe ended: %v", err)
		case <-time.After(15 * time.Second):
			t.Fatalf("only %d of %d messages arrived", i, total)
		}
	}
	select {
	case s := <-got:
		t.Fatalf("extra message %s", s)
	case <-time.After(300 * time.Millisecond):
	}
	if reconnects.Load() == 0 {
		t.Error("the subscription never broke: the restart did not test anything")
	}
}

func writeCfg(t *testing.T, dir, s string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "quilt.cfg"), []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
