package sqlitestore

import "testing"

// SQLite's memory statistics are off before the first connection opens.
func TestSQLiteTuned(t *testing.T) {
	if sqliteTuned != 0 {
		t.Fatalf("sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) = %d, want SQLITE_OK", sqliteTuned)
	}
}
