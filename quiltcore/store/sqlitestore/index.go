package sqlitestore

import (
	"context"
	"crypto/rand"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// The index file.
//
// Maintaining the channel and user indexes and the trigram full-text index
// inside the insert transaction cost four times a bare insert of the same
// rows (each batch touched hundreds of index pages and flushed a full-text
// segment at commit), and SQLite has one writer per file: those costs
// could not use the second core. So they live in a second file, IndexFileName,
// written by the indexer goroutine on its own connection: it copies the
// rows the writer committed (id > indexed_upto) into channel_time,
// user_time and events_fts in one transaction that also advances
// indexed_upto. The two files are written in parallel; the index file is
// derived data (deleted or stale, it is rebuilt from quilt.db).
//
// Queries that need those indexes first wait until indexed_upto reaches
// the newest event committed when they started (waitIndexed), so they see
// every event acknowledged before them. The writer holds back a new batch
// while the indexer is more than maxIndexLag events behind, which bounds
// that wait and keeps sustained throughput honest: nothing runs ahead of
// the index unboundedly.

// IndexFileName is the index file Open creates beside FileName.
const IndexFileName = "quilt-index.db"

// maxIndexLag is how far (events) the writer may run ahead of the indexer.
// It is four indexMin batches: room for the writer to go on while the
// indexer commits one. More only lengthens the wait of a query under load.
var maxIndexLag int64 = 65536

// indexMin and indexDelay: the indexer waits for indexMin events, or
// indexDelay, before a transaction, unless a query is waiting for it.
// Each index transaction flushes a full-text segment and merges older
// ones: indexing in transactions of 500 events cost twice as much per
// event as in transactions of 20000, and the relay benchmark ran ~5%
// faster with a 100 ms delay than with 20 ms.
const (
	indexMin   = 16384
	indexDelay = 100 * time.Millisecond
)

// indexChunk bounds one indexer transaction, so a rebuild reports progress
// and a query waiting on a small lag is not stuck behind a huge commit.
var indexChunk = 20000

// ixSchema is the index file's schema. Each table is its own B-tree
// ordered like the index it replaces; every event is in user_time (ukey
// empty for events without a user) so it also lists the ids cleanup
// removes.
var ixSchema = []string{
	`CREATE TABLE IF NOT EXISTS ix_meta(
		key TEXT PRIMARY KEY,
		value TEXT NOT NULL
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS channel_time(
		channel TEXT NOT NULL,
		time_ns INTEGER NOT NULL,
		id INTEGER NOT NULL,
		PRIMARY KEY(channel, time_ns, id)
	) WITHOUT ROWID`,
	// id_chunks bounds the event times of each run of 4096 ids, so a
	// walk of the full-text index in id order knows when no older id can
	// hold a newer event (ftsWalk).
	`CREATE TABLE IF NOT EXISTS id_chunks(
		chunk INTEGER PRIMARY KEY,
		min_time INTEGER NOT NULL,
		max_time INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS source_time(
		source TEXT NOT NULL,
		time_ns INTEGER NOT NULL,
		id INTEGER NOT NULL,
		PRIMARY KEY(source, time_ns, id)
	) WITHOUT ROWID`,
	`CREATE TABLE IF NOT EXISTS user_time(
		ukey TEXT NOT NULL,
		time_ns INTEGER NOT NULL,
		id INTEGER NOT NULL,
		PRIMARY KEY(ukey, time_ns, id)
	) WITHOUT ROWID`,
}

// ixLayout is stored in ix_meta(layout); an index file with another is
// rebuilt. Layout 5 made the full-text rows text blocks.
const ixLayout = "5"

// chunkShift: id_chunks.chunk is id >> chunkShift.
const chunkShift = 12

// textBlockShift: a row of events_fts is a text block, the texts of the
// events whose ids share id >> textBlockShift (8 consecutive ids), one per
// line. Many of a message's trigrams recur in its neighbours', and a block
// stores each once: indexing 8-word messages cost 3.6 us per event one by
// one, 2.3 in blocks of 8. A block holds every trigram of each of its
// texts, so it is a candidate for every event that can match; the
// substring test on the event's own text decides (ftsWalk). Bigger blocks
// index faster (16: 1.9 us, 32: 1.5) but are candidates for more phrases
// they do not hold: in BenchmarkHistoryPage the sparse phrase took
// 29 ms at p99 in blocks of 8, 43-53 in blocks of 16, 51 in blocks of 32.
const textBlockShift = 3

// ixFTSSchema: contentless (the text is in quilt.db, another file) with
// contentless_delete so a block can be replaced as its ids fill in and
// dropped by cleanup, and without token positions (detail=none; see
// trigramQuery). The trigram tokenizer folds case, as the "contains" of
// the filter (and of the MongoDB store's quoted $regex) does.
const ixFTSSchema = `CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(
	text, content='', contentless_delete=1, tokenize='trigram', detail='none')`

// ixFTSAutomerge: FTS5 merges segments at every commit once 4 (its
// default) are waiting; 16 merges less often, for fewer rewrites per event.
const ixFTSAutomerge = 16

// indexer is the state of the index file's writer.
type indexer struct {
	path string
	c    *wconn
	// kick: the writer committed; urgent: a query or the writer waits.
	kick, urgent chan struct{}
}

// newStoreID names a quilt.db so an index file built from another (a
// restored backup, a re-created data dir) is recognised and rebuilt.
func newStoreID() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return strconv.FormatInt(time.Now().UnixNano(), 16)
	}
	return hex.EncodeToString(b[:])
}

