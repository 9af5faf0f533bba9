package query_test

import (
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster/query/querytest"
)

func client(t *testing.T, c *querytest.Cluster) quiltv1.QueryMasterClient {
	t.Helper()
	conn, err := grpc.NewClient(c.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return quiltv1.NewQueryMasterClient(conn)
}

type answer struct {
	header   *quiltv1.QueryHeader
	rows     []*quiltv1.QueryResult
	problems []*quiltv1.SourceProblem
	done     *quiltv1.QueryDone
}

func run(t *testing.T, qm quiltv1.QueryMasterClient, req *quiltv1.QueryRequest) (*answer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := qm.Query(ctx, req)
	if err != nil {
		return nil, err
	}
	a := &answer{}
	for {
		res, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return a, err
		}
		switch r := res.Result.(type) {
		case *quiltv1.QueryResult_Header:
			if a.header != nil || len(a.rows) > 0 {
				t.Fatalf("header not first or twice")
			}
			a.header = r.Header
		case *quiltv1.QueryResult_Problem:
			a.problems = append(a.problems, r.Problem)
		case *quiltv1.QueryResult_Done:
			a.done = r.Done
		default:
			if a.done != nil {
				t.Fatalf("row after done")
			}
			a.rows = append(a.rows, res)
		}
	}
	if a.header == nil || a.done == nil {
		t.Fatalf("answer without header or done: %+v", a)
	}
	if a.done.Rows != int64(len(a.rows)) {
		t.Fatalf("done.rows = %d, got %d rows", a.done.Rows, len(a.rows))
	}
	return a, nil
}

func mustRun(t *testing.T, qm quiltv1.QueryMasterClient, req *quiltv1.QueryRequest) *answer {
	t.Helper()
	a, err := run(t, qm, req)
	if err != nil {
		t.Fatalf("query %v: %v", req, err)
	}
	return a
}

func startCluster(t *testing.T) *querytest.Cluster {
	return querytest.Start(t, querytest.Options{
		ShippedPatterns: "../../etc/quilt/patterns.d",
		Sources: []querytest.Source{
			{Name: "alpha", Servers: map[string][]string{"net1": {"#a", "#b"}}, Users: 3},
			{Name: "beta", Servers: map[string][]string{"net2": {"#c"}}, Users: 2},
		},
	})
}

func TestLiveKinds(t *testing.T) {
	c := startCluster(t)
	qm := client(t, c)

	a := mustRun(t, qm, &quiltv1.QueryRequest{Kind: "presence", Filter: &quiltv1.EventFilter{User: "user2"}})
	var got []string
	for _, r := range a.rows {
		p := r.GetPresence()
		got = append(got, p.Source+"/"+p.Server+"/"+p.Channel+"/"+p.Member.GetUser().GetTransient())
	}
	sort.Strings(got)
	want := "alpha/net1/#a/user2 alpha/net1/#b/user2 beta/net2/#c/user2"
	if strings.Join(got, " ") != want {
		t.Errorf("presence user2 = %v, want %s", got, want)
	}
	if len(a.problems) != 0 {
		t.Errorf("problems: %v", a.problems)
	}
	if strings.Join(a.header.Sources, ",") != "alpha,beta" {
		t.Errorf("header sources %v", a.header.Sources)
	}

	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "members", Filter: &quiltv1.EventFilter{Sources: []string{"alpha"}, Channel: "#a"}})
	got = nil
	for _, r := range a.rows {
		got = append(got, r.GetMember().GetMember().GetUser().GetTransient())
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "quilt user1 user2 user3" {
		t.Errorf("members #a = %v", got)
	}

	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "channels"})
	got = nil
	for _, r := range a.rows {
		got = append(got, r.GetChannel().Source+"/"+r.GetChannel().GetInfo().GetName())
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "alpha/#a alpha/#b beta/#c" {
		t.Errorf("channels = %v", got)
	}

	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "servers"})
	got = nil
	for _, r := range a.rows {
		got = append(got, r.GetServer().Source+"/"+r.GetServer().GetStatus().GetName()+"="+r.GetServer().GetStatus().GetState().String())
	}
	sort.Strings(got)
	if strings.Join(got, " ") != "alpha/net1=SERVER_STATE_CONNECTED beta/net2=SERVER_STATE_CONNECTED" {
		t.Errorf("servers = %v", got)
	}

	// A detached source is reported, never silently missing.
	c.StopSource("beta")
	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "presence", Filter: &quiltv1.EventFilter{User: "user1"}})
	if len(a.problems) != 1 || a.problems[0].Source != "beta" || a.problems[0].Reason != "detached" {
		t.Errorf("problems after stopping beta = %v", a.problems)
	}
	if len(a.rows) != 2 {
		t.Errorf("rows after stopping beta = %d, want 2", len(a.rows))
	}
	_, err := run(t, qm, &quiltv1.QueryRequest{Kind: "presence", Filter: &quiltv1.EventFilter{Sources: []string{"nosuch"}}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("unknown source: %v, want NotFound", err)
	}
}

