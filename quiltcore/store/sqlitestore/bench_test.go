package sqlitestore_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/internal/storeutil"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
)

var words = []string{"deploy", "outage", "server", "restart", "hello", "thanks", "review", "merge", "build", "green",
	"latency", "disk", "memory", "ticket", "lunch", "coffee", "release", "branch", "rollback", "alert"}

// benchEvents makes n realistic events: 200 users, 50 channels, 8 words
// of text, ids unique per (prefix, i).
func benchEvents(prefix string, start, n int, rng *rand.Rand) []*quiltv1.Event {
	evs := make([]*quiltv1.Event, n)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range evs {
		k := start + i
		u := rng.Intn(200)
		text := ""
		for w := 0; w < 8; w++ {
			text += words[rng.Intn(len(words))] + " "
		}
		kind := quiltv1.EventKind_EVENT_KIND_MESSAGE
		if rng.Intn(10) == 0 {
			kind = quiltv1.EventKind_EVENT_KIND_JOIN
		}
		evs[i] = &quiltv1.Event{
			Id: fmt.Sprintf("%s-%09d", prefix, k), Source: "irc", Server: "libera", Protocol: "irc", Kind: kind,
			Time: timestamppb.New(base.Add(time.Duration(k) * 100 * time.Millisecond)),
			User: &quiltv1.User{Transient: fmt.Sprintf("nick%d", u), Persistent: fmt.Sprintf("user%d@host%d.example", u, u%17),
				Display: fmt.Sprintf("Nick %d", u), Group: fmt.Sprintf("nick%d", u)},
			Channel: fmt.Sprintf("#chan%d", rng.Intn(50)), Text: text,
		}
	}
	return evs
}

// eventPool hands out batches of benchEvents' mix with fresh ids and
// times, generated once. Formatting every event anew (fmt.Sprintf and
// string concatenation) cost a sixth of the process's CPU: the timer is
// stopped meanwhile, but on two cores that CPU was taken from the store's
// indexer, running beside it, while the single-threaded raw baseline
// lost nothing to it.
type eventPool struct {
	prefix string
	evs    []*quiltv1.Event
	next   int
}

func newEventPool(prefix string, rng *rand.Rand) *eventPool {
	return &eventPool{prefix: prefix, evs: benchEvents(prefix, 0, 4096, rng)}
}

// batch returns n events numbered from start (ids and times as
// benchEvents gives them). Its events are reused by later batches.
func (p *eventPool) batch(start, n int) []*quiltv1.Event {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	out := make([]*quiltv1.Event, n)
	for i := range out {
		e := p.evs[p.next]
		p.next = (p.next + 1) % len(p.evs)
		k := int64(start + i)
		e.Id = fmt.Sprintf("%s-%09d", p.prefix, k)
		t := base + k*int64(100*time.Millisecond)
		e.Time.Seconds, e.Time.Nanos = t/1e9, int32(t%1e9)
		out[i] = e
	}
	return out
}

