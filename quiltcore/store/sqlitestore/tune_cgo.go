//go:build cgo

package sqlitestore

/*
// sqlite3_config is SQLite's own, compiled in by go-sqlite3; it is
// variadic, so it is called from C.
extern int sqlite3_config(int, ...);

static int quilt_sqlite_tune(void) {
	// SQLITE_CONFIG_MEMSTATUS (9) off: with it on, every SQLite malloc
	// and free takes one process-wide mutex, for statistics quilt never
	// reads; the writer and the indexer contended for it (a fifth more
	// context switches in BenchmarkInsert with it on).
	return sqlite3_config(9, 0);
}
*/
import "C"

// sqliteTuned is SQLITE_OK (0), or SQLITE_MISUSE when SQLite was
// initialised before this package (a connection opened by an earlier
// init): harmless, the statistics stay on.
var sqliteTuned = int(C.quilt_sqlite_tune())
