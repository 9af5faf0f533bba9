package registrar

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

type step struct {
	list  []Instance
	index uint64
	err   error
}

// TestWatchLoop drives WatchLoop with scripted blocking-query answers and
// checks which lists it forwards and which index it asks for next.
func TestWatchLoop(t *testing.T) {
	a := Instance{ID: "a", Health: HealthPassing}
	b := Instance{ID: "b", Health: HealthPassing}
	script := []step{
		{list: []Instance{a}, index: 10},
		{list: []Instance{a}, index: 11},   // unchanged: dropped
		{err: errors.New("agent down")},    // retried after backoff
		{list: []Instance{b, a}, index: 5}, // went backwards
		{list: []Instance{a, b}, index: 0}, // same content; 0 must become 1
		{list: []Instance{a, {ID: "b", Health: "critical"}}, index: 12},
	}
	var mu sync.Mutex
	var asked []uint64
	i := 0
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	fetch := func(ctx context.Context, waitIndex uint64) ([]Instance, uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, waitIndex)
		if i >= len(script) {
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			return nil, 0, ctx.Err()
		}
		s := script[i]
		i++
		return s.list, s.index, s.err
	}
	exited := make(chan struct{})
	ch := WatchLoop(ctx, nil, "svc", fetch, func() { close(exited) })
	var got [][]string
	for range 3 {
		select {
		case l := <-ch:
			var ids []string
			for _, in := range l {
				ids = append(ids, in.ID+"="+in.Health)
			}
			got = append(got, ids)
		case <-time.After(5 * time.Second):
			t.Fatalf("watch stalled; got %v", got)
		}
	}
	want := "[[a=passing] [a=passing b=passing] [a=passing b=critical]]"
	if s := fmtList(got); s != want {
		t.Errorf("forwarded %s, want %s", s, want)
	}
	// Let the loop issue its next (blocking) query before stopping it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		n := len(asked)
		mu.Unlock()
		if n == 7 || time.Now().After(deadline) {
			break
		}
	}
	cancel()
	for range ch {
	}
	<-exited
	mu.Lock()
	defer mu.Unlock()
	// 0 first; 10 then 11; the error keeps 11; backwards 5 resets to 0;
	// index 0 becomes 1; then 12.
	wantAsked := "[0 10 11 11 0 1 12]"
	if s := fmtList(asked); s != wantAsked {
		t.Errorf("wait indexes %s, want %s", s, wantAsked)
	}
}

func fmtList[T any](v []T) string {
	return fmtAny(v)
}