// openIndex opens (creating or rebuilding when it belongs to another
// quilt.db or was built without full-text search) the index file, on a
// connection with quilt.db attached as "ev" for reading.
func (s *Store) openIndex(syncMode, storeID string) error {
	path := filepath.Join(filepath.Dir(s.path), IndexFileName)
	for attempt := 0; ; attempt++ {
		if err := createFile(path); err != nil {
			return err
		}
		dc, err := drv.Open(writerDSN(path, syncMode))
		if err != nil {
			return fmt.Errorf("sqlitestore: open index %s: %w", path, err)
		}
		c := &wconn{c: dc.(*sqlite3.SQLiteConn), stmts: map[string]*sqlite3.SQLiteStmt{}}
		ok, err := s.prepareIndex(c, path, storeID)
		if err == nil && ok {
			s.ix = &indexer{path: path, c: c, kick: make(chan struct{}, 1), urgent: make(chan struct{}, 1)}
			return nil
		}
		c.close()
		if err != nil {
			return err
		}
		if attempt > 0 {
			return fmt.Errorf("sqlitestore: index %s still belongs to another store after re-creating it", path)
		}
		// Derived data: start over.
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("sqlitestore: remove stale index %s: %w", path+suffix, err)
			}
		}
	}
}

// prepareIndex applies the schema; ok is false when the file must be
// rebuilt (another store's, or missing the full-text table this build
// has, or indexed past the newest event).
func (s *Store) prepareIndex(c *wconn, path, storeID string) (ok bool, err error) {
	wrap := func(err error) error { return fmt.Errorf("sqlitestore: index %s: %w", path, err) }
	var mode string
	if err := c.query("PRAGMA journal_mode", nil, func(d []driver.Value) error { mode = asString(d[0]); return nil }); err != nil {
		return false, wrap(err)
	}
	if mode != "wal" {
		return false, wrap(fmt.Errorf("journal_mode is %q, want wal", mode))
	}
	if err := c.execOnce(fmt.Sprintf("PRAGMA wal_autocheckpoint = %d; PRAGMA journal_size_limit = %d", walAutoCheckpoint, walSizeLimit)); err != nil {
		return false, wrap(err)
	}
	if _, err := c.exec("ATTACH DATABASE ? AS ev", s.path); err != nil {
		return false, wrap(fmt.Errorf("attach %s: %w", s.path, err))
	}
	// Each index transaction reads its events once per index; with
	// SQLite's default 2 MiB cache for an attached file, every pass read
	// them from the WAL again.
	if err := c.execOnce("PRAGMA ev.cache_size = -65536"); err != nil {
		return false, wrap(err)
	}
	for _, q := range ixSchema {
		if err := c.execOnce(q); err != nil {
			return false, wrap(err)
		}
	}
	meta := map[string]string{}
	if err := c.query("SELECT key, value FROM ix_meta", nil, func(d []driver.Value) error {
		meta[asString(d[0])] = asString(d[1])
		return nil
	}); err != nil {
		return false, wrap(err)
	}
	fts := "0"
	if s.hasFTS {
		fts = "1"
	}
	if len(meta) == 0 {
		if s.hasFTS {
			if err := c.execOnce(ixFTSSchema); err != nil {
				return false, wrap(fmt.Errorf("create full-text index: %w", err))
			}
			if err := c.execOnce(fmt.Sprintf("INSERT INTO events_fts(events_fts, rank) VALUES('automerge', %d)", ixFTSAutomerge)); err != nil {
				return false, wrap(err)
			}
		}
		if _, err := c.exec("INSERT INTO ix_meta(key, value) VALUES('store_id', ?), ('fts', ?), ('indexed_upto', '0'), ('layout', ?)", storeID, fts, ixLayout); err != nil {
			return false, wrap(err)
		}
		return true, nil
	}
	if meta["store_id"] != storeID {
		s.log.Warn("index file belongs to another event store: rebuilding it", "index", path)
		return false, nil
	}
	if meta["layout"] != ixLayout {
		s.log.Warn("index file has an older layout: rebuilding it", "index", path)
		return false, nil
	}
	if meta["fts"] != fts {
		s.log.Warn("index file was built with a different full-text setting: rebuilding it", "index", path, "fts", s.hasFTS)
		return false, nil
	}
	upto, _ := strconv.ParseInt(meta["indexed_upto"], 10, 64)
	last, err := c.queryInt64("SELECT max(id) FROM ev.events")
	if err != nil {
		return false, wrap(err)
	}
	floor, err := idFloor(c, "ev.")
	if err != nil {
		return false, wrap(err)
	}
	if upto > max(last, floor) {
		s.log.Warn("index file is ahead of the event store (restored from a backup?): rebuilding it", "index", path)
		return false, nil
	}
	s.indexed.Store(upto)
	return true, nil
}

