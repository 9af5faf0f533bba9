package sqlitestore

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// The full-text walk (text searches the newest rows do not answer) must
// return exactly what a scan of every event returns, in order, page after
// page, when event times do not follow insertion order.
func TestFTSWalkMatchesScan(t *testing.T) {
	s := openT(t, t.TempDir())
	defer s.Close()
	if !s.hasFTS {
		t.Skip("built without -tags sqlite_fts5")
	}
	oldWindow, oldBlock := textScanWindow, ftsBlocks
	textScanWindow, ftsBlocks = 5, 3
	defer func() { textScanWindow, ftsBlocks = oldWindow, oldBlock }()

	words := []string{"deploy", "outage", "Server", "restart", "hello", "rollback", "alert", "Ärger", "merge"}
	rng := rand.New(rand.NewSource(3))
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type ev struct {
		id, text, channel string
		at                time.Time
	}
	var all []ev
	perm := rng.Perm(6000)
	for b := 0; b < 6; b++ {
		var batch []*quiltv1.Event
		for i := 0; i < 1000; i++ {
			k := b*1000 + i
			var w []string
			for j := 0; j < 5; j++ {
				w = append(w, words[rng.Intn(len(words))])
			}
			// Mostly increasing times, with a tenth far out of order.
			at := base.Add(time.Duration(k) * time.Second)
			if rng.Intn(10) == 0 {
				at = base.Add(time.Duration(perm[k]) * time.Second).Add(time.Millisecond)
			}
			e := ev{id: fmt.Sprintf("w-%d", k), text: strings.Join(w, " "), channel: fmt.Sprintf("#c%d", k%3), at: at}
			all = append(all, e)
			batch = append(batch, &quiltv1.Event{Id: e.id, Source: "irc", Server: "net", Protocol: "irc", Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE,
				Time: timestamppb.New(at), User: &quiltv1.User{Transient: "n", Group: "n"}, Channel: e.channel, Text: e.text})
		}
		mustInsert(t, s, batch)
	}
	for _, tc := range []struct {
		text, channel string
		oldest        bool
	}{
		{"rollback alert outage", "", false},
		{"rollback alert outage", "", true},
		{"back ale", "#c1", false},
		{"ärger mer", "", false},
		{"SERVER RESTART", "", true},
		{"lert", "#c2", true},
	} {
		var want []string
		matching := []ev{}
		for _, e := range all {
			if strings.Contains(strings.ToLower(e.text), strings.ToLower(tc.text)) && (tc.channel == "" || e.channel == tc.channel) {
				matching = append(matching, e)
			}
		}
		sort.SliceStable(matching, func(i, j int) bool {
			if tc.oldest {
				return matching[i].at.Before(matching[j].at)
			}
			return matching[i].at.After(matching[j].at)
		})
		for _, e := range matching {
			want = append(want, e.id)
		}
		var got []string
		token := ""
		for {
			p, err := s.QueryEvents(context.Background(), store.EventQuery{Filter: &quiltv1.EventFilter{Text: tc.text, Channel: tc.channel}, OldestFirst: tc.oldest, Limit: 50, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range p.Events {
				got = append(got, e.GetId())
			}
			if p.NextPageToken == "" {
				break
			}
			token = p.NextPageToken
		}
		if len(want) < 10 {
			t.Fatalf("%q: only %d matches; the test needs more", tc.text, len(want))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%q channel %q oldest %v: walk found %d events, scan %d; first difference at %d", tc.text, tc.channel, tc.oldest, len(got), len(want), firstDiff(got, want))
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// A text block indexed while its ids were still filling in is rebuilt
// whole when more events land in it, and cleanup rebuilds a block from
// the events it keeps: both are found through the full-text index, and
// removed texts are gone from it.
func TestTextBlocksFillAndCleanup(t *testing.T) {
	s := openT(t, t.TempDir())
	defer s.Close()
	if !s.hasFTS {
		t.Skip("built without -tags sqlite_fts5")
	}
	oldWindow := textScanWindow
	textScanWindow = 1 // answer from the full-text index, not the newest rows
	defer func() { textScanWindow = oldWindow }()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	batch := func(prefix, text string, at time.Time) ([]*quiltv1.Event, []string) {
		evs := ixEvents(prefix, 10, "#c", at)
		var want []string
		for i := len(evs) - 1; i >= 0; i-- {
			evs[i].Text = fmt.Sprintf("%d %s", i, text)
			want = append(want, evs[i].GetId())
		}
		return evs, want
	}
	zebras, wantZebras := batch("z", "zebra crossing", at)
	yaks, wantYaks := batch("y", "yak shaving", at.Add(time.Hour))

	mustInsert(t, s, zebras)
	sameIDs(t, "first half of a block", ids(t, s, &quiltv1.EventFilter{Text: "zebra cross"}), wantZebras)
	mustInsert(t, s, yaks)
	sameIDs(t, "second half of the block", ids(t, s, &quiltv1.EventFilter{Text: "yak shav"}), wantYaks)
	sameIDs(t, "first half, after the block was rebuilt", ids(t, s, &quiltv1.EventFilter{Text: "zebra cross"}), wantZebras)

	if _, err := s.Cleanup(context.Background(), at.Add(30*time.Minute), time.Time{}); err != nil {
		t.Fatal(err)
	}
	sameIDs(t, "removed texts", ids(t, s, &quiltv1.EventFilter{Text: "zebra cross"}), nil)
	sameIDs(t, "kept texts", ids(t, s, &quiltv1.EventFilter{Text: "yak shav"}), wantYaks)
	var blocks int
	if err := s.rdb.QueryRow(`SELECT count(*) FROM ix.events_fts WHERE events_fts MATCH '"zeb"'`).Scan(&blocks); err != nil {
		t.Fatal(err)
	}
	if blocks != 0 {
		t.Errorf("%d text blocks still hold the removed texts", blocks)
	}
}
