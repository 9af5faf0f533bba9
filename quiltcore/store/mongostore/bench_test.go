package mongostore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store/mongostore"
	"github.com/quilt/quilt/quiltcore/testenv"
)

func benchStore(b *testing.B) *mongostore.Store {
	uri := testenv.FerretDB(b)
	s, err := mongostore.Open(context.Background(), mongostore.Options{URI: uri, Database: testenv.DatabaseName(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Database().Drop(context.Background()); s.Close() })
	return s
}

func benchEvents(start, n int) []*quiltv1.Event {
	evs := make([]*quiltv1.Event, n)
	for i := range evs {
		k := start + i
		evs[i] = &quiltv1.Event{Id: fmt.Sprintf("e%09d", k), Server: "libera", Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE, Channel: fmt.Sprintf("#c%d", k%50),
			Time: timestamppb.New(time.Unix(1700000000, int64(k)*1e8)), User: &quiltv1.User{Transient: fmt.Sprintf("nick%d", k%200), Persistent: fmt.Sprintf("u%d@host", k%200)},
			Text: "deploy outage server restart hello thanks review merge"}
	}
	return evs
}

// BenchmarkInsert reports stored events/s (FerretDB unless
// QUILT_TEST_MONGODB_URI points at a real MongoDB).
func BenchmarkInsert(b *testing.B) {
	for _, size := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			s := benchStore(b)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				evs := benchEvents(i*size, size)
				b.StartTimer()
				if r, err := s.InsertEvents(context.Background(), "irc", evs, nil); err != nil || r.Stored != size {
					b.Fatalf("%+v, %v", r, err)
				}
			}
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkDuplicates is the de-dup cost: a batch of 1000 already-processed events.
func BenchmarkDuplicates(b *testing.B) {
	s := benchStore(b)
	evs := benchEvents(0, 1000)
	if _, err := s.InsertEvents(context.Background(), "irc", evs, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, err := s.InsertEvents(context.Background(), "irc", evs, nil); err != nil || len(r.Duplicates) != 1000 {
			b.Fatalf("%d duplicates, %v", len(r.Duplicates), err)
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}