// idFloor is meta(id_floor) of quilt.db (schema "" or "ev."): the highest
// id cleanup ever removed, so ids are never reused and an index entry of
// a removed event cannot point at a new one.
func idFloor(c *wconn, schema string) (int64, error) {
	var v int64
	err := c.query("SELECT value FROM "+schema+"meta WHERE key = 'id_floor'", nil, func(d []driver.Value) error {
		v, _ = strconv.ParseInt(asString(d[0]), 10, 64)
		return nil
	})
	return v, err
}

// runIndexer indexes what the writer commits until quit.
func (s *Store) runIndexer() {
	defer close(s.ixDone)
	defer s.ix.c.close()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	logged := time.Now()
	for {
		n, err := s.indexOnce()
		switch {
		case err != nil:
			s.setIndexErr(err)
			s.log.Error("indexing events failed; queries by channel, user or text wait until it succeeds", "index", s.ix.path, "err", err)
		case n == indexChunk:
			s.setIndexErr(nil)
			if time.Since(logged) > 5*time.Second {
				s.log.Info("indexing events", "indexed_upto", s.indexed.Load())
				logged = time.Now()
			}
			continue
		default:
			s.setIndexErr(nil)
		}
		select {
		case <-s.quit:
			return
		case <-s.ix.kick:
		case <-s.ix.urgent:
			continue
		case <-t.C:
			continue
		}
		// Gather a bigger transaction unless someone waits.
		deadline := time.NewTimer(indexDelay)
	gather:
		for s.committed.Load()-s.indexed.Load() < indexMin {
			select {
			case <-s.quit:
				deadline.Stop()
				return
			case <-s.ix.kick:
			case <-s.ix.urgent:
				break gather
			case <-deadline.C:
				break gather
			}
		}
		deadline.Stop()
	}
}

// kickIndexer tells the indexer the writer committed.
func (s *Store) kickIndexer() {
	select {
	case s.ix.kick <- struct{}{}:
	default:
	}
}

// hurryIndexer tells the indexer someone waits for it.
func (s *Store) hurryIndexer() {
	select {
	case s.ix.urgent <- struct{}{}:
	default:
	}
}

