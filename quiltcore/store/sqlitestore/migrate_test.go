package sqlitestore_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
)

// TestMigrateV1 opens a file laid out as schema version 1 (event_users,
// no events.names, no schema_version) and checks user queries find its
// events afterwards.
func TestMigrateV1(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, sqlitestore.FileName)+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := &quiltv1.Event{Id: "old1", Source: "irc", Server: "libera", Protocol: "irc", Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE,
		Time: timestamppb.New(at), Channel: "#c", Text: "from version one",
		User: &quiltv1.User{Transient: "Alice_", Persistent: "alice@host", Display: "Alice L", Group: "alice"}}
	data, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID`,
		`CREATE TABLE events(id INTEGER PRIMARY KEY, source TEXT NOT NULL, eid TEXT NOT NULL, server TEXT NOT NULL, channel TEXT NOT NULL,
			kind INTEGER NOT NULL, time_ns INTEGER NOT NULL, ukey TEXT NOT NULL, text TEXT NOT NULL, data BLOB NOT NULL)`,
		`CREATE TABLE event_users(name TEXT NOT NULL, time_ns INTEGER NOT NULL, ev INTEGER NOT NULL, ukey TEXT NOT NULL, msg INTEGER NOT NULL,
			PRIMARY KEY(name, time_ns, ev)) WITHOUT ROWID`,
		`CREATE TABLE user_names(name TEXT NOT NULL, ukey TEXT NOT NULL, PRIMARY KEY(name, ukey)) WITHOUT ROWID`,
		`INSERT INTO user_names VALUES ('alice_', 'alice'), ('alice@host', 'alice'), ('alice l', 'alice'), ('alice', 'alice')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	if _, err := db.Exec(`INSERT INTO events VALUES (1, 'irc', 'old1', 'libera', '#c', ?, ?, 'alice', 'from version one', ?)`,
		int64(ev.GetKind()), at.UnixNano(), data); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := sqlitestore.Open(dir, sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for _, u := range []string{"ALICE L", "alice@host", "ali*", "alice_"} {
		p, err := s.QueryEvents(ctx, store.EventQuery{Filter: &quiltv1.EventFilter{User: u}})
		if err != nil || len(p.Events) != 1 || p.Events[0].GetId() != "old1" {
			t.Errorf("user %q after migration: %v, %v", u, p.Events, err)
		}
	}
	if rows, err := s.LastSeen(ctx, store.LastSeenQuery{User: "alice l"}); err != nil || len(rows) != 1 || rows[0].GetLastMessage().GetId() != "old1" {
		t.Errorf("lastseen after migration: %v, %v", rows, err)
	}
	// New events go on beside the migrated one.
	ev2 := proto.Clone(ev).(*quiltv1.Event)
	ev2.Id, ev2.Time = "new1", timestamppb.New(at.Add(time.Second))
	if r, err := s.InsertEvents(ctx, "irc", []*quiltv1.Event{ev2}, nil); err != nil || r.Stored != 1 {
		t.Fatalf("insert after migration: %+v, %v", r, err)
	}
	if p, err := s.QueryEvents(ctx, store.EventQuery{Filter: &quiltv1.EventFilter{User: "Alice_"}}); err != nil || len(p.Events) != 2 || p.Events[0].GetId() != "new1" {
		t.Errorf("after insert: %v, %v", p.Events, err)
	}
}

// TestMigrateV2 opens a file laid out as schema version 2 (channel and
// user indexes and the full-text index inside quilt.db) and checks they
// are gone afterwards and channel, user and text queries answer from the
// index file.
func TestMigrateV2(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(dir, sqlitestore.FileName)+"?_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := &quiltv1.Event{Id: "v2", Source: "irc", Server: "libera", Protocol: "irc", Kind: quiltv1.EventKind_EVENT_KIND_MESSAGE,
		Time: timestamppb.New(at), Channel: "#c", Text: "from version two",
		User: &quiltv1.User{Transient: "bob", Group: "bob"}}
	data, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID`,
		`INSERT INTO meta VALUES ('schema_version', '2')`,
		`CREATE TABLE events(id INTEGER PRIMARY KEY, source TEXT NOT NULL, eid TEXT NOT NULL, server TEXT NOT NULL, channel TEXT NOT NULL,
			kind INTEGER NOT NULL, time_ns INTEGER NOT NULL, ukey TEXT NOT NULL, text TEXT NOT NULL, data BLOB NOT NULL, names TEXT NOT NULL DEFAULT '')`,
		`CREATE INDEX events_channel_time ON events(channel, time_ns)`,
		`CREATE INDEX events_user_time ON events(ukey, time_ns)`,
		`CREATE VIRTUAL TABLE events_fts USING fts5(text, content='events', content_rowid='id', tokenize='trigram')`,
		`CREATE TABLE user_names(name TEXT NOT NULL, ukey TEXT NOT NULL, PRIMARY KEY(name, ukey)) WITHOUT ROWID`,
		`INSERT INTO user_names VALUES ('bob', 'bob')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal("lay out a version 2 file (build with -tags sqlite_fts5): ", q, err)
		}
	}
	if _, err := db.Exec("INSERT INTO events VALUES (1, 'irc', 'v2', 'libera', '#c', ?, ?, 'bob', 'from version two', ?, ?)",
		int64(ev.GetKind()), at.UnixNano(), data, "\x1fbob\x1f"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("INSERT INTO events_fts(rowid, text) VALUES (1, 'from version two')"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := sqlitestore.Open(dir, sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, f := range []*quiltv1.EventFilter{{Channel: "#c"}, {User: "bob"}, {Text: "version two"}} {
		p, err := s.QueryEvents(ctx, store.EventQuery{Filter: f})
		if err != nil || len(p.Events) != 1 || p.Events[0].GetId() != "v2" {
			t.Errorf("filter %v after migration: %v, %v", f, p.Events, err)
		}
	}
	s.Close()
	db, err = sql.Open("sqlite3", "file:"+filepath.Join(dir, sqlitestore.FileName))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var left int
	if err := db.QueryRow("SELECT count(*) FROM sqlite_master WHERE name IN ('events_channel_time', 'events_user_time', 'events_fts')").Scan(&left); err != nil || left != 0 {
		t.Errorf("%d of the version 2 indexes left in %s (%v)", left, sqlitestore.FileName, err)
	}
}
