package sqlitestore

// schema is applied at every Open; every statement is idempotent.
//
// Why it looks like this:
//   - events.id is assigned by the single writer in insertion order, so
//     (time_ns, id) is the total order history pages walk with a keyset
//     token, and every time index (which implicitly ends with the rowid) is
//     already sorted that way.
//   - "user by any of the four names" is: user_names maps each lowercased
//     name to the user keys (group, else transient) it was seen with, then
//     one range of user_time (in the index file, index.go) per user key,
//     keeping the events whose
//     names column (the event's distinct lowercased names, each between
//     nameSep) holds the name. Schema version 1 had an event_users table
//     with one row per name per event: ~3 index entries per event at ~600
//     scattered insertion points per batch of 1000, most of a commit's
//     dirty pages. user_time is one entry per event at one
//     insertion point per user, and user_names takes a write only for a
//     (name, user key) pair not seen before.
//   - LastSeen enumerates users from user_names (small) instead of walking
//     all of a heavy user's events.
//   - The channel, user and source indexes and the full-text index are in
//     the index file, built beside the writer by the indexer (index.go);
//     events_time stays here (cleanup and unfiltered pages walk it
//     without waiting for the indexer): its insertion point is the end of
//     the tree, which costs a bare insert next to nothing.
//   - processed is separate from events so the two retentions differ
//     (seed 002): ids outlive the events they de-duplicate.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS meta(
		key TEXT PRIMARY KEY,
		value TEXT NOT NULL
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS events(
		id INTEGER PRIMARY KEY,
		source TEXT NOT NULL,
		eid TEXT NOT NULL,
		server TEXT NOT NULL,
		channel TEXT NOT NULL,
		kind INTEGER NOT NULL,
		time_ns INTEGER NOT NULL,
		ukey TEXT NOT NULL,
		text TEXT NOT NULL,
		data BLOB NOT NULL,
		names TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS events_time ON events(time_ns)`,
	// In the index file since this build (source_time).
	`DROP INDEX IF EXISTS events_source_time`,
	`CREATE TABLE IF NOT EXISTS user_names(
		name TEXT NOT NULL,
		ukey TEXT NOT NULL,
		PRIMARY KEY(name, ukey)
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS processed(
		source TEXT NOT NULL,
		id TEXT NOT NULL,
		processed_at INTEGER NOT NULL,
		PRIMARY KEY(source, id)
	) WITHOUT ROWID`,
	// Files written before this build had an index on processed_at; an
	// insert paid for it, only cleanup used it.
	`DROP INDEX IF EXISTS processed_at`,
	`CREATE TABLE IF NOT EXISTS cursors(
		source TEXT NOT NULL,
		server TEXT NOT NULL,
		name TEXT NOT NULL,
		value TEXT NOT NULL,
		PRIMARY KEY(source, server, name)
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS desired(
		source TEXT NOT NULL,
		server TEXT NOT NULL,
		enabled INTEGER NOT NULL,
		reconnect INTEGER NOT NULL,
		PRIMARY KEY(source, server)
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS sources(
		name TEXT PRIMARY KEY,
		protocol TEXT NOT NULL,
		version TEXT NOT NULL,
		node TEXT NOT NULL,
		first_ns INTEGER NOT NULL,
		last_ns INTEGER NOT NULL,
		detached_ns INTEGER NOT NULL,
		servers BLOB NOT NULL
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS queries(
		id TEXT PRIMARY KEY,
		started_ns INTEGER NOT NULL,
		requested_by TEXT NOT NULL,
		data BLOB NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS queries_started ON queries(started_ns)`,
	`CREATE INDEX IF NOT EXISTS queries_by_started ON queries(requested_by, started_ns)`,
	`CREATE TABLE IF NOT EXISTS channels(
		source TEXT NOT NULL,
		server TEXT NOT NULL,
		name TEXT NOT NULL,
		data BLOB NOT NULL,
		PRIMARY KEY(source, server, name)
	) WITHOUT ROWID`,
}

// schemaVersion is stored in meta(schema_version); migrate brings an older
// file up to it. Version 3 moved the channel, user and full-text indexes
// to the index file.
const schemaVersion = 3