func TestLiveTimeout(t *testing.T) {
	c := startCluster(t)
	qm := client(t, c)
	// A source manager that never answers.
	attachMute(t, c.Addr)
	start := time.Now()
	a := mustRun(t, qm, &quiltv1.QueryRequest{Kind: "servers", SourceTimeout: durationpb.New(200 * time.Millisecond)})
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %s with a 200ms source timeout", el)
	}
	if len(a.problems) != 1 || a.problems[0].Source != "mute" || a.problems[0].Reason != "timeout" {
		t.Errorf("problems = %v, want mute timeout", a.problems)
	}
	if len(a.rows) != 2 {
		t.Errorf("rows = %d, want 2 (alpha, beta)", len(a.rows))
	}
	rec, err := qm.GetQuery(context.Background(), &quiltv1.GetQueryRequest{Id: a.header.QueryId})
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Problems) != 1 || rec.State != quiltv1.QueryState_QUERY_STATE_DONE || rec.Rows != 2 {
		t.Errorf("record = %v", rec)
	}
}

func TestHistoryKinds(t *testing.T) {
	c := startCluster(t)
	qm := client(t, c)
	c.Raw("alpha", "net1", "msg user1 #a hello world")
	c.Raw("alpha", "net1", "msg user2 #a second line")
	c.Raw("alpha", "net1", "msg user1 #b HELLO again")
	c.Raw("beta", "net2", "msg user1 #c hi from beta")
	c.WaitEvents(5*time.Second, &quiltv1.EventFilter{Kinds: []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE}}, 4)

	msg := []quiltv1.EventKind{quiltv1.EventKind_EVENT_KIND_MESSAGE}
	a := mustRun(t, qm, &quiltv1.QueryRequest{Kind: "events", Filter: &quiltv1.EventFilter{Kinds: msg, Text: "hello"}})
	var got []string
	for _, r := range a.rows {
		got = append(got, r.GetEvent().Channel+":"+r.GetEvent().Text)
	}
	if strings.Join(got, "|") != "#b:HELLO again|#a:hello world" {
		t.Errorf("events text=hello newest first = %v", got)
	}
	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "events", OldestFirst: true, Limit: 1,
		Filter: &quiltv1.EventFilter{Kinds: msg, User: "user1"}})
	if len(a.rows) != 1 || a.rows[0].GetEvent().Text != "hello world" || a.done.NextPageToken == "" {
		t.Fatalf("first page = %v, next %q", a.rows, a.done.GetNextPageToken())
	}
	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "events", OldestFirst: true, Limit: 5, PageToken: a.done.NextPageToken,
		Filter: &quiltv1.EventFilter{Kinds: msg, User: "user1"}})
	got = nil
	for _, r := range a.rows {
		got = append(got, r.GetEvent().Text)
	}
	if strings.Join(got, "|") != "HELLO again|hi from beta" {
		t.Errorf("second page = %v", got)
	}
	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "events", Filter: &quiltv1.EventFilter{Kinds: msg, TextRegex: "^h.*d$"}})
	if len(a.rows) != 1 || a.rows[0].GetEvent().Text != "hello world" {
		t.Errorf("regex rows = %v", a.rows)
	}
	if _, err := run(t, qm, &quiltv1.QueryRequest{Kind: "events", Filter: &quiltv1.EventFilter{TextRegex: "(("}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad regex: %v", err)
	}

	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "lastseen", Filter: &quiltv1.EventFilter{User: "user2"}})
	if len(a.rows) != 1 {
		t.Fatalf("lastseen user2 rows = %v", a.rows)
	}
	ls := a.rows[0].GetLastSeen()
	if ls.GetLastMessage().GetText() != "second line" || ls.Channel != "#a" || ls.Source != "alpha" {
		t.Errorf("lastseen user2 = %v", ls)
	}

	a = mustRun(t, qm, &quiltv1.QueryRequest{Kind: "sources"})
	got = nil
	for _, r := range a.rows {
		got = append(got, r.GetSource().Name)
	}
	if strings.Join(got, ",") != "alpha,beta" {
		t.Errorf("sources = %v", got)
	}

	if _, err := run(t, qm, &quiltv1.QueryRequest{Kind: "bogus"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "lastseen") {
		t.Errorf("bogus kind: %v", err)
	}

	// History: every query above, newest first, with states.
	h, err := qm.ListQueries(context.Background(), &quiltv1.ListQueriesRequest{Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Queries) != 3 || h.Queries[0].Kind != "bogus" || h.Queries[0].State != quiltv1.QueryState_QUERY_STATE_FAILED ||
		h.Queries[1].Kind != "sources" || h.Queries[1].State != quiltv1.QueryState_QUERY_STATE_DONE || h.Queries[1].Rows != 2 {
		t.Errorf("history = %v", h.Queries)
	}
	if _, err := qm.GetQuery(context.Background(), &quiltv1.GetQueryRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetQuery nope: %v", err)
	}
}

func TestPatterns(t *testing.T) {
	c := startCluster(t)
	qm := client(t, c)
	c.Raw("alpha", "net1", "msg user3 #b the cake is a lie")
	c.WaitEvents(5*time.Second, &quiltv1.EventFilter{Text: "cake"}, 1)

	pl, err := qm.ListPatterns(context.Background(), &quiltv1.ListPatternsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range pl.Patterns {
		names = append(names, p.Name+"="+p.Kind)
	}
	if strings.Join(names, " ") != "lastseen=lastseen said=events where=presence" {
		t.Errorf("patterns = %v", names)
	}

	a := mustRun(t, qm, &quiltv1.QueryRequest{Pattern: "lastseen", Vars: map[string]string{"user": "user3"}})
	if len(a.rows) != 1 || a.rows[0].GetLastSeen().GetLastMessage().GetText() != "the cake is a lie" {
		t.Errorf("lastseen pattern rows = %v", a.rows)
	}
	a = mustRun(t, qm, &quiltv1.QueryRequest{Pattern: "said", Vars: map[string]string{"text": "CAKE"}})
	if len(a.rows) != 1 || a.header.Kind != "events" {
		t.Errorf("said pattern rows = %v", a.rows)
	}
	a = mustRun(t, qm, &quiltv1.QueryRequest{Pattern: "said", Vars: map[string]string{"text": "cake", "channel": "#a"}})
	if len(a.rows) != 0 {
		t.Errorf("said in #a rows = %v", a.rows)
	}
	a = mustRun(t, qm, &quiltv1.QueryRequest{Pattern: "where", Vars: map[string]string{"user": "user3"}})
	if len(a.rows) != 2 {
		t.Errorf("where user3 rows = %v", a.rows)
	}

	_, err = run(t, qm, &quiltv1.QueryRequest{Pattern: "lastseen"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "missing variable user") ||
		!strings.Contains(err.Error(), "user (string, required)") || !strings.Contains(err.Error(), "limit (int, default 10)") {
		t.Errorf("missing variable: %v", err)
	}
	_, err = run(t, qm, &quiltv1.QueryRequest{Pattern: "lastseen", Vars: map[string]string{"user": "x", "nick": "y"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `no variable "nick"`) || !strings.Contains(err.Error(), "user (string") {
		t.Errorf("unknown variable: %v", err)
	}
	_, err = run(t, qm, &quiltv1.QueryRequest{Pattern: "lastseen", Vars: map[string]string{"user": "x", "limit": "ten"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not an int") {
		t.Errorf("bad int: %v", err)
	}
	_, err = run(t, qm, &quiltv1.QueryRequest{Pattern: "nosuch"})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "patterns: lastseen, said, where") {
		t.Errorf("unknown pattern: %v", err)
	}
	h, err := qm.ListQueries(context.Background(), &quiltv1.ListQueriesRequest{Limit: 1})
	if err != nil || len(h.Queries) != 1 || h.Queries[0].Pattern != "nosuch" || h.Queries[0].State != quiltv1.QueryState_QUERY_STATE_FAILED {
		t.Errorf("history of a refused pattern: %v %v", h, err)
	}
}

// attachMute attaches a source manager named "mute" by hand, on a raw
// stream that reads what the query master sends and never answers, until
// the test ends.
func attachMute(t *testing.T, addr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	st, err := quiltv1.NewSourceLinkClient(conn).Attach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&quiltv1.SourceMessage{Msg: &quiltv1.SourceMessage_Hello{Hello: &quiltv1.Hello{Name: "mute", Protocol: "test", InstanceId: "x"}}})
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
}
