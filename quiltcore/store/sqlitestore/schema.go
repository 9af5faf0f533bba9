package sqlitestore

// schema is applied at every Open; every statement is idempotent.
//
// Why it looks like this:
//   - events.id is assigned by the single writer in insertion order, so
//     (time_ns, id) is the total order history pages walk with a keyset
//     token, and every time index (which implicitly ends with the rowid) is
//     already sorted that way.
//   - event_users has one row per distinct lowercased name of the event's
//     user, so "user by any of the four names" is one PK range; the partial
//     index serves LastSeen's "newest message" without scanning joins/parts.
//   - user_names maps each name to the user keys (group, else transient)
//     it was seen with, so LastSeen enumerates users from a small table
//     instead of walking all of a heavy user's events.
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
		data BLOB NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS events_time ON events(time_ns)`,
	`CREATE INDEX IF NOT EXISTS events_channel_time ON events(channel, time_ns)`,
	`CREATE INDEX IF NOT EXISTS events_source_time ON events(source, time_ns)`,
	`CREATE TABLE IF NOT EXISTS event_users(
		name TEXT NOT NULL,
		time_ns INTEGER NOT NULL,
		ev INTEGER NOT NULL,
		ukey TEXT NOT NULL,
		msg INTEGER NOT NULL,
		PRIMARY KEY(name, time_ns, ev)
	) WITHOUT ROWID`,
	`DROP INDEX IF EXISTS event_users_msg`,
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
	`CREATE INDEX IF NOT EXISTS processed_at ON processed(processed_at)`,
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

// ftsSchema is applied only when the driver was built with FTS5. The
// trigram tokenizer makes MATCH a case-insensitive substring search, the
// same "contains" the MongoDB store answers with a quoted $regex.
const ftsSchema = `CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(
	text, content='events', content_rowid='id', tokenize='trigram')`
