// Package sqlitestore is the embedded default store: SQLite (through
// github.com/mattn/go-sqlite3, cgo) in one file in the query master's data
// dir. Build with -tags sqlite_fts5 (the Makefile does): without it the
// driver has no FTS5, Open logs a warning and text search scans instead.
//
// Durability: WAL with synchronous=FULL by default, so a commit is fsynced
// before InsertEvents returns; an acknowledged event survives kill -9 and
// power loss. synchronous=NORMAL (Options.Synchronous) still survives
// kill -9 — the WAL is written before the commit returns, only its fsync is
// deferred to checkpoints — but a power loss may drop the last commits.
//
// Concurrency: one writer goroutine owns the only write connection and
// commits whatever requests are queued together in one transaction (group
// commit), each inside its own savepoint so one failing request does not
// fail the others; readers use a separate pool of query_only connections,
// which WAL lets run beside the writer.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/quilt/quilt/quiltcore/store"
)

// FileName is the database file Open creates in the data dir.
const FileName = "quilt.db"

// Options tune Open; the zero value is the production default.
type Options struct {
	// Logger receives warnings (missing FTS5); nil: slog.Default().
	Logger *slog.Logger
	// Synchronous is "full" (default) or "normal"; see the package doc.
	Synchronous string
	// Readers is the size of the read pool (default 4).
	Readers int
}

// Store is the SQLite store. Use Open.
type Store struct {
	path   string
	log    *slog.Logger
	wdb    *sql.DB
	rdb    *sql.DB
	hasFTS bool

	reqs    chan *writeReq
	quit    chan struct{}
	done    chan struct{}
	closeMu sync.RWMutex
	closed  bool

	// Owned by the writer goroutine.
	w writerState
}

var _ store.Store = (*Store)(nil)

const driverName = "sqlite3_quilt"

var registerOnce sync.Once

// register adds the Go functions the queries use: REGEXP (RE2, the syntax
// the filter documents) and a Unicode-aware case-insensitive contains for
// searches FTS5 cannot serve.
func register() {
	registerOnce.Do(func() {
		sql.Register(driverName, &sqlite3.SQLiteDriver{
			ConnectHook: func(c *sqlite3.SQLiteConn) error {
				if err := c.RegisterFunc("regexp", regexpFunc, true); err != nil {
					return err
				}
				return c.RegisterFunc("quilt_icontains", icontains, true)
			},
		})
	})
}

var reCache sync.Map // pattern -> *regexp.Regexp; patterns come from queries, few

func regexpFunc(pattern, s string) (bool, error) {
	if v, ok := reCache.Load(pattern); ok {
		return v.(*regexp.Regexp).MatchString(s), nil
	}
	re, err := regexp.Compile(pattern)
	if err != nil {
		return false, err
	}
	reCache.Store(pattern, re)
	return re.MatchString(s), nil
}

// icontains expects needle already lowercased.
func icontains(s, needle string) bool {
	return strings.Contains(strings.ToLower(s), needle)
}

