// Package registrartest is the behaviour contract every registrar backend
// passes (litestream's RunWithReplicaClient pattern): one suite, run by each
// backend's tests against a fresh instance.
package registrartest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quilt/quilt/quiltcore/registrar"
)

// Controls lets the suite do to a backend what the outside world would.
type Controls struct {
	// KillLockHolder invalidates the session of whoever holds key, as if
	// its process had died (Consul: destroy the session).
	KillLockHolder func(ctx context.Context, key string) error
	// Writer, when set, takes Register and Lock; the registrar under test
	// is then only read (a remote client cannot register or lock). Its
	// lifetime belongs to the factory.
	Writer registrar.Registrar
	// TTL of the registrations the suite lets expire; 0 means 1 s.
	TTL time.Duration
}

// Factory returns a fresh registrar for one subtest, closed by a t.Cleanup it
// registers (Close must tolerate being called twice).
type Factory func(t *testing.T) (registrar.Registrar, Controls)

// Timing bounds the contract promises.
const (
	WatchWithin    = time.Second     // a watch sees a change
	FailoverWithin = 5 * time.Second // a waiting contender takes a killed holder's lock
	LostWithin     = 2 * time.Second // a killed holder learns it lost the lock
)

// Run runs the contract against newRegistrar.
func Run(t *testing.T, newRegistrar Factory) {
	t.Run("Discovery", func(t *testing.T) { testDiscovery(t, newRegistrar) })
	t.Run("LeaderLock", func(t *testing.T) { testLeaderLock(t, newRegistrar) })
	t.Run("KV", func(t *testing.T) { testKV(t, newRegistrar) })
	t.Run("Invalid", func(t *testing.T) { testInvalid(t, newRegistrar) })
	t.Run("Close", func(t *testing.T) { testClose(t, newRegistrar) })
}

