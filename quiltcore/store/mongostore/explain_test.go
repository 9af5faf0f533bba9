package mongostore

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/testenv"
)

// TestExplain checks on a real MongoDB which index each query shape uses.
// FerretDB's plans say nothing about MongoDB's, so it runs only with
// QUILT_TEST_MONGODB_URI (run with -v to see the plans).
func TestExplain(t *testing.T) {
	uri := os.Getenv("QUILT_TEST_MONGODB_URI")
	if uri == "" {
		t.Skip("QUILT_TEST_MONGODB_URI not set: query plans are only meaningful on a real MongoDB")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Open(ctx, Options{URI: uri, Database: testenv.DatabaseName(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.db.Drop(context.Background()); s.Close() }()
	var evs []*quiltv1.Event
	for i := 0; i < 2000; i++ {
		evs = append(evs, &quiltv1.Event{Id: fmt.Sprint(i), Channel: fmt.Sprintf("#c%d", i%20), Kind: quiltv1.EventKind(1 + i%5),
			Time: timestamppb.New(time.Unix(1700000000+int64(i), 0)), User: &quiltv1.User{Transient: fmt.Sprintf("u%d", i%50)}, Text: "hello"})
	}
	if _, err := s.InsertEvents(ctx, "src", evs, nil); err != nil {
		t.Fatal(err)
	}
	sortDesc := bson.D{d("time", -1), d("seq", -1)}
	for _, c := range []struct {
		name  string
		f     *quiltv1.EventFilter
		index string
	}{
		{"all", nil, "time_seq"},
		{"channel", &quiltv1.EventFilter{Channel: "#c3"}, "channel_time_seq"},
		{"user", &quiltv1.EventFilter{User: "u7"}, "names_time_seq"},
		{"user glob", &quiltv1.EventFilter{User: "u1*"}, "names_time_seq"},
		{"source", &quiltv1.EventFilter{Sources: []string{"src"}}, "source_time_seq"},
		{"text", &quiltv1.EventFilter{Text: "hel"}, "time_seq"},
	} {
		var out bson.M
		cmd := bson.D{d("explain", bson.D{d("find", CollEvents), d("filter", filter(c.f)), d("sort", sortDesc), d("limit", 101)}), d("verbosity", "queryPlanner")}
		if err := s.db.RunCommand(ctx, cmd).Decode(&out); err != nil {
			t.Fatal(err)
		}
		plan := fmt.Sprint(out["queryPlanner"].(bson.M)["winningPlan"])
		t.Logf("%s: %s", c.name, plan)
		if !strings.Contains(plan, c.index) {
			t.Errorf("%s: winning plan does not use %s: %s", c.name, c.index, plan)
		}
		if strings.Contains(plan, "SORT") && !strings.Contains(plan, "SORT_KEY") {
			t.Errorf("%s: winning plan sorts in memory: %s", c.name, plan)
		}
	}
}