// Open opens (creating if needed) the store in dir/quilt.db.
func Open(dir string, opts Options) (*Store, error) {
	register()
	lg := opts.Logger
	if lg == nil {
		lg = slog.Default()
	}
	syncMode := strings.ToLower(opts.Synchronous)
	switch syncMode {
	case "":
		syncMode = "full"
	case "full", "normal":
	default:
		return nil, fmt.Errorf("sqlitestore: synchronous %q: want full or normal", opts.Synchronous)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("sqlitestore: data dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	dsn := "file:" + path + "?_journal_mode=WAL&_synchronous=" + syncMode + "&_busy_timeout=10000&_txlock=immediate&_cache_size=-65536"
	wdb, err := sql.Open(driverName, dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	// Only the writer goroutine writes; the second connection lets it
	// prepare a statement while its transaction holds the first.
	wdb.SetMaxOpenConns(2)
	wdb.SetMaxIdleConns(2)
	wdb.SetConnMaxLifetime(0)
	s := &Store{path: path, log: lg.With("store", "sqlite", "path", path), wdb: wdb}
	if err := s.init(); err != nil {
		wdb.Close()
		return nil, err
	}
	readers := opts.Readers
	if readers <= 0 {
		readers = 4
	}
	rdb, err := sql.Open(driverName, "file:"+path+"?_journal_mode=WAL&_busy_timeout=10000&_query_only=1&_cache_size=-32768")
	if err != nil {
		wdb.Close()
		return nil, fmt.Errorf("sqlitestore: open %s for reading: %w", path, err)
	}
	rdb.SetMaxOpenConns(readers)
	rdb.SetMaxIdleConns(readers)
	s.rdb = rdb
	if err := rdb.Ping(); err != nil {
		wdb.Close()
		rdb.Close()
		return nil, fmt.Errorf("sqlitestore: open %s for reading: %w", path, err)
	}
	s.reqs = make(chan *writeReq, 256)
	s.quit = make(chan struct{})
	s.done = make(chan struct{})
	go s.writer()
	return s, nil
}

func (s *Store) init() error {
	ctx := context.Background()
	var mode string
	if err := s.wdb.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("sqlitestore: open %s: %w", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("sqlitestore: open %s: journal_mode is %q, want wal (is the file on a filesystem without shared memory?)", s.path, mode)
	}
	for _, q := range schema {
		if _, err := s.wdb.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("sqlitestore: create schema in %s: %w", s.path, err)
		}
	}
	// Probe for FTS5 in a temporary table: go-sqlite3 compiles it in only
	// with the sqlite_fts5 build tag.
	if _, err := s.wdb.ExecContext(ctx, "CREATE VIRTUAL TABLE temp.fts_probe USING fts5(x)"); err != nil {
		s.log.Warn("sqlite built without FTS5 (build with -tags sqlite_fts5): text search will scan events", "err", err)
		_, err = s.wdb.ExecContext(ctx, "INSERT INTO meta(key, value) VALUES('fts_stale', '1') ON CONFLICT(key) DO UPDATE SET value = '1'")
		if err != nil {
			return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
		}
	} else {
		if _, err := s.wdb.ExecContext(ctx, "DROP TABLE temp.fts_probe"); err != nil {
			return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
		}
		if _, err := s.wdb.ExecContext(ctx, ftsSchema); err != nil {
			return fmt.Errorf("sqlitestore: create full-text index in %s: %w", s.path, err)
		}
		s.hasFTS = true
		// Events stored by a build without FTS5 are missing from the index.
		var stale string
		err := s.wdb.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = 'fts_stale'").Scan(&stale)
		if err == nil && stale == "1" {
			s.log.Warn("rebuilding the full-text index: events were stored by a build without FTS5")
			if _, err := s.wdb.ExecContext(ctx, "INSERT INTO events_fts(events_fts) VALUES('rebuild')"); err != nil {
				return fmt.Errorf("sqlitestore: rebuild full-text index in %s: %w", s.path, err)
			}
			if _, err := s.wdb.ExecContext(ctx, "DELETE FROM meta WHERE key = 'fts_stale'"); err != nil {
				return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
			}
		} else if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("sqlitestore: %s: %w", s.path, err)
		}
	}
	return s.w.load(ctx, s.wdb)
}

// HasFTS reports whether text search uses the FTS5 index.
func (s *Store) HasFTS() bool { return s.hasFTS }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Kind implements store.Store.
func (s *Store) Kind() string { return "sqlite" }

// Close waits for queued writes, then closes the database. Calls after the
// first return nil.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	close(s.quit)
	<-s.done
	// Keep the planner's statistics current for the next start.
	_, _ = s.wdb.Exec("PRAGMA optimize")
	err1 := s.rdb.Close()
	err2 := s.wdb.Close()
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("sqlitestore: close %s: %w", s.path, err)
	}
	return nil
}

// ErrClosed: the store was closed.
var ErrClosed = errors.New("sqlitestore: store is closed")
