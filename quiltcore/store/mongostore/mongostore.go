// Package mongostore is the MongoDB store, through go.mongodb.org/mongo-driver/v2;
// it is the only importer of the driver.
//
// It uses only what both a real MongoDB and FerretDB v1.24 (the test server)
// implement: no transactions, no $expr, no text, TTL or partial indexes, no
// $lookup/$facet. So:
//   - de-duplication is the unique _id "source/id" of the processed
//     collection, written with unordered InsertMany so one duplicate does not
//     stop a batch;
//   - events are written before their processed ids, with the same unique
//     _id, so the events insert is idempotent: a crash between the two steps
//     leaves events without processed ids (never an acknowledged event
//     lost), and the replay finds the events already there (never a copy);
//   - text search is a case-insensitive $regex of the quoted text.
package mongostore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/quilt/quilt/quiltcore/store"
)

// Options configure Open; they mirror the [mongodb] section of quilt.cfg.
type Options struct {
	// URI is mongodb://... or mongodb+srv://...; it may carry credentials.
	URI string
	// Database defaults to "quilt".
	Database string
	// Username and Password, when set, override the URI's userinfo.
	Username string
	Password string
	// Timeout bounds connecting and server selection (default 10s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Collection names.
const (
	CollEvents    = "events"
	CollProcessed = "processed"
	CollCounters  = "counters"
	CollCursors   = "cursors"
	CollDesired   = "desired"
	CollSources   = "sources"
	CollQueries   = "queries"
	CollChannels  = "channels"
)

// Store is the MongoDB store. Use Open.
type Store struct {
	client  *mongo.Client
	db      *mongo.Database
	log     *slog.Logger
	hosts   string
	secrets []string

	events, processed, counters, cursors, desired, sources, queries, channels *mongo.Collection

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open connects, checks the server answers, and creates the indexes.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.URI == "" {
		return nil, errors.New("mongodb: empty uri; check [mongodb] uri")
	}
	if !strings.HasPrefix(o.URI, "mongodb://") && !strings.HasPrefix(o.URI, "mongodb+srv://") {
		return nil, fmt.Errorf("mongodb: bad uri %s: must start with mongodb:// or mongodb+srv://; check [mongodb] uri", RedactURI(o.URI))
	}
	if o.Database == "" {
		o.Database = "quilt"
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.Default()
	}
	secrets := []string{}
	for _, p := range []string{uriPassword(o.URI), o.Password} {
		if p != "" {
			secrets = append(secrets, p)
		}
	}
	journal := true
	copts := options.Client().
		SetWriteConcern(&writeconcern.WriteConcern{W: writeconcern.WCMajority, Journal: &journal}).
		ApplyURI(o.URI).
		SetRetryWrites(true).
		SetServerSelectionTimeout(o.Timeout).
		SetConnectTimeout(o.Timeout).
		SetAppName("quilt-qmd")
	if o.Username != "" {
		copts.SetAuth(options.Credential{Username: o.Username, Password: o.Password})
	}
	hosts := Hosts(o.URI)
	if err := copts.Validate(); err != nil {
		return nil, fmt.Errorf("mongodb: bad uri %s: %w; check [mongodb] uri", RedactURI(o.URI), scrub(err, secrets...))
	}
	client, err := mongo.Connect(copts)
	if err != nil {
		return nil, fmt.Errorf("mongodb: bad uri %s: %w; check [mongodb] uri", RedactURI(o.URI), scrub(err, secrets...))
	}
	pctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if err := client.Ping(pctx, readpref.Primary()); err != nil {
		_ = client.Disconnect(context.Background())
		return nil, fmt.Errorf("mongodb at %s unreachable: %w; check [mongodb] uri", hosts, scrub(err, secrets...))
	}
	db := client.Database(o.Database)
	s := &Store{
		client: client, db: db, hosts: hosts, secrets: secrets,
		log:       lg.With("store", "mongodb", "hosts", hosts, "database", o.Database),
		events:    db.Collection(CollEvents),
		processed: db.Collection(CollProcessed),
		counters:  db.Collection(CollCounters),
		cursors:   db.Collection(CollCursors),
		desired:   db.Collection(CollDesired),
		sources:   db.Collection(CollSources),
		queries:   db.Collection(CollQueries),
		channels:  db.Collection(CollChannels),
	}
	if err := s.ensureIndexes(ctx); err != nil {
		_ = client.Disconnect(context.Background())
		return nil, err
	}
	// Create the sequence counter up front: concurrent upserts of a missing
	// document can fail with a duplicate key.
	if _, err := s.counters.InsertOne(ctx, bson.D{{Key: "_id", Value: "events"}, {Key: "n", Value: int64(0)}}); err != nil && !mongo.IsDuplicateKeyError(err) {
		_ = client.Disconnect(context.Background())
		return nil, s.wrap("create the event sequence counter", err)
	}
	return s, nil
}

func idx(name string, keys ...string) mongo.IndexModel {
	d := bson.D{}
	for _, k := range keys {
		dir := 1
		if strings.HasPrefix(k, "-") {
			dir, k = -1, k[1:]
		}
		d = append(d, bson.E{Key: k, Value: dir})
	}
	return mongo.IndexModel{Keys: d, Options: options.Index().SetName(name)}
}

// Indexes lists the secondary indexes per collection; each serves one
// query shape (see the query functions). Every history query sorts on
// (time, seq), so each index ends with them and a page is an index range.
var Indexes = map[string][]mongo.IndexModel{
	CollEvents: {
		idx("time_seq", "time", "seq"),
		idx("channel_time_seq", "channel", "time", "seq"),
		// names is the array of the user's lowercased names: multikey.
		idx("names_time_seq", "names", "time", "seq"),
		idx("source_time_seq", "source", "time", "seq"),
		idx("ukey_time_seq", "ukey", "time", "seq"),
	},
	CollProcessed: {idx("at", "at")},
	CollCursors:   {idx("source", "source", "server", "name")},
	CollDesired:   {idx("source", "source", "server")},
	// Ascending only: FerretDB 1.24 panics when asked again for an existing
	// descending index, and MongoDB walks an index backwards anyway.
	CollQueries:  {idx("started", "started"), idx("by_started", "requested_by", "started")},
	CollChannels: {idx("source_server_name", "source", "server", "name")},
}

func (s *Store) ensureIndexes(ctx context.Context) error {
	// Create only the missing ones: FerretDB 1.24 panics when asked to
	// create an index that exists (MongoDB would accept it as a no-op).
	for coll, models := range Indexes {
		iv := s.db.Collection(coll).Indexes()
		specs, err := iv.ListSpecifications(ctx)
		if err != nil {
			return s.wrap(fmt.Sprintf("list indexes of %s", coll), err)
		}
		have := map[string]bool{}
		for _, sp := range specs {
			have[sp.Name] = true
		}
		var missing []mongo.IndexModel
		for _, m := range models {
			var o options.IndexOptions
			for _, set := range m.Options.List() {
				_ = set(&o)
			}
			if o.Name == nil || !have[*o.Name] {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 {
			continue
		}
		if _, err := iv.CreateMany(ctx, missing); err != nil {
			return s.wrap(fmt.Sprintf("create indexes on %s", coll), err)
		}
	}
	return nil
}

// wrap names the operation and the server, and keeps secrets out.
func (s *Store) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	if unreachable(err) {
		return fmt.Errorf("mongodb at %s unreachable: %s: %w; check [mongodb] uri", s.hosts, what, scrub(err, s.secrets...))
	}
	return fmt.Errorf("mongodb at %s: %s: %w", s.hosts, what, scrub(err, s.secrets...))
}

func unreachable(err error) bool {
	var sel topology.ServerSelectionError
	return mongo.IsNetworkError(err) || errors.As(err, &sel)
}

// Kind implements store.Store.
func (s *Store) Kind() string { return "mongodb" }

// Database is the database in use.
func (s *Store) Database() *mongo.Database { return s.db }

// Close disconnects; calls after the first return the first's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.closeErr = s.wrap("disconnect", s.client.Disconnect(ctx))
	})
	return s.closeErr
}