func unique(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func writer(reg registrar.Registrar, c Controls) registrar.Registrar {
	if c.Writer != nil {
		return c.Writer
	}
	return reg
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func ids(list []registrar.Instance) []string {
	out := make([]string, len(list))
	for i, in := range list {
		out[i] = in.ID + "=" + in.Health
	}
	return out
}

func find(list []registrar.Instance, id string) (registrar.Instance, bool) {
	for _, in := range list {
		if in.ID == id {
			return in, true
		}
	}
	return registrar.Instance{}, false
}

// eventually polls cond (a Discover, not a watch) until it holds or within
// passes; it returns the last list seen.
func eventually(t *testing.T, within time.Duration, what string, get func() ([]registrar.Instance, error), cond func([]registrar.Instance) bool) []registrar.Instance {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		list, err := get()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if cond(list) {
			return list
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last list %v", what, within, ids(list))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// await reads the watch until cond holds; it fails after within.
func await(t *testing.T, ch <-chan []registrar.Instance, within time.Duration, what string, cond func([]registrar.Instance) bool) time.Duration {
	t.Helper()
	start := time.Now()
	timer := time.NewTimer(within)
	defer timer.Stop()
	var last []registrar.Instance
	for {
		select {
		case list, ok := <-ch:
			if !ok {
				t.Fatalf("%s: watch closed", what)
			}
			last = list
			if cond(list) {
				return time.Since(start)
			}
		case <-timer.C:
			t.Fatalf("%s: watch did not report it within %v; last list %v", what, within, ids(last))
		}
	}
}

func testDiscovery(t *testing.T, newRegistrar Factory) {
	reg, c := newRegistrar(t)
	w := writer(reg, c)
	ttl := c.TTL
	if ttl == 0 {
		ttl = time.Second
	}
	ctx := ctxFor(t, 60*time.Second)
	svc := unique("quilt-test")

	a, err := w.Register(ctx, registrar.Registration{
		Name: svc, ID: svc + "-a", Address: "127.0.0.1:7001",
		Tags: []string{"t1", "t2"}, Meta: map[string]string{"k": "v"},
		TTL: 3 * time.Second,
	})
	if err != nil {
		t.Fatalf("Register a: %v", err)
	}
	if a.ID() != svc+"-a" {
		t.Errorf("ID() = %q, want %q", a.ID(), svc+"-a")
	}
	list, err := reg.Discover(ctx, svc, true)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	got, ok := find(list, svc+"-a")
	if !ok {
		t.Fatalf("Discover right after Register: %v lacks %s-a", ids(list), svc)
	}
	want := registrar.Instance{Name: svc, ID: svc + "-a", Address: "127.0.0.1:7001",
		Tags: []string{"t1", "t2"}, Meta: map[string]string{"k": "v"}, Health: registrar.HealthPassing}
	slices.Sort(got.Tags)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Discover = %+v, want %+v", got, want)
	}
	if other, err := reg.Discover(ctx, unique("quilt-none"), false); err != nil || len(other) != 0 {
		t.Errorf("Discover of an unknown service = %v, %v; want empty, nil", ids(other), err)
	}

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch := reg.Watch(wctx, svc, false)
	await(t, watch, 5*time.Second, "first watch result", func(l []registrar.Instance) bool {
		_, ok := find(l, svc+"-a")
		return ok
	})

	start := time.Now()
	b, err := w.Register(ctx, registrar.Registration{Name: svc, ID: svc + "-b", Address: "127.0.0.1:7002", TTL: 3 * time.Second})
	if err != nil {
		t.Fatalf("Register b: %v", err)
	}
	registered := time.Since(start)
	latency := await(t, watch, WatchWithin, "watch sees a second instance", func(l []registrar.Instance) bool {
		_, okA := find(l, svc+"-a")
		_, okB := find(l, svc+"-b")
		return okA && okB
	})
	t.Logf("watch latency: %v after Register returned (Register took %v)", latency, registered)

	// A registration nobody heart-beats must turn critical after its TTL
	// and drop out of passing-only discovery, while heart-beaten ones stay.
	cID := svc + "-c"
	cReg, err := w.Register(ctx, registrar.Registration{Name: svc, ID: cID, Address: "127.0.0.1:7003", TTL: ttl, ManualHeartbeat: true})
	if err != nil {
		t.Fatalf("Register c: %v", err)
	}
	expireStart := time.Now()
	all := func() ([]registrar.Instance, error) { return reg.Discover(ctx, svc, false) }
	eventually(t, ttl+10*time.Second, "TTL expiry marks c critical", all, func(l []registrar.Instance) bool {
		in, ok := find(l, cID)
		return ok && in.Health == registrar.HealthCritical
	})
	t.Logf("TTL %v expired → critical seen after %v", ttl, time.Since(expireStart))
	await(t, watch, 2*time.Second, "watch sees c critical", func(l []registrar.Instance) bool {
		in, ok := find(l, cID)
		return ok && in.Health == registrar.HealthCritical
	})
	passing, err := reg.Discover(ctx, svc, true)
	if err != nil {
		t.Fatalf("Discover passing: %v", err)
	}
	if _, ok := find(passing, cID); ok {
		t.Errorf("passing-only Discover includes critical c: %v", ids(passing))
	}
	for _, id := range []string{svc + "-a", svc + "-b"} {
		if in, ok := find(passing, id); !ok || in.Health != registrar.HealthPassing {
			t.Errorf("heart-beaten %s not passing after %v: %v", id, time.Since(expireStart), ids(passing))
		}
	}

	if err := cReg.Pass(ctx); err != nil {
		t.Fatalf("Pass c: %v", err)
	}
	eventually(t, 5*time.Second, "Pass makes c passing again", all, func(l []registrar.Instance) bool {
		in, ok := find(l, cID)
		return ok && in.Health == registrar.HealthPassing
	})

	if err := b.Deregister(ctx); err != nil {
		t.Fatalf("Deregister b: %v", err)
	}
	eventually(t, 5*time.Second, "Deregister removes b", all, func(l []registrar.Instance) bool {
		_, ok := find(l, svc+"-b")
		return !ok && len(l) == 2
	})
	await(t, watch, 2*time.Second, "watch sees b gone", func(l []registrar.Instance) bool {
		_, ok := find(l, svc+"-b")
		return !ok
	})
	if err := b.Deregister(ctx); err != nil {
		t.Errorf("second Deregister of b: %v, want nil", err)
	}
	for _, r := range []registrar.Registered{a, cReg} {
		if err := r.Deregister(ctx); err != nil {
			t.Errorf("Deregister %s: %v", r.ID(), err)
		}
	}
	eventually(t, 5*time.Second, "all deregistered", all, func(l []registrar.Instance) bool { return len(l) == 0 })

	stopWatch()
	select {
	case _, ok := <-watch:
		for ok {
			_, ok = <-watch
		}
	case <-time.After(2 * time.Second):
		t.Errorf("watch channel not closed 2 s after its context ended")
	}
}

type lockResult struct {
	id   string
	lock registrar.Lock
	err  error
}

func testLeaderLock(t *testing.T, newRegistrar Factory) {
	reg, c := newRegistrar(t)
	w := writer(reg, c)
	ctx := ctxFor(t, 60*time.Second)
	key := "test/" + unique("leader")

	if _, err := reg.Leader(ctx, key); !errors.Is(err, registrar.ErrNotFound) {
		t.Fatalf("Leader of a fresh key: %v, want ErrNotFound", err)
	}

	results := make(chan lockResult, 2)
	addr := map[string]string{"h1": "127.0.0.1:9001", "h2": "127.0.0.1:9002"}
	for _, id := range []string{"h1", "h2"} {
		go func() {
			l, err := w.Lock(ctx, key, id, addr[id])
			results <- lockResult{id, l, err}
		}()
	}
	var first lockResult
	select {
	case first = <-results:
	case <-time.After(10 * time.Second):
		t.Fatal("neither contender got the lock within 10 s")
	}
	if first.err != nil {
		t.Fatalf("Lock %s: %v", first.id, first.err)
	}
	select {
	case second := <-results:
		t.Fatalf("both contenders hold the lock: %s then %s (err %v)", first.id, second.id, second.err)
	case <-time.After(500 * time.Millisecond):
	}
	if ld, err := reg.Leader(ctx, key); err != nil || ld.ID != first.id || ld.Address != addr[first.id] {
		t.Fatalf("Leader = %+v, %v; want %s at %s", ld, err, first.id, addr[first.id])
	}
	select {
	case <-first.lock.Lost():
		t.Fatal("Lost closed while the holder still holds the lock")
	default:
	}

	killed := time.Now()
	if err := c.KillLockHolder(ctx, key); err != nil {
		t.Fatalf("KillLockHolder: %v", err)
	}
	select {
	case <-first.lock.Lost():
		t.Logf("killed holder learned it lost the lock after %v", time.Since(killed))
	case <-time.After(LostWithin):
		t.Fatalf("killed holder's Lost not closed within %v", LostWithin)
	}
	var second lockResult
	select {
	case second = <-results:
	case <-time.After(FailoverWithin):
		t.Fatalf("the other contender did not take over within %v", FailoverWithin)
	}
	if second.err != nil {
		t.Fatalf("Lock %s: %v", second.id, second.err)
	}
	t.Logf("failover (holder killed → other holder acquired): %v", time.Since(killed))
	if ld, err := reg.Leader(ctx, key); err != nil || ld.ID != second.id || ld.Address != addr[second.id] {
		t.Fatalf("Leader after failover = %+v, %v; want %s at %s", ld, err, second.id, addr[second.id])
	}
	if err := first.lock.Release(ctx); err != nil {
		t.Errorf("Release of a lost lock: %v, want nil", err)
	}
	select {
	case <-second.lock.Lost():
		t.Fatal("new holder's Lost closed without cause")
	default:
	}

	// A contender whose ctx ends while the lock stays held gives up.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if l, err := w.Lock(short, key, "h3", "127.0.0.1:9003"); !errors.Is(err, registrar.ErrLockHeld) {
		if l != nil {
			l.Release(ctx)
		}
		t.Errorf("Lock while held with a short ctx: %v, want ErrLockHeld", err)
	}

	if err := second.lock.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case <-second.lock.Lost():
	case <-time.After(LostWithin):
		t.Fatal("Release did not close Lost")
	}
	if err := second.lock.Release(ctx); err != nil {
		t.Errorf("second Release: %v, want nil", err)
	}
	if ld, err := reg.Leader(ctx, key); !errors.Is(err, registrar.ErrNotFound) {
		t.Errorf("Leader after Release = %+v, %v; want ErrNotFound", ld, err)
	}
}

func testKV(t *testing.T, newRegistrar Factory) {
	reg, _ := newRegistrar(t)
	ctx := ctxFor(t, 30*time.Second)
	key := "test/" + unique("kv") + "/setting"
	if _, err := reg.KVGet(ctx, key); !errors.Is(err, registrar.ErrNotFound) {
		t.Fatalf("KVGet of a missing key: %v, want ErrNotFound", err)
	}
	bin := make([]byte, 256)
	for i := range bin {
		bin[i] = byte(i)
	}
	for _, v := range [][]byte{[]byte("one"), bin, []byte("two")} {
		if err := reg.KVPut(ctx, key, v); err != nil {
			t.Fatalf("KVPut: %v", err)
		}
		got, err := reg.KVGet(ctx, key)
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("KVGet = %q, %v; want %q", got, err, v)
		}
	}
	if err := reg.KVPut(ctx, key+"-empty", nil); err != nil {
		t.Fatalf("KVPut empty: %v", err)
	}
	if got, err := reg.KVGet(ctx, key+"-empty"); err != nil || len(got) != 0 {
		t.Fatalf("KVGet empty = %q, %v; want empty, nil", got, err)
	}
}

