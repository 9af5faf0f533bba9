package embedded_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/embedded"
	"github.com/quilt/quilt/quiltcore/registrar/registrartest"
)

func newEmbedded(t *testing.T) (registrar.Registrar, registrartest.Controls) {
	r, err := embedded.New(embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, registrartest.Controls{
		KillLockHolder: func(_ context.Context, key string) error { return r.KillLock(key) },
	}
}

func TestContract(t *testing.T) {
	registrartest.Run(t, newEmbedded)
}

// fakeClock fires AfterFunc callbacks when Advance passes their deadline.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c       *fakeClock
	at      time.Time
	f       func()
	stopped bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) embedded.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

// Advance moves time and runs due callbacks outside the clock's lock, as
// time.AfterFunc would on its own goroutine.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	for _, t := range c.timers {
		if !t.stopped && !t.at.After(c.now) {
			t.stopped = true
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

func health(t *testing.T, r registrar.Registrar, svc, id string) string {
	t.Helper()
	list, err := r.Discover(t.Context(), svc, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.ID == id {
			return in.Health
		}
	}
	return "absent"
}

func TestTTLExpiryAndDeregisterAfter(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	r, err := embedded.New(embedded.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := t.Context()
	h, err := r.Register(ctx, registrar.Registration{Name: "svc", ID: "svc-1", Address: "127.0.0.1:1",
		TTL: 10 * time.Second, DeregisterAfter: time.Minute, ManualHeartbeat: true})
	if err != nil {
		t.Fatal(err)
	}
	auto, err := r.Register(ctx, registrar.Registration{Name: "svc", ID: "svc-2", Address: "127.0.0.1:2", TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(9 * time.Second)
	if got := health(t, r, "svc", "svc-1"); got != registrar.HealthPassing {
		t.Fatalf("before TTL: %s, want passing", got)
	}
	if err := h.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	clock.Advance(9 * time.Second) // 18 s since registration, 9 s since Pass
	if got := health(t, r, "svc", "svc-1"); got != registrar.HealthPassing {
		t.Fatalf("Pass did not restart the TTL: %s", got)
	}
	clock.Advance(time.Second)
	if got := health(t, r, "svc", "svc-1"); got != registrar.HealthCritical {
		t.Fatalf("after TTL: %s, want critical", got)
	}
	if got := health(t, r, "svc", "svc-2"); got != registrar.HealthPassing {
		t.Fatalf("registrar-heart-beaten instance: %s, want passing", got)
	}
	clock.Advance(59 * time.Second)
	if got := health(t, r, "svc", "svc-1"); got != registrar.HealthCritical {
		t.Fatalf("before DeregisterAfter: %s, want critical", got)
	}
	clock.Advance(time.Second)
	if got := health(t, r, "svc", "svc-1"); got != "absent" {
		t.Fatalf("after DeregisterAfter: %s, want absent", got)
	}
	if err := h.Pass(ctx); !errors.Is(err, registrar.ErrNotFound) {
		t.Fatalf("Pass after removal: %v, want ErrNotFound", err)
	}
	_ = auto.Deregister(ctx)
}

func TestReRegisterReplaces(t *testing.T) {
	clock := &fakeClock{now: time.Unix(0, 0)}
	r, _ := embedded.New(embedded.Options{Clock: clock})
	defer r.Close()
	ctx := t.Context()
	old, err := r.Register(ctx, registrar.Registration{Name: "svc", ID: "x", Address: "a:1", TTL: time.Second, ManualHeartbeat: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, registrar.Registration{Name: "svc", ID: "x", Address: "a:2", TTL: time.Hour, ManualHeartbeat: true}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Second) // the first registration's timer must not fire
	list, _ := r.Discover(ctx, "svc", true)
	if len(list) != 1 || list[0].Address != "a:2" {
		t.Fatalf("after re-register: %+v, want one passing instance at a:2", list)
	}
	if err := old.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if list, _ := r.Discover(ctx, "svc", false); len(list) != 1 {
		t.Fatalf("deregistering a replaced handle removed its successor: %+v", list)
	}
}

func TestBlockingDiscover(t *testing.T) {
	r, _ := embedded.New(embedded.Options{})
	defer r.Close()
	ctx := t.Context()
	_, idx, err := r.DiscoverIndex(ctx, "svc", false, 0, 0)
	if err != nil || idx == 0 {
		t.Fatalf("DiscoverIndex = %d, %v; want a non-zero index", idx, err)
	}
	start := time.Now()
	_, idx2, err := r.DiscoverIndex(ctx, "svc", false, idx, 200*time.Millisecond)
	if err != nil || idx2 != idx || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("blocking query without change: index %d (was %d), err %v, after %v", idx2, idx, err, time.Since(start))
	}
	// Unrelated changes must not wake a service's blocking query.
	go func() {
		time.Sleep(50 * time.Millisecond)
		r.Register(ctx, registrar.Registration{Name: "other", ID: "o", Address: "a:1"})
		r.KVPut(ctx, "k", []byte("v"))
		time.Sleep(50 * time.Millisecond)
		r.Register(ctx, registrar.Registration{Name: "svc", ID: "s", Address: "a:1"})
	}()
	list, idx3, err := r.DiscoverIndex(ctx, "svc", false, idx, 5*time.Second)
	if err != nil || idx3 <= idx || len(list) != 1 || list[0].ID != "s" {
		t.Fatalf("blocking query woke with %+v index %d err %v", list, idx3, err)
	}
}

func TestKVPersists(t *testing.T) {
	dir := t.TempDir()
	r, err := embedded.New(embedded.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.KVPut(t.Context(), "settings/a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	r.Close()
	r2, err := embedded.New(embedded.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if v, err := r2.KVGet(t.Context(), "settings/a"); err != nil || string(v) != "1" {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
	os.WriteFile(filepath.Join(dir, embedded.KVFile), []byte("{not json"), 0o600)
	if _, err := embedded.New(embedded.Options{DataDir: dir}); err == nil {
		t.Fatal("corrupt KV file accepted")
	}
	// An unwritable data dir fails the put and leaves the old value.
	ro := filepath.Join(t.TempDir(), "missing", "dir")
	r3, err := embedded.New(embedded.Options{DataDir: ro})
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	if err := r3.KVPut(t.Context(), "k", []byte("v")); err == nil {
		t.Fatal("KVPut into a missing data dir succeeded")
	}
	if _, err := r3.KVGet(t.Context(), "k"); !errors.Is(err, registrar.ErrNotFound) {
		t.Fatalf("failed put left a value behind: %v", err)
	}
}

func TestLockFIFOAndKill(t *testing.T) {
	r, _ := embedded.New(embedded.Options{})
	defer r.Close()
	ctx := t.Context()
	l1, err := r.Lock(ctx, "k", "h1", "a:1")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 2)
	for i, id := range []string{"h2", "h3"} {
		time.Sleep(time.Duration(i) * 20 * time.Millisecond)
		go func() {
			l, err := r.Lock(ctx, "k", id, "a")
			if err != nil {
				got <- err.Error()
				return
			}
			got <- id
			<-l.Lost()
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if err := r.KillLock("k"); err != nil {
		t.Fatal(err)
	}
	<-l1.Lost()
	if first := <-got; first != "h2" {
		t.Fatalf("first waiter to get the lock: %s, want h2", first)
	}
	r.KillLock("k")
	if second := <-got; second != "h3" {
		t.Fatalf("second waiter: %s, want h3", second)
	}
	if err := r.KillLock("nothing"); !errors.Is(err, registrar.ErrNotFound) {
		t.Fatalf("KillLock of a free key: %v", err)
	}
}
