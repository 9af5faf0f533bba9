// Package sqlitestore is the embedded default store: SQLite (through
// github.com/mattn/go-sqlite3, cgo) in one file in the query master's data
// dir. Build with -tags sqlite_fts5 (the Makefile does): without it the
// driver has no FTS5, Open logs a warning and text search scans instead.
//
// Durability: WAL with synchronous=NORMAL by default. A commit is in the
// WAL file (written with write(2), so in the OS page cache) before
// InsertEvents returns, so an acknowledged event survives kill -9 of the
// process (TestKill9); the WAL is fsynced at checkpoints, not at every
// commit, so a power loss or kernel crash may drop the last commits (the
// database stays consistent). Options.Synchronous "full" fsyncs every
// commit and survives power loss too, at the cost of one fsync per group
// commit (measured in bench_test.go with QUILT_BENCH_SQLITE_SYNC=full).
//
// Checkpoints: the WAL grows to 20000 pages (80 MiB) before a commit
// copies it back itself; normally a checkpointer goroutine on its own
// connection copies it back first (PASSIVE), every 250 ms while the writer
// commits. The WAL file is truncated to 64 MiB when it restarts.
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
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/quilt/quilt/quiltcore/store"
)

// FileName is the database file Open creates in the data dir.
const FileName = "quilt.db"

// Options tune Open; the zero value is the production default.
type Options struct {
	// Logger receives warnings (missing FTS5); nil: slog.Default().
	Logger *slog.Logger
	// Synchronous is "normal" (default) or "full"; see the package doc.
	Synchronous string
	// Readers is the size of the read pool (default 4).
	Readers int
}

// Store is the SQLite store. Use Open.
type Store struct {
	path   string
	log    *slog.Logger
	wc     *wconn // the writer goroutine's (init's before it starts)
	rdb    *sql.DB
	hasFTS bool

	reqs    chan *writeReq
	quit    chan struct{}
	done    chan struct{}
	closeMu sync.RWMutex
	closed  bool

	// Owned by the writer goroutine.
	w writerState

	// The index file (index.go): indexed is its indexed_upto, committed
	// the newest event id this process's writer committed; ixCond (on
	// ixCondMu) is broadcast when indexed grows; ixMu serialises the
	// index file's transactions.
	ix         *indexer
	ixMu       sync.Mutex
	ixDone     chan struct{}
	indexed    atomic.Int64
	committed  atomic.Int64
	ixCondMu   sync.Mutex
	ixCond     *sync.Cond
	ixErr      error
	ixCommits  atomic.Int64
	closedFlag atomic.Bool

	// commits counts the writer's commits, so the checkpointer knows
	// whether anything is left to copy back.
	commits  atomic.Int64
	ckptDone chan struct{}
}

var _ store.Store = (*Store)(nil)

const driverName = "sqlite3_quilt"

var registerOnce sync.Once

// drv opens every connection of the store: database/sql's read pool
// through driverName, the writer's directly.
var drv = &sqlite3.SQLiteDriver{ConnectHook: connectHook}

// register makes drv known to database/sql.
func register() {
	registerOnce.Do(func() { sql.Register(driverName, drv) })
}

// mmapSize lets reads of a database that fits in it skip the read()
// copy into the page cache.
const mmapSize = 1 << 30

