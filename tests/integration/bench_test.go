package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/sourcemanagers/runtime"
)

// benchCluster is a cluster whose logs are dropped: at 100k+ events/s
// logging through t.Log would be what is measured.
func benchCluster(b *testing.B, kind string) *cluster {
	b.Helper()
	return newCluster(quietTB{b}, kind)
}

type quietTB struct{ *testing.B }

func (q quietTB) Log(args ...any) {}

// BenchmarkPipeline measures events/s from the test driver's session
// through the runtime, the link (batches of 512), the query master and the
// store: one op is one event, stored and acknowledged.
//
// The link runs with its default settings (a buffer of 100k unacknowledged
// events): a larger buffer only lets the session run ahead of the query
// master, and the heap it then holds is paid for in GC and page faults by
// both ends of the pipeline.
func BenchmarkPipeline(b *testing.B) {
	for _, kind := range []string{"discard", "sqlite"} {
		b.Run(kind, func(b *testing.B) {
			c := benchCluster(b, kind)
			c.startSM(smConfig("bench", "net"), runtime.LinkOptions{})
			eventually(b, 10*time.Second, "attached", func() bool { return c.attached("bench") })
			sm := c.sms["bench"]
			eventually(b, 10*time.Second, "idle", func() bool { return sm.Pending() == 0 })
			var before int64
			if c.discard != nil {
				before = c.discard.Stored()
			}
			b.ResetTimer()
			c.emit("bench", "net", b.N)
			for sm.Pending() > 0 {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			// A figure counts only if every event arrived.
			if c.discard != nil {
				if got := c.discard.Stored() - before; got < int64(b.N) {
					b.Fatalf("the discarding store took %d events, want at least %d", got, b.N)
				}
			} else if got := c.countMessages("bench"); got != int64(b.N) {
				b.Fatalf("the store holds %d messages, want %d", got, b.N)
			}
		})
	}
}

// BenchmarkActRoundTrip measures Act → query master → source manager →
// test driver → ActionResult, sequential and with 16 concurrent callers
// (16 goroutines per CPU, b.SetParallelism). With servers=1 every action
// goes through the one server's command queue, which runs them one at a
// time in order (seed 000; the test servers have no throttle): concurrent
// callers only overlap the transport hops. servers=4 spreads the callers
// over four servers' queues, as actions to different networks would be.
func BenchmarkActRoundTrip(b *testing.B) {
	for _, v := range []struct{ callers, servers int }{{1, 1}, {16, 1}, {16, 4}} {
		b.Run(fmt.Sprintf("callers=%d/servers=%d", v.callers, v.servers), func(b *testing.B) {
			c := benchCluster(b, "discard")
			var names []string
			for i := range v.servers {
				names = append(names, fmt.Sprintf("net%d", i+1))
			}
			c.startSM(smConfig("bench", names...), runtime.LinkOptions{})
			eventually(b, 10*time.Second, "attached", func() bool { return c.attached("bench") })
			for _, n := range names {
				c.emit("bench", n, 1) // the session is up
			}
			var next atomic.Int64
			b.SetParallelism(v.callers)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				srv := names[int(next.Add(1))%len(names)]
				req := &quiltv1.ActRequest{Action: &quiltv1.Action{Source: "bench", Server: srv,
					Kind: quiltv1.ActionKind_ACTION_KIND_SEND, Target: "#c", Text: "ping"}}
				for pb.Next() {
					res, err := c.qm.Act(context.Background(), req)
					if err != nil || !res.Ok {
						b.Errorf("act on %s: %v %v", srv, res, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "acts/s")
		})
	}
}

var _ = slog.New(slog.NewTextHandler(io.Discard, nil))