// beginIndexTx starts a transaction that writes the index file only.
// BEGIN IMMEDIATE would take the write lock of every attached file, the
// event store's too, and serialise the indexer with the writer; a
// deferred BEGIN whose first statement writes ix_meta takes the index
// file's lock (waiting for another process's indexer) before it reads.
func beginIndexTx(c *wconn) error {
	if _, err := c.exec("BEGIN"); err != nil {
		return err
	}
	if _, err := c.exec("UPDATE ix_meta SET value = value WHERE key = 'indexed_upto'"); err != nil {
		_, _ = c.exec("ROLLBACK")
		return err
	}
	return nil
}

// indexOnce indexes up to indexChunk events past indexed_upto.
func (s *Store) indexOnce() (n int, err error) {
	s.ixMu.Lock()
	defer s.ixMu.Unlock()
	c := s.ix.c
	if err := beginIndexTx(c); err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			_, _ = c.exec("ROLLBACK")
		}
	}()
	var upto int64
	if err := c.query("SELECT value FROM ix_meta WHERE key = 'indexed_upto'", nil, func(d []driver.Value) error {
		upto, _ = strconv.ParseInt(asString(d[0]), 10, 64)
		return nil
	}); err != nil {
		return 0, err
	}
	var hi int64
	if err := c.query("SELECT count(*), max(id) FROM (SELECT id FROM ev.events WHERE id > ? ORDER BY id LIMIT ?)", []any{upto, int64(indexChunk)}, func(d []driver.Value) error {
		cnt, _ := d[0].(int64)
		n = int(cnt)
		hi, _ = d[1].(int64)
		return nil
	}); err != nil {
		return 0, err
	}
	if n == 0 {
		// Cleanup may have removed events before they were indexed:
		// nothing up to the id floor is left to index.
		floor, err := idFloor(c, "ev.")
		if err != nil {
			return 0, err
		}
		if floor <= upto {
			_, err := c.exec("ROLLBACK")
			s.advanceIndexed(upto)
			return 0, err
		}
		hi = floor
	} else {
		if _, err := c.exec("INSERT INTO channel_time(channel, time_ns, id) SELECT channel, time_ns, id FROM ev.events WHERE id > ? AND id <= ? AND channel <> ''", upto, hi); err != nil {
			return 0, fmt.Errorf("index channels: %w", err)
		}
		if _, err := c.exec("INSERT INTO user_time(ukey, time_ns, id) SELECT ukey, time_ns, id FROM ev.events WHERE id > ? AND id <= ?", upto, hi); err != nil {
			return 0, fmt.Errorf("index users: %w", err)
		}
		if _, err := c.exec("INSERT INTO source_time(source, time_ns, id) SELECT source, time_ns, id FROM ev.events WHERE id > ? AND id <= ?", upto, hi); err != nil {
			return 0, fmt.Errorf("index sources: %w", err)
		}
		if _, err := c.exec(fmt.Sprintf("INSERT INTO id_chunks(chunk, min_time, max_time) SELECT id >> %d, min(time_ns), max(time_ns) FROM ev.events WHERE id > ? AND id <= ? GROUP BY id >> %[1]d "+
			"ON CONFLICT(chunk) DO UPDATE SET min_time = min(min_time, excluded.min_time), max_time = max(max_time, excluded.max_time)", chunkShift), upto, hi); err != nil {
			return 0, fmt.Errorf("index id chunks: %w", err)
		}
		if s.hasFTS {
			// The first block may have been indexed in part by the
			// previous transaction: it is rebuilt whole.
			from := (upto + 1) >> textBlockShift << textBlockShift
			if err := indexTextBlocks(c, from, hi); err != nil {
				return 0, fmt.Errorf("index text: %w", err)
			}
		}
	}
	if _, err := c.exec("UPDATE ix_meta SET value = ? WHERE key = 'indexed_upto'", strconv.FormatInt(hi, 10)); err != nil {
		return 0, err
	}
	if _, err := c.exec("COMMIT"); err != nil {
		return 0, err
	}
	s.ixCommits.Add(1)
	s.advanceIndexed(hi)
	return n, nil
}

