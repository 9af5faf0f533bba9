package sqlitestore

import (
	"database/sql/driver"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store/internal/storeutil"
)

// migrate brings a file written by an older schema to schemaVersion before
// the schema statements run. Version 1 (no schema_version row, an
// event_users table) gets the events.names column filled from each event's
// encoded user, then event_users is dropped; the schema statements then
// build events_user_time. It runs in one transaction: a crash leaves the
// file at version 1 and the next Open starts over.
func (s *Store) migrate() error {
	c := s.wc
	var version int64
	hasEvents, hasEventUsers := false, false
	err := c.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('events', 'event_users', 'meta')", nil, func(d []driver.Value) error {
		switch asString(d[0]) {
		case "events":
			hasEvents = true
		case "event_users":
			hasEventUsers = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlitestore: read schema of %s: %w", s.path, err)
	}
	if hasEvents {
		err = c.query("SELECT value FROM meta WHERE key = 'schema_version'", nil, func(d []driver.Value) error {
			version, err = strconv.ParseInt(asString(d[0]), 10, 64)
			return err
		})
		if err != nil {
			return fmt.Errorf("sqlitestore: read schema_version of %s: %w", s.path, err)
		}
		if version == 0 {
			version = 1
		}
	} else {
		version = schemaVersion // a new file
	}
	if version > schemaVersion {
		return fmt.Errorf("sqlitestore: %s has schema version %d, newer than this build's %d: run a newer quilt or re-create the data dir", s.path, version, schemaVersion)
	}
	if version == 1 {
		s.log.Warn("migrating the event store to schema version 2 (one-off; reads every event)", "from", version)
		if err := s.migrate1to2(hasEventUsers); err != nil {
			return fmt.Errorf("sqlitestore: migrate %s from schema version 1 to 2 (or re-create the data dir): %w", s.path, err)
		}
		version = 2
	}
	if version == 2 {
		s.log.Warn("migrating the event store to schema version 3: the channel, user and text indexes move to " + IndexFileName + ", rebuilt in the background")
		if err := s.migrate2to3(); err != nil {
			return fmt.Errorf("sqlitestore: migrate %s from schema version 2 to 3 (or re-create the data dir): %w", s.path, err)
		}
	}
	return nil
}

// migrate2to3 drops what the index file now holds.
func (s *Store) migrate2to3() error {
	return s.wc.immediateTx(func(c *wconn) error { return migrate2to3(c) })
}

func migrate2to3(c *wconn) error {
	for _, q := range []string{
		"DROP INDEX IF EXISTS events_channel_time",
		"DROP INDEX IF EXISTS events_user_time",
		"DROP TABLE IF EXISTS events_fts",
		"DELETE FROM meta WHERE key = 'fts_stale'",
	} {
		if err := c.execOnce(q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	_, err := c.exec("UPDATE meta SET value = ? WHERE key = 'schema_version'", strconv.Itoa(schemaVersion))
	return err
}

func (s *Store) migrate1to2(hasEventUsers bool) error {
	return s.wc.immediateTx(func(c *wconn) error { return migrate1to2(c, hasEventUsers) })
}

func migrate1to2(c *wconn, hasEventUsers bool) error {
	if err := c.execOnce("ALTER TABLE events ADD COLUMN names TEXT NOT NULL DEFAULT ''"); err != nil {
		return err
	}
	type row struct {
		id    int64
		names string
	}
	var rows []row
	err := c.query("SELECT id, data FROM events", nil, func(d []driver.Value) error {
		data, _ := d[1].([]byte)
		e := new(quiltv1.Event)
		if err := proto.Unmarshal(data, e); err != nil {
			return fmt.Errorf("decode event row %d: %w", d[0].(int64), err)
		}
		rows = append(rows, row{d[0].(int64), namesColumn(storeutil.Names(e.GetUser()))})
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range rows {
		if _, err := c.exec("UPDATE events SET names = ? WHERE id = ?", r.names, r.id); err != nil {
			return err
		}
	}
	if hasEventUsers {
		if err := c.execOnce("DROP TABLE event_users"); err != nil {
			return err
		}
	}
	if err := c.execOnce("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"); err != nil {
		return err
	}
	_, err = c.exec("INSERT INTO meta(key, value) VALUES('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", strconv.Itoa(schemaVersion))
	return err
}

// immediateTx runs fn in a write transaction: committed when it returns
// nil, rolled back otherwise.
func (w *wconn) immediateTx(fn func(c *wconn) error) error {
	if err := w.execOnce("BEGIN IMMEDIATE"); err != nil {
		return err
	}
	if err := fn(w); err != nil {
		_ = w.execOnce("ROLLBACK")
		return err
	}
	return w.execOnce("COMMIT")
}
