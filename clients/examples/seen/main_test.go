package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/quilt/quilt/clients/quilt"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store"
)

func TestSeenAnswers(t *testing.T) {
	c := querytest.Start(t, querytest.Options{Sources: []querytest.Source{
		{Name: "alpha", Servers: map[string][]string{"net1": {"#a", "#b"}}},
		{Name: "beta", Servers: map[string][]string{"net2": {"#c"}}},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := quilt.Dial(ctx, quilt.Options{ConfigDir: c.Dir})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	b := &Bot{Client: cl}
	go b.Run(ctx)
	for c.Master().Subscribers() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	c.Raw("alpha", "net1", "msg user2 #b time for lunch")
	c.WaitEvents(5*time.Second, &quiltv1.EventFilter{Text: "lunch"}, 1)
	// Asked on another network: the answer comes back where it was asked.
	c.Raw("beta", "net2", "msg user1 #c !seen user2")
	c.Raw("beta", "net2", "msg user1 #c !seen nobody")
	f := &quiltv1.EventFilter{Sources: []string{"beta"}, Channel: "#c", User: "quilt", Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE}}
	c.WaitEvents(10*time.Second, f, 2)
	res, err := c.Store.QueryEvents(ctx, store.EventQuery{Filter: f, OldestFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	got := res.Events[0].Text
	if !strings.HasPrefix(got, "user2 was last seen ") || !strings.Contains(got, "in #b on alpha/net1, saying: time for lunch.") {
		t.Errorf("answer = %q", got)
	}
	if res.Events[1].Text != "I have not seen nobody." {
		t.Errorf("answer = %q", res.Events[1].Text)
	}
}
