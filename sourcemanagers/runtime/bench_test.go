package runtime_test

import (
	"context"
	"fmt"
	goruntime "runtime"
	"strconv"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/model"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// floodDriver is a ClientDriver whose session runs fn once connected.
type floodDriver struct {
	fn func(ctx context.Context, emit runtime.Emitter)
}

func (floodDriver) Protocol() string { return "test" }

func (d floodDriver) NewClient(runtime.SessionConfig, runtime.ClientDeps) (runtime.Client, error) {
	return floodClient(d), nil
}

type floodClient floodDriver

func (c floodClient) Run(ctx context.Context, emit runtime.Emitter, connected func(*quiltv1.User)) error {
	connected(&quiltv1.User{Transient: "bot"})
	c.fn(ctx, emit)
	<-ctx.Done()
	return ctx.Err()
}

func (floodClient) Do(context.Context, *quiltv1.Action) (int, error) { return 0, nil }

// BenchmarkPipeline: events/s from a session through the runtime (maps,
// ids) and the link (batches, seqs, buffer) to a query master over bufconn
// that counts and acknowledges.
func BenchmarkPipeline(b *testing.B) {
	qm := newFakeQM()
	qm.discard = true
	const chunk = 256
	n := b.N
	start := make(chan struct{})
	drv := floodDriver{fn: func(ctx context.Context, emit runtime.Emitter) {
		<-start
		users := make([]string, 100)
		for i := range users {
			users[i] = "user" + strconv.Itoa(i)
		}
		now := time.Now()
		for sent := 0; sent < n; {
			k := min(chunk, n-sent)
			evs := make([]*quiltv1.Event, k)
			for i := range evs {
				evs[i] = model.NewMessage(now, &quiltv1.User{Transient: users[(sent+i)%len(users)]}, "#bench", "hello world")
			}
			if emit.Emit(ctx, evs, nil) != nil {
				return
			}
			sent += k
		}
	}}
	cfg := &config.SourceManager{Name: "sm", Protocol: config.ProtocolTest, Enabled: true, ConnectionCycle: time.Minute,
		Servers: []config.Server{{Name: "net", Enabled: true}}}
	h := startLinkedWith(b, qm, cfg, drv, runtime.LinkOptions{})
	_ = h
	qm.stream(b)
	b.ResetTimer()
	t0 := time.Now()
	close(start)
	// Not qm.until: its 10s deadline fails a million events on a busy
	// machine, and a benchmark should report slowness, not fail on it.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		qm.mu.Lock()
		got := qm.counted
		qm.mu.Unlock()
		if got >= n+1 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d events arrived in 5 minutes", got, n+1)
		}
		select {
		case <-qm.got:
		case <-time.After(time.Millisecond):
		}
	}
	el := time.Since(t0)
	b.StopTimer()
	b.ReportMetric(float64(n)/el.Seconds(), "events/s")
}

// BenchmarkMemoryPerUser: heap per tracked user with 100k users in 10k
// channels of 30 members (each user in 3 channels).
func BenchmarkMemoryPerUser(b *testing.B) {
	const users, channels, per = 100_000, 10_000, 30
	for b.Loop() {
		done := make(chan struct{})
		drv := floodDriver{fn: func(ctx context.Context, emit runtime.Emitter) {
			defer close(done)
			now := time.Now()
			for c := 0; c < channels; c++ {
				ch := "#c" + strconv.Itoa(c)
				j := model.NewEvent(quiltv1.EventKind_EVENT_KIND_JOIN, now, &quiltv1.User{Transient: "bot"})
				j.Channel = ch
				ms := model.NewEvent(quiltv1.EventKind_EVENT_KIND_MEMBERS, now, nil)
				ms.Channel = ch
				for k := 0; k < per; k++ {
					u := (c*10 + k) % users
					nick := "user" + strconv.Itoa(u)
					ms.Members = append(ms.Members, &quiltv1.Member{User: &quiltv1.User{
						Transient: nick, Persistent: "~" + nick + "@host.example.org", Display: nick, Group: nick}})
				}
				if emit.Emit(ctx, []*quiltv1.Event{j, ms}, nil) != nil {
					return
				}
			}
		}}
		cfg := &config.SourceManager{Name: "sm", Protocol: config.ProtocolTest, Enabled: true, ConnectionCycle: time.Minute,
			Servers: []config.Server{{Name: "net", Enabled: true}}}
		var before, after goruntime.MemStats
		goruntime.GC()
		goruntime.ReadMemStats(&before)
		m, err := runtime.New(runtime.Options{Config: cfg, Drivers: []runtime.Driver{drv}})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan struct{})
		go func() { defer close(stopped); _ = m.Run(ctx) }()
		<-done
		goruntime.GC()
		goruntime.GC()
		goruntime.ReadMemStats(&after)
		s := m.Server("net")
		if n := s.TrackedUsers(); n != users+1 {
			b.Fatalf("tracked %d users, want %d", n, users+1)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/users, "bytes/user")
		cancel()
		<-stopped
	}
}

var _ = fmt.Sprint