// indexTextBlocks (re)writes the text blocks of the events with ids from
// from to to; from must start a block.
func indexTextBlocks(c *wconn, from, to int64) error {
	_, err := c.exec(fmt.Sprintf("INSERT OR REPLACE INTO events_fts(rowid, text) SELECT id >> %d, group_concat(text, char(10)) FROM ev.events "+
		"WHERE id >= ? AND id <= ? AND text <> '' GROUP BY id >> %[1]d", textBlockShift), from, to)
	return err
}

// advanceIndexed publishes indexed_upto and wakes the waiters.
func (s *Store) advanceIndexed(upto int64) {
	s.ixCond.L.Lock()
	if upto > s.indexed.Load() {
		s.indexed.Store(upto)
		s.ixCond.Broadcast()
	}
	s.ixCond.L.Unlock()
}

func (s *Store) setIndexErr(err error) {
	s.ixCond.L.Lock()
	s.ixErr = err
	s.ixCond.L.Unlock()
}

// waitIndexed waits until the index holds every event up to id.
func (s *Store) waitIndexed(ctx context.Context, id int64) error {
	if s.indexed.Load() >= id {
		return nil
	}
	s.hurryIndexer()
	stop := context.AfterFunc(ctx, func() {
		s.ixCond.L.Lock()
		s.ixCond.Broadcast()
		s.ixCond.L.Unlock()
	})
	defer stop()
	s.ixCond.L.Lock()
	defer s.ixCond.L.Unlock()
	for s.indexed.Load() < id {
		if err := ctx.Err(); err != nil {
			if s.ixErr != nil {
				return fmt.Errorf("sqlitestore: index %s is %d events behind: %w", s.ix.path, id-s.indexed.Load(), s.ixErr)
			}
			return err
		}
		if s.closedFlag.Load() {
			return ErrClosed
		}
		s.ixCond.Wait()
	}
	return nil
}

// syncIndexed waits until every event committed before the call is
// indexed: what queries using the index file do first.
func (s *Store) syncIndexed(ctx context.Context) error {
	return s.waitIndexed(ctx, s.committed.Load())
}

// cleanIndex removes the index entries of events cleanup deleted from
// quilt.db (ids older than before's events no longer there).
func (s *Store) cleanIndex(ctx context.Context, before int64) (err error) {
	s.ixMu.Lock()
	defer s.ixMu.Unlock()
	c := s.ix.c
	if err := beginIndexTx(c); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_, _ = c.exec("ROLLBACK")
		}
	}()
	var gone []int64
	if err := c.query("SELECT id FROM user_time WHERE time_ns < ? AND NOT EXISTS (SELECT 1 FROM ev.events e WHERE e.id = user_time.id)", []any{before}, func(d []driver.Value) error {
		gone = append(gone, d[0].(int64))
		return nil
	}); err != nil {
		return err
	}
	for _, q := range []string{
		"DELETE FROM user_time WHERE time_ns < ? AND NOT EXISTS (SELECT 1 FROM ev.events e WHERE e.id = user_time.id)",
		"DELETE FROM channel_time WHERE time_ns < ? AND NOT EXISTS (SELECT 1 FROM ev.events e WHERE e.id = channel_time.id)",
		"DELETE FROM source_time WHERE time_ns < ? AND NOT EXISTS (SELECT 1 FROM ev.events e WHERE e.id = source_time.id)",
	} {
		if _, err := c.exec(q, before); err != nil {
			return err
		}
	}
	if s.hasFTS {
		// A block that lost some of its events is rebuilt from the rest
		// (or, when none is left, only dropped).
		blocks := map[int64]bool{}
		for _, id := range gone {
			blocks[id>>textBlockShift] = true
		}
		for b := range blocks {
			if err := ctx.Err(); err != nil {
				return err
			}
			if _, err := c.exec("DELETE FROM events_fts WHERE rowid = ?", b); err != nil {
				return err
			}
			if err := indexTextBlocks(c, b<<textBlockShift, (b+1)<<textBlockShift-1); err != nil {
				return err
			}
		}
	}
	_, err = c.exec("COMMIT")
	return err
}
