package query_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
)

// TestQueryLatency measures query latency through the Query RPC (gRPC on
// 127.0.0.1, query layer, SQLite store) over a store of QUILT_BENCH_EVENTS
// events (default 1,000,000), and live presence across 5 attached source
// managers. It runs only with QUILT_BENCH_QUERIES=1 (make bench-queries);
// the store is built once and cached in QUILT_BENCH_DIR (default a temp
// dir) so reruns start at once. QUILT_BENCH_CASES, a regexp, runs only the
// cases whose name matches (e.g. "presence", for profiling one path), and
// QUILT_BENCH_ITERS changes the 300 timed queries per case (more give a
// steadier p99).
func TestQueryLatency(t *testing.T) {
	if os.Getenv("QUILT_BENCH_QUERIES") == "" {
		t.Skip("set QUILT_BENCH_QUERIES=1 (make bench-queries) to run the query benchmarks")
	}
	n := 1_000_000
	if v := os.Getenv("QUILT_BENCH_EVENTS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	dir := os.Getenv("QUILT_BENCH_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	dir = filepath.Join(dir, fmt.Sprintf("events-%d", n))
	st, err := sqlitestore.Open(dir, sqlitestore.Options{Synchronous: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	have, err := st.CountEvents(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const sources, servers, channels, users = 5, 4, 50, 10000
	if have < int64(n) {
		start := time.Now()
		rng := rand.New(rand.NewPCG(1, 2))
		words := []string{"deploy", "lunch", "build", "broken", "fixed", "release", "hello", "review", "merge", "coffee"}
		const batch = 1000
		for i := int(have); i < n; i += batch {
			src := fmt.Sprintf("src%d", (i/batch)%sources)
			var evs []*quiltv1.Event
			for j := i; j < min(i+batch, n); j++ {
				u := fmt.Sprintf("user%d", rng.IntN(users))
				ts := base.Add(time.Duration(j) * 2 * time.Second)
				evs = append(evs, &quiltv1.Event{Id: fmt.Sprintf("e%d", j), Source: src, Server: fmt.Sprintf("srv%d", rng.IntN(servers)),
					Protocol: "test", Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE, Time: timestamppb.New(ts), Received: timestamppb.New(ts),
					Channel: fmt.Sprintf("#chan%d", rng.IntN(channels)), User: &quiltv1.User{Transient: u, Persistent: u + "@host", Display: u, Group: u},
					Text: words[rng.IntN(len(words))] + " " + words[rng.IntN(len(words))] + " " + strconv.Itoa(j)})
			}
			if _, err := st.InsertEvents(ctx, src, evs, nil); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("stored %d events in %s", n-int(have), time.Since(start).Round(time.Millisecond))
	}

	var srcs []querytest.Source
	for i := 0; i < 5; i++ {
		srcs = append(srcs, querytest.Source{Name: fmt.Sprintf("live%d", i), Users: 200,
			Servers: map[string][]string{"net": {"#one", "#two", "#three"}}})
	}
	c := querytest.Start(t, querytest.Options{Store: st, Sources: srcs})
	qm := client(t, c)
	end := base.Add(time.Duration(n) * 2 * time.Second)
	rng := rand.New(rand.NewPCG(3, 4))
	cases := []struct {
		name string
		req  func() *quiltv1.QueryRequest
	}{
		{"events channel+time (page 100)", func() *quiltv1.QueryRequest {
			since := base.Add(time.Duration(rng.Int64N(int64(end.Sub(base)))))
			return &quiltv1.QueryRequest{Kind: "events", Limit: 100, Filter: &quiltv1.EventFilter{
				Sources: []string{"src1"}, Channel: fmt.Sprintf("#chan%d", rng.IntN(channels)),
				Since: timestamppb.New(since), Until: timestamppb.New(since.Add(24 * time.Hour))}}
		}},
		{"events by user (page 100)", func() *quiltv1.QueryRequest {
			return &quiltv1.QueryRequest{Kind: "events", Limit: 100, Filter: &quiltv1.EventFilter{User: fmt.Sprintf("user%d", rng.IntN(users))}}
		}},
		{"lastseen user", func() *quiltv1.QueryRequest {
			return &quiltv1.QueryRequest{Kind: "lastseen", Filter: &quiltv1.EventFilter{User: fmt.Sprintf("user%d", rng.IntN(users))}}
		}},
		{"presence across 5 sources", func() *quiltv1.QueryRequest {
			return &quiltv1.QueryRequest{Kind: "presence", Filter: &quiltv1.EventFilter{User: fmt.Sprintf("user%d", 1+rng.IntN(200))}}
		}},
	}
	only := regexp.MustCompile(os.Getenv("QUILT_BENCH_CASES"))
	iters := 300
	if v := os.Getenv("QUILT_BENCH_ITERS"); v != "" {
		if iters, err = strconv.Atoi(v); err != nil || iters < 100 {
			t.Fatalf("QUILT_BENCH_ITERS=%q: want a number >= 100", v)
		}
	}
	// Presence again while every source manager streams events into a
	// store of its own: the live path then shares the links, the query
	// master's readers and the store writer with ingest.
	const rate = 1000 // messages/s per source
	cases = append(cases, struct {
		name string
		req  func() *quiltv1.QueryRequest
	}{fmt.Sprintf("presence, %dk events/s ingest", 5*rate/1000), cases[len(cases)-1].req})
	var busy quiltv1.QueryMasterClient
	for _, tc := range cases {
		if !only.MatchString(tc.name) {
			continue
		}
		qm := qm
		if strings.Contains(tc.name, "ingest") {
			if busy == nil {
				var srcs []querytest.Source
				for i := 0; i < 5; i++ {
					srcs = append(srcs, querytest.Source{Name: fmt.Sprintf("busy%d", i), Users: 200, Rate: rate,
						Servers: map[string][]string{"net": {"#one", "#two", "#three"}}})
				}
				bc := querytest.Start(t, querytest.Options{Sources: srcs})
				busy = client(t, bc)
				bc.WaitEvents(10*time.Second, nil, 5*rate/10) // ingest is running
			}
			qm = busy
		}
		var ds []time.Duration
		rows := int64(0)
		for i := 0; i < iters+10; i++ {
			start := time.Now()
			a := mustRun(t, qm, tc.req())
			if i >= 10 { // warm-up
				ds = append(ds, time.Since(start))
				rows += a.done.Rows
			}
			if len(a.problems) > 0 {
				t.Fatalf("%s: problems %v", tc.name, a.problems)
			}
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		p50, p99 := ds[len(ds)/2], ds[len(ds)*99/100]
		fmt.Printf("bench-queries: %-32s events=%d p50=%s p99=%s avg_rows=%.1f\n", tc.name, n,
			p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), float64(rows)/float64(iters))
	}
}
