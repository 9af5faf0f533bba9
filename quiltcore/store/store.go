// Package store is the query master's persistent state: events with
// de-duplication, history queries, per-source cursors, desired server states,
// source records, query history and channel info.
//
// Implementations: store/mongostore (MongoDB through mongo-driver v2; the only
// importer of the driver) and store/sqlitestore (the embedded default, SQLite
// in the data dir). storetest.Run holds both to one contract.
package store

import (
	"context"
	"errors"
	"time"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// ErrNotFound: no such record.
var ErrNotFound = errors.New("store: not found")

// InsertResult says what InsertEvents did with a batch.
type InsertResult struct {
	Stored int
	// Duplicates lists the ids (Event.id) already processed for the source;
	// those events were dropped.
	Duplicates []string
}

// EventQuery selects stored events. A nil Filter matches everything.
type EventQuery struct {
	Filter      *quiltv1.EventFilter
	Limit       int // 0: DefaultLimit
	OldestFirst bool
	PageToken   string // from a previous EventPage.NextPageToken
}

// DefaultLimit and MaxLimit bound history pages.
const (
	DefaultLimit = 100
	MaxLimit     = 10000
)

// EventPage is one page of EventQuery results.
type EventPage struct {
	Events []*quiltv1.Event
	// NextPageToken is set when more events match.
	NextPageToken string
}

// LastSeenQuery asks where users matching User were last seen.
type LastSeenQuery struct {
	// Matches any of the four names, case-insensitive; * and ? wildcards.
	User    string
	Sources []string
	Limit   int
}

// SourceRecord is what the store keeps about a source manager.
type SourceRecord struct {
	Name          string
	Protocol      string
	Version       string
	Node          string
	FirstAttached time.Time
	LastAttached  time.Time
	DetachedAt    time.Time // zero while attached
	Servers       []*quiltv1.ServerStatus
}

// CleanupResult says what Cleanup removed.
type CleanupResult struct {
	Events    int64
	Processed int64
}

// Store is the interface the query master uses. Every method is safe for
// concurrent use.
type Store interface {
	// InsertEvents stores a batch from one source atomically with its
	// cursors: an event whose (source, id) was already processed is dropped
	// and reported as a duplicate (the check and the record are one atomic
	// step, so concurrent inserts of overlapping batches store exactly one
	// copy). When it returns nil, every stored event and cursor is durable.
	InsertEvents(ctx context.Context, source string, events []*quiltv1.Event, cursors []*quiltv1.Cursor) (InsertResult, error)
	// QueryEvents pages through stored events, newest first unless
	// OldestFirst; ties on time are broken by insertion order.
	QueryEvents(ctx context.Context, q EventQuery) (EventPage, error)
	// LastSeen returns, per matching user (by group name, then transient),
	// the newest event and the newest message.
	LastSeen(ctx context.Context, q LastSeenQuery) ([]*quiltv1.LastSeenRow, error)
	// CountEvents counts events matching filter (tests, stats).
	CountEvents(ctx context.Context, filter *quiltv1.EventFilter) (int64, error)

	// Cursors returns the stored resume positions of a source.
	Cursors(ctx context.Context, source string) ([]*quiltv1.Cursor, error)

	// SetDesiredServer stores an operator override; DesiredServers lists them.
	SetDesiredServer(ctx context.Context, source string, d *quiltv1.DesiredServer) error
	DesiredServers(ctx context.Context, source string) ([]*quiltv1.DesiredServer, error)

	// PutSource upserts a source record (FirstAttached is kept from the first
	// write); Sources lists them by name; GetSource returns ErrNotFound.
	PutSource(ctx context.Context, r SourceRecord) error
	GetSource(ctx context.Context, name string) (SourceRecord, error)
	Sources(ctx context.Context) ([]SourceRecord, error)

	// PutQuery upserts a query history record by id; GetQuery returns
	// ErrNotFound; ListQueries is newest first, filtered by requester when
	// requestedBy is not empty.
	PutQuery(ctx context.Context, r *quiltv1.QueryRecord) error
	GetQuery(ctx context.Context, id string) (*quiltv1.QueryRecord, error)
	ListQueries(ctx context.Context, limit int, requestedBy string) ([]*quiltv1.QueryRecord, error)

	// PutChannelInfo upserts room/channel info; ChannelInfos lists a
	// source's (server empty: all servers) keyed rows.
	PutChannelInfo(ctx context.Context, source, server string, info *quiltv1.ChannelInfo) error
	ChannelInfos(ctx context.Context, source, server string) ([]*quiltv1.ChannelRow, error)

	// Cleanup removes events older than eventsBefore and processed-id
	// records older than processedBefore (by the time they were processed),
	// in time-range deletes.
	Cleanup(ctx context.Context, eventsBefore, processedBefore time.Time) (CleanupResult, error)

	// Kind is "mongodb" or "sqlite", for status output.
	Kind() string
	Close() error
}