// connectHook adds the Go functions the queries use: REGEXP (RE2, the
// syntax the filter documents) and a Unicode-aware case-insensitive
// contains. temp_store=memory keeps statement journals (every multi-row
// INSERT inside a transaction writes one) and sorter spills in memory
// instead of temporary files.
func connectHook(c *sqlite3.SQLiteConn) error {
	if err := c.RegisterFunc("regexp", regexpFunc, true); err != nil {
		return err
	}
	if err := c.RegisterFunc("quilt_icontains", icontains, true); err != nil {
		return err
	}
	_, err := c.Exec(fmt.Sprintf("PRAGMA temp_store = MEMORY; PRAGMA mmap_size = %d", mmapSize), nil)
	return err
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
	lg := opts.Logger
	if lg == nil {
		lg = slog.Default()
	}
	syncMode := strings.ToLower(opts.Synchronous)
	switch syncMode {
	case "":
		syncMode = "normal"
	case "full", "normal":
	default:
		return nil, fmt.Errorf("sqlitestore: synchronous %q: want full or normal", opts.Synchronous)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("sqlitestore: data dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	register()
	if err := createFile(path); err != nil {
		return nil, err
	}
	// 256 MiB of page cache for the writer: the indexes it updates are
	// spread over the file (a channel's or a user's newest pages), and a
	// miss is a read inside the write lock.
	dc, err := drv.Open(writerDSN(path, syncMode))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	s := &Store{path: path, log: lg.With("store", "sqlite", "path", path),
		wc: &wconn{c: dc.(*sqlite3.SQLiteConn), stmts: map[string]*sqlite3.SQLiteStmt{}}}
	s.ixCond = sync.NewCond(&s.ixCondMu)
	storeID, err := s.init()
	if err != nil {
		s.wc.close()
		return nil, err
	}
	if err := s.openIndex(syncMode, storeID); err != nil {
		s.wc.close()
		return nil, err
	}
	readers := opts.Readers
	if readers <= 0 {
		readers = 4
	}
	rdb := sql.OpenDB(&readConnector{dsn: "file:" + path + "?_journal_mode=WAL&_busy_timeout=10000&_query_only=1&_cache_size=-65536", index: s.ix.path})
	rdb.SetMaxOpenConns(readers)
	rdb.SetMaxIdleConns(readers)
	s.rdb = rdb
	if err := rdb.Ping(); err != nil {
		s.wc.close()
		s.ix.c.close()
		rdb.Close()
		return nil, fmt.Errorf("sqlitestore: open %s for reading: %w", path, err)
	}
	ckpt, err := drv.Open(writerDSN(path, syncMode))
	if err != nil {
		s.wc.close()
		s.ix.c.close()
		rdb.Close()
		return nil, fmt.Errorf("sqlitestore: open %s for checkpoints: %w", path, err)
	}
	s.reqs = make(chan *writeReq, 256)
	s.quit = make(chan struct{})
	s.done = make(chan struct{})
	s.ckptDone = make(chan struct{})
	s.ixDone = make(chan struct{})
	s.committed.Store(s.w.nextID - 1)
	go s.writer()
	go s.runIndexer()
	go s.checkpointer(&wconn{c: ckpt.(*sqlite3.SQLiteConn), stmts: map[string]*sqlite3.SQLiteStmt{}})
	return s, nil
}

// walAutoCheckpoint is the WAL size (pages) at which a commit copies the
// WAL back into the database itself. SQLite's default, 1000 pages, is
// less than one batch of 1000 events writes (every dirty index page goes
// to the WAL whole), so nearly every commit paid a checkpoint (copy back
// and fsync) inside the write lock. At 20000 pages (80 MiB) the copy-back
// is amortised over many commits, and a page rewritten by several commits
// is copied back once; the checkpointer usually gets there first.
const walAutoCheckpoint = 20000

// walSizeLimit truncates the WAL file back to this size when it restarts,
// so one burst does not leave a large file behind.
const walSizeLimit = 64 << 20

// pageSize is the page size of the files Open creates. A commit appends
// each dirty page to the WAL with its own write() calls, and at SQLite's
// default 4 KiB a batch of 1000 events wrote ~100 pages: larger pages mean
// fewer system calls per event, but a commit of one event writes whole
// pages too. BenchmarkInsert, events/s for batches of 1 / 10 / 100 / 1000
// (medians of 3): 4 KiB 14.2k / 60k / 137k / 171k, 8 KiB 11.5k / 56k /
// 151k / 182k, 16 KiB 7.5k / 54k / 149k / 187k. A file created before
// keeps its page size (changing it takes a VACUUM).
const pageSize = 8192

// createFile creates the database path with pageSize and WAL mode unless
// it exists: the page size of a WAL database is fixed when it is created,
// and the writer's connection turns WAL on as it opens.
func createFile(path string) error {
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	dc, err := drv.Open("file:" + path + "?_mutex=no")
	if err != nil {
		return fmt.Errorf("sqlitestore: create %s: %w", path, err)
	}
	c := dc.(*sqlite3.SQLiteConn)
	defer c.Close()
	if _, err := c.Exec(fmt.Sprintf("PRAGMA page_size = %d; PRAGMA journal_mode = WAL", pageSize), nil); err != nil {
		return fmt.Errorf("sqlitestore: create %s: %w", path, err)
	}
	return nil
}

// writerDSN opens the writer's and the checkpointer's connections.
func writerDSN(path, syncMode string) string {
	// _mutex=no: each of these connections is used by one goroutine at
	// a time, so SQLite's per-call connection mutex buys nothing.
	return "file:" + path + "?_journal_mode=WAL&_synchronous=" + syncMode + "&_busy_timeout=10000&_cache_size=-262144&_mutex=no"
}

// checkpointIdle is how often the checkpointer looks for commits to copy
// back.
const checkpointIdle = 250 * time.Millisecond

// checkpointer runs PASSIVE checkpoints on its own connection whenever the
// writer has committed since the last one, so the copy-back (and its
// fsync) happens beside the writer's commits, on the other core, instead
// of inside one of them when the WAL reaches walAutoCheckpoint. (It used
// to wait for the writer to be idle: under a steady load that never came,
// and the commit that crossed 20000 pages stalled every writer behind it;
// stored events/s in batches of 100 and 1000 rose ~10% without the wait.)
// PASSIVE never waits for readers or the writer: what it cannot copy now
// is copied by the next one.
func (s *Store) checkpointer(c *wconn) {
	defer close(s.ckptDone)
	defer c.close()
	if err := c.execOnce(fmt.Sprintf("PRAGMA journal_size_limit = %d", walSizeLimit)); err != nil {
		s.log.Warn("checkpointer: set journal_size_limit", "err", err)
	}
	// The index file's WAL too, so the indexer's commits do not copy it
	// back themselves either.
	ixOK := true
	if _, err := c.exec("ATTACH DATABASE ? AS ix", s.ix.path); err != nil {
		s.log.Warn("checkpointer: attach the index file; the indexer checkpoints it itself", "err", err)
		ixOK = false
	}
	t := time.NewTicker(checkpointIdle)
	defer t.Stop()
	var done, ixDone int64
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
		if n := s.commits.Load(); n != done {
			if err := c.execOnce("PRAGMA main.wal_checkpoint(PASSIVE)"); err != nil {
				s.log.Warn("background checkpoint failed", "err", err)
			} else {
				done = n
			}
		}
		if n := s.ixCommits.Load(); ixOK && n != ixDone {
			if err := c.execOnce("PRAGMA ix.wal_checkpoint(PASSIVE)"); err != nil {
				s.log.Warn("background checkpoint of the index file failed", "err", err)
			} else {
				ixDone = n
			}
		}
	}
}

func (s *Store) init() (storeID string, err error) {
	c := s.wc
	var mode string
	err = c.query("PRAGMA journal_mode", nil, func(d []driver.Value) error {
		mode = asString(d[0])
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("sqlitestore: open %s: %w", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return "", fmt.Errorf("sqlitestore: open %s: journal_mode is %q, want wal (is the file on a filesystem without shared memory?)", s.path, mode)
	}
	if err := c.execOnce(fmt.Sprintf("PRAGMA wal_autocheckpoint = %d; PRAGMA journal_size_limit = %d", walAutoCheckpoint, walSizeLimit)); err != nil {
		return "", fmt.Errorf("sqlitestore: open %s: %w", s.path, err)
	}
	if err := s.migrate(); err != nil {
		return "", err
	}
	for _, q := range schema {
		if err := c.execOnce(q); err != nil {
			return "", fmt.Errorf("sqlitestore: create schema in %s: %w", s.path, err)
		}
	}
	if _, err := c.exec("INSERT INTO meta(key, value) VALUES('schema_version', ?), ('store_id', ?) ON CONFLICT(key) DO NOTHING", strconv.Itoa(schemaVersion), newStoreID()); err != nil {
		return "", fmt.Errorf("sqlitestore: create schema in %s: %w", s.path, err)
	}
	if err := c.query("SELECT value FROM meta WHERE key = 'store_id'", nil, func(d []driver.Value) error {
		storeID = asString(d[0])
		return nil
	}); err != nil {
		return "", fmt.Errorf("sqlitestore: %s: %w", s.path, err)
	}
	// Probe for FTS5 in a temporary table: go-sqlite3 compiles it in only
	// with the sqlite_fts5 build tag.
	if err := c.execOnce("CREATE VIRTUAL TABLE temp.fts_probe USING fts5(x)"); err != nil {
		s.log.Warn("sqlite built without FTS5 (build with -tags sqlite_fts5): text search will scan events", "err", err)
	} else {
		if err := c.execOnce("DROP TABLE temp.fts_probe"); err != nil {
			return "", fmt.Errorf("sqlitestore: %s: %w", s.path, err)
		}
		s.hasFTS = true
	}
	last, err := c.queryInt64("SELECT max(id) FROM events")
	if err != nil {
		return "", fmt.Errorf("sqlitestore: read last event id in %s: %w", s.path, err)
	}
	floor, err := idFloor(c, "")
	if err != nil {
		return "", fmt.Errorf("sqlitestore: read id floor in %s: %w", s.path, err)
	}
	s.w.nextID = max(last, floor) + 1
	s.w.names = make(map[[2]string]struct{})
	return storeID, nil
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
	s.closedFlag.Store(true)
	close(s.quit)
	<-s.done
	<-s.ckptDone
	<-s.ixDone
	s.ixCond.L.Lock()
	s.ixCond.Broadcast()
	s.ixCond.L.Unlock()
	// Keep the planner's statistics current for the next start.
	_ = s.wc.execOnce("PRAGMA optimize")
	err1 := s.rdb.Close()
	err2 := s.wc.close()
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("sqlitestore: close %s: %w", s.path, err)
	}
	return nil
}

// ErrClosed: the store was closed.
var ErrClosed = errors.New("sqlitestore: store is closed")

// readConnector opens the read pool's connections with the index file
// attached as "ix", so one query can walk an index there and read the
// events here.
type readConnector struct {
	dsn, index string
}

func (r *readConnector) Connect(context.Context) (driver.Conn, error) {
	c, err := drv.Open(r.dsn)
	if err != nil {
		return nil, err
	}
	if _, err := c.(*sqlite3.SQLiteConn).Exec("ATTACH DATABASE ? AS ix", []driver.Value{r.index}); err != nil {
		c.Close()
		return nil, fmt.Errorf("attach index %s: %w", r.index, err)
	}
	return c, nil
}

func (r *readConnector) Driver() driver.Driver { return drv }