func testInvalid(t *testing.T, newRegistrar Factory) {
	reg, _ := newRegistrar(t)
	ctx := ctxFor(t, 30*time.Second)
	for _, key := range []string{"", "/abs", "a//b", "a/../b", "trailing/"} {
		if err := reg.KVPut(ctx, key, []byte("x")); !errors.Is(err, registrar.ErrInvalid) {
			t.Errorf("KVPut(%q): %v, want ErrInvalid", key, err)
		}
		if _, err := reg.KVGet(ctx, key); !errors.Is(err, registrar.ErrInvalid) {
			t.Errorf("KVGet(%q): %v, want ErrInvalid", key, err)
		}
		if _, err := reg.Leader(ctx, key); !errors.Is(err, registrar.ErrInvalid) {
			t.Errorf("Leader(%q): %v, want ErrInvalid", key, err)
		}
	}
}

// testClose checks Close ends everything the registrar started: the leak
// check runs after the factory's own cleanups.
func testClose(t *testing.T, newRegistrar Factory) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	reg, c := newRegistrar(t)
	ctx := ctxFor(t, 30*time.Second)
	svc := unique("quilt-test")

	var lock registrar.Lock
	if c.Writer == nil {
		if _, err := reg.Register(ctx, registrar.Registration{Name: svc, ID: svc + "-a", Address: "127.0.0.1:7001", TTL: 3 * time.Second}); err != nil {
			t.Fatalf("Register: %v", err)
		}
		var err error
		if lock, err = reg.Lock(ctx, "test/"+unique("close"), "h1", "127.0.0.1:9001"); err != nil {
			t.Fatalf("Lock: %v", err)
		}
	}
	watch := reg.Watch(ctx, svc, false)
	select {
	case <-watch:
	case <-time.After(5 * time.Second):
		t.Fatal("no first watch result")
	}
	if err := reg.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	deadline := time.After(2 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-watch:
		case <-deadline:
			t.Fatal("watch channel still open 2 s after Close")
		}
	}
	if lock != nil {
		select {
		case <-lock.Lost():
		case <-time.After(2 * time.Second):
			t.Fatal("held lock's Lost not closed by Close")
		}
	}
	if _, err := reg.KVGet(ctx, "test/after-close"); err == nil || errors.Is(err, registrar.ErrNotFound) {
		t.Errorf("KVGet after Close: %v, want an error other than ErrNotFound", err)
	}
	if err := reg.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