func openBench(b *testing.B, dir string) *sqlitestore.Store {
	s, err := sqlitestore.Open(dir, sqlitestore.Options{Synchronous: os.Getenv("QUILT_BENCH_SQLITE_SYNC")})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkInsert reports stored events/s for batches of 100 and 1000,
// and of 1 and 10 (a source manager's batches at chat rates: per-commit
// cost).
func BenchmarkInsert(b *testing.B) {
	for _, size := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			s := openBench(b, b.TempDir())
			defer s.Close()
			pool := newEventPool("e", rand.New(rand.NewSource(1)))
			ctx := context.Background()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				evs := pool.batch(i*size, size)
				b.StartTimer()
				r, err := s.InsertEvents(ctx, "irc", evs, nil)
				if err != nil || r.Stored != size {
					b.Fatalf("%+v, %v", r, err)
				}
			}
			reportCPU(b, cpu0, b.N*size)
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkRawInsert is the baseline: the same rows (same columns and
// values, the same INTEGER PRIMARY KEY) into a table with no secondary
// index, one prepared INSERT per row inside one transaction per batch,
// with the store's default synchronous mode and page size.
func BenchmarkRawInsert(b *testing.B) {
	for _, size := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			sync := os.Getenv("QUILT_BENCH_SQLITE_SYNC")
			if sync == "" {
				sync = "normal"
			}
			db, err := sql.Open("sqlite3", "file:"+filepath.Join(b.TempDir(), "raw.db")+"?_synchronous="+sync)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(1)
			if _, err := db.Exec(fmt.Sprintf("PRAGMA page_size = %d; PRAGMA journal_mode = WAL", sqlitestore.PageSize)); err != nil {
				b.Fatal(err)
			}
			if _, err := db.Exec(`CREATE TABLE raw(id INTEGER PRIMARY KEY, source TEXT, eid TEXT, server TEXT, channel TEXT, kind INTEGER, time_ns INTEGER, ukey TEXT, text TEXT, data BLOB, names TEXT)`); err != nil {
				b.Fatal(err)
			}
			pool := newEventPool("e", rand.New(rand.NewSource(1)))
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				evs := pool.batch(i*size, size)
				b.StartTimer()
				tx, err := db.Begin()
				if err != nil {
					b.Fatal(err)
				}
				st, err := tx.Prepare("INSERT INTO raw VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
				if err != nil {
					b.Fatal(err)
				}
				for j, e := range evs {
					data, names, err := sqlitestore.RowValues(e)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := st.Exec(int64(i*size+j+1), "irc", e.GetId(), e.GetServer(), e.GetChannel(), int64(e.GetKind()), storeutil.TimeNS(e), storeutil.UserKey(e.GetUser()), e.GetText(), data, names); err != nil {
						b.Fatal(err)
					}
				}
				st.Close()
				if err := tx.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0, b.N*size)
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkDuplicates is the de-dup cost: a batch of 1000 events that are
// all already processed.
func BenchmarkDuplicates(b *testing.B) {
	const size = 1000
	s := openBench(b, b.TempDir())
	defer s.Close()
	rng := rand.New(rand.NewSource(1))
	evs := benchEvents("d", 0, size, rng)
	ctx := context.Background()
	if _, err := s.InsertEvents(ctx, "irc", evs, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := s.InsertEvents(ctx, "irc", evs, nil)
		if err != nil || len(r.Duplicates) != size {
			b.Fatalf("%d duplicates, %v", len(r.Duplicates), err)
		}
	}
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "events/s")
}

const historyRows = 1000000

var history struct {
	once sync.Once
	dir  string
	keep bool
	err  error
	took time.Duration
}

// historyDir builds the 1M-event database once per benchmark process.
func historyDir(b *testing.B) string {
	history.once.Do(func() {
		// QUILT_BENCH_HISTORY_DIR keeps the database between runs (built
		// there on first use): building 1M events dominates a run.
		if keep := os.Getenv("QUILT_BENCH_HISTORY_DIR"); keep != "" {
			if _, err := os.Stat(filepath.Join(keep, sqlitestore.FileName)); err == nil {
				history.dir = keep
				return
			}
			if err := os.MkdirAll(keep, 0o750); err != nil {
				history.err = err
				return
			}
			history.keep = true
		}
		dir, err := os.MkdirTemp("", "quilt-bench-history-")
		if history.keep {
			dir, err = os.Getenv("QUILT_BENCH_HISTORY_DIR"), nil
		}
		if err != nil {
			history.err = err
			return
		}
		history.dir = dir
		start := time.Now()
		s, err := sqlitestore.Open(dir, sqlitestore.Options{Synchronous: "normal"})
		if err != nil {
			history.err = err
			return
		}
		rng := rand.New(rand.NewSource(7))
		for k := 0; k < historyRows; k += 5000 {
			if _, err := s.InsertEvents(context.Background(), "irc", benchEvents("h", k, 5000, rng), nil); err != nil {
				history.err = err
				return
			}
		}
		history.err = s.Close()
		history.took = time.Since(start)
	})
	if history.err != nil {
		b.Fatal(history.err)
	}
	return history.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if history.dir != "" && os.Getenv("QUILT_BENCH_HISTORY_DIR") == "" {
		os.RemoveAll(history.dir)
	}
	os.Exit(code)
}

// BenchmarkHistoryPage reports p50/p99 latency of one 100-event history
// page over 1M stored events, per query shape.
func BenchmarkHistoryPage(b *testing.B) {
	dir := historyDir(b)
	if history.took > 0 {
		b.Logf("built %d events in %v (%.0f events/s)", historyRows, history.took, historyRows/history.took.Seconds())
	}
	s := openBench(b, dir)
	defer s.Close()
	ctx := context.Background()
	deep, err := s.QueryEvents(ctx, store.EventQuery{Limit: 5000, Filter: &quiltv1.EventFilter{Channel: "#chan3"}})
	if err != nil {
		b.Fatal(err)
	}
	mid := timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(historyRows / 2 * 100 * time.Millisecond))
	shapes := []struct {
		name string
		q    store.EventQuery
	}{
		{"all", store.EventQuery{}},
		{"oldest", store.EventQuery{OldestFirst: true}},
		{"channel", store.EventQuery{Filter: &quiltv1.EventFilter{Channel: "#chan7"}}},
		{"channel-deep-page", store.EventQuery{Filter: &quiltv1.EventFilter{Channel: "#chan3"}, PageToken: deep.NextPageToken}},
		{"user", store.EventQuery{Filter: &quiltv1.EventFilter{User: "Nick 42"}}},
		{"user-glob", store.EventQuery{Filter: &quiltv1.EventFilter{User: "nick4?"}}},
		{"user-until", store.EventQuery{Filter: &quiltv1.EventFilter{User: "nick42", Until: mid}}},
		{"source-kinds", store.EventQuery{Filter: &quiltv1.EventFilter{Sources: []string{"irc"}, Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_JOIN}}}},
		{"text", store.EventQuery{Filter: &quiltv1.EventFilter{Text: "outage rollback"}}},
		// About 1 event in 1300 holds this phrase: too few for the newest
		// 20k rows to fill a page, so the full-text index answers.
		{"text-sparse", store.EventQuery{Filter: &quiltv1.EventFilter{Text: "rollback alert outage"}}},
		{"channel-text", store.EventQuery{Filter: &quiltv1.EventFilter{Channel: "#chan7", Text: "coffee"}}},
		{"time-range", store.EventQuery{Filter: &quiltv1.EventFilter{Since: mid}, OldestFirst: true}},
	}
	for _, sh := range shapes {
		b.Run(sh.name, func(b *testing.B) {
			durs := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				p, err := s.QueryEvents(ctx, sh.q)
				durs = append(durs, time.Since(t0))
				if err != nil || len(p.Events) == 0 {
					b.Fatalf("%d events, %v", len(p.Events), err)
				}
			}
			reportPercentiles(b, durs)
		})
	}
	b.Run("lastseen", func(b *testing.B) {
		durs := make([]time.Duration, 0, b.N)
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			rows, err := s.LastSeen(ctx, store.LastSeenQuery{User: fmt.Sprintf("nick%d", i%200)})
			durs = append(durs, time.Since(t0))
			if err != nil || len(rows) != 1 || rows[0].GetLastMessage() == nil {
				b.Fatalf("%v, %v", rows, err)
			}
		}
		reportPercentiles(b, durs)
	})
}

func reportPercentiles(b *testing.B, durs []time.Duration) {
	sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
	at := func(p float64) float64 {
		return float64(durs[int(p*float64(len(durs)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

// cpuTime is the process's user+system CPU time. The events/s figures are
// wall-clock and move with whatever else the machine runs; CPU per event
// is the steadier comparison. It counts the benchmark's own event
// generation too (outside the timer), the same for the store and the raw
// baseline.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, since time.Duration, events int) {
	b.ReportMetric(float64((cpuTime()-since).Microseconds())/float64(events), "cpu-us/event")
}
