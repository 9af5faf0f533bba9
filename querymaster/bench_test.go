package querymaster_test

import (
	"fmt"
	"testing"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/qmtest"
)

type quietTB struct{ *testing.B }

func (quietTB) Log(...any) {}

// BenchmarkIngest measures the query master alone: batches of 512 events
// over bufconn into a discarding store, until the last is acked. One op is
// one event.
func BenchmarkIngest(b *testing.B) {
	e := newEnv(quietTB{b}, querymaster.Options{Store: qmtest.NewDiscard()})
	sm := e.attach("bench", "s")
	batch := make([]*quiltv1.Event, 512)
	for i := range batch {
		batch[i] = sm.ev("s", "#c", "user1", "a benchmark message of ordinary length")
	}
	b.ResetTimer()
	var last uint64
	for sent := 0; sent < b.N; sent += len(batch) {
		n := min(len(batch), b.N-sent)
		for i := range n {
			batch[i].Id = fmt.Sprintf("e%d", sent+i)
		}
		last = sm.sendBatch(batch[:n]...)
	}
	sm.waitAck(last)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
