package sqlitestore

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// writeReq is one unit of work for the writer goroutine.
type writeReq struct {
	ctx  context.Context
	fn   func(c *wconn) error
	done chan error
}

// maxGroup bounds how many queued requests share one commit, so one commit's
// latency stays bounded under a flood.
const maxGroup = 64

// wconn is the writer's own connection, used without database/sql: the
// writer is its only user, so database/sql's pool, per-call locks and
// argument conversion buy nothing, and statements prepared once stay
// prepared for the life of the store (database/sql would re-prepare a
// statement in every transaction, or on whichever pool connection it
// lands on).
type wconn struct {
	c     *sqlite3.SQLiteConn
	stmts map[string]*sqlite3.SQLiteStmt
	nv    []driver.NamedValue // multiRow's values, reused
}

func (w *wconn) prep(q string) (*sqlite3.SQLiteStmt, error) {
	if st, ok := w.stmts[q]; ok {
		return st, nil
	}
	st, err := w.c.Prepare(q)
	if err != nil {
		return nil, err
	}
	w.stmts[q] = st.(*sqlite3.SQLiteStmt)
	return w.stmts[q], nil
}

// values converts Go arguments the way database/sql would (int to int64,
// bool to int64...), since the driver binds only its own value types.
func values(args []any) ([]driver.Value, error) {
	out := make([]driver.Value, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string, int64, []byte, nil:
			out[i] = v
		default:
			c, err := driver.DefaultParameterConverter.ConvertValue(a)
			if err != nil {
				return nil, fmt.Errorf("argument %d (%T): %w", i+1, a, err)
			}
			out[i] = c
		}
	}
	return out, nil
}

// exec runs a statement (cached) and returns the rows it changed.
func (w *wconn) exec(q string, args ...any) (int64, error) {
	st, err := w.prep(q)
	if err != nil {
		return 0, err
	}
	vals, err := values(args)
	if err != nil {
		return 0, err
	}
	//lint:ignore SA1019 the NamedValue variant needs a context per call for nothing.
	r, err := st.Exec(vals)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// query runs a statement (cached) and calls row for each result row; the
// values are only valid during the call.
func (w *wconn) query(q string, args []any, row func([]driver.Value) error) error {
	vals, err := values(args)
	if err != nil {
		return err
	}
	return w.queryValues(q, vals, row)
}

func (w *wconn) queryValues(q string, vals []driver.Value, row func([]driver.Value) error) error {
	st, err := w.prep(q)
	if err != nil {
		return err
	}
	//lint:ignore SA1019 as in exec.
	rows, err := st.Query(vals)
	if err != nil {
		return err
	}
	dest := make([]driver.Value, len(rows.Columns()))
	for {
		err := rows.Next(dest)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			rows.Close()
			return err
		}
		if err := row(dest); err != nil {
			rows.Close()
			return err
		}
	}
	return rows.Close()
}

// queryInt64 returns the first column of the first row (0 when there is no
// row or it is NULL).
func (w *wconn) queryInt64(q string, args ...any) (int64, error) {
	var v int64
	err := w.query(q, args, func(d []driver.Value) error {
		if n, ok := d[0].(int64); ok {
			v = n
		}
		return nil
	})
	return v, err
}

// execOnce runs statements without caching them (schema, pragmas).
func (w *wconn) execOnce(q string) error {
	_, err := w.c.Exec(q, nil)
	return err
}

func (w *wconn) close() error {
	for _, st := range w.stmts {
		st.Close()
	}
	w.stmts = nil
	return w.c.Close()
}

// writerState is owned by the writer goroutine (and init, before it starts).
type writerState struct {
	nextID int64
	// lastMark is the newest processed_at an insert used (insertTx).
	lastMark int64
	// args is insertTx's slice of row values, reused.
	args []driver.Value
	// names caches (name, ukey) pairs known to be in user_names, so the
	// common case (the same users again) costs no write.
	names map[[2]string]struct{}
	// dataVersion is PRAGMA data_version as of this writer's last
	// transaction; it changes only when another connection (another
	// process on the same file: a second quilt-qmd on the same data_dir)
	// committed, and then nextID and names are stale. synced is false
	// until the first transaction has read it.
	dataVersion int64
	synced      bool
}

// sync reloads what another process may have changed since this writer's
// last transaction. It runs inside the write transaction (BEGIN IMMEDIATE
// holds the write lock), so nothing can change between the check and the
// writes. Without it a standby that opened the file before the leader
// wrote assigns ids the leader already used: every insert fails with
// "UNIQUE constraint failed: events.id" once it leads.
func (w *writerState) sync(c *wconn) error {
	v, err := c.queryInt64("PRAGMA data_version")
	if err != nil {
		return fmt.Errorf("sqlitestore: read data_version: %w", err)
	}
	if w.synced && v == w.dataVersion {
		return nil
	}
	last, err := c.queryInt64("SELECT max(id) FROM events")
	if err != nil {
		return fmt.Errorf("sqlitestore: read last event id: %w", err)
	}
	if w.synced {
		// Names another process's cleanup removed must be inserted again.
		w.names = make(map[[2]string]struct{})
	}
	floor, err := idFloor(c, "")
	if err != nil {
		return fmt.Errorf("sqlitestore: read id floor: %w", err)
	}
	w.nextID = max(w.nextID, last+1, floor+1)
	w.dataVersion, w.synced = v, true
	return nil
}

const maxNameCache = 200000

// rowsSQL builds "prefix (..),(..) suffix" for n rows of row, a row's
// values where "$k" is the k-th value shared by every row (numbered
// parameter ?k) and "?" is the row's own next value: shared values are
// bound once per statement instead of once per row, and every bind is a
// cgo call.
func rowsSQL(prefix string, shared int, row string, n int, suffix string) string {
	var b strings.Builder
	b.WriteString(prefix)
	next := shared + 1
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		for j := 0; j < len(row); j++ {
			switch row[j] {
			case '$':
				b.WriteByte('?')
			case '?':
				b.WriteString("?" + strconv.Itoa(next))
				next++
			default:
				b.WriteByte(row[j])
			}
		}
	}
	b.WriteString(suffix)
	return b.String()
}

// chunkSizes are the row counts of the cached multi-row statements; a batch
// is cut greedily into them, so a batch of 1000 takes 6 statements and the
// cache holds at most len(chunkSizes) texts per table. 512 rows of the
// widest table (10 values per row) stay far below SQLite's 32766
// variables.
var chunkSizes = [...]int{512, 256, 128, 64, 32, 16, 8, 4, 2, 1}

// multiRow is a multi-row INSERT of one table, its texts built once.
type multiRow struct {
	shared, cols int
	texts        map[int]string
}

// newMultiRow: see rowsSQL for row.
func newMultiRow(prefix string, shared int, row string, suffix string) *multiRow {
	m := &multiRow{shared: shared, cols: strings.Count(row, "?"), texts: make(map[int]string, len(chunkSizes))}
	for _, n := range chunkSizes {
		m.texts[n] = rowsSQL(prefix, shared, row, n, suffix)
	}
	return m
}

// exec inserts rows with multi-row statements: shared holds the values
// every row shares, args the rows' own values flattened.
func (m *multiRow) exec(c *wconn, shared, args []driver.Value) error {
	_, err := m.execCount(c, shared, args)
	return err
}

// execCount is exec that returns how many rows the statements changed.
func (m *multiRow) execCount(c *wconn, shared, args []driver.Value) (int64, error) {
	if len(shared) != m.shared {
		return 0, fmt.Errorf("multi-row insert: %d shared values, want %d", len(shared), m.shared)
	}
	var n int64
	for rows := len(args) / m.cols; rows > 0; {
		size := 1
		for _, c := range chunkSizes {
			if c <= rows {
				size = c
				break
			}
		}
		st, err := c.prep(m.texts[size])
		if err != nil {
			return n, err
		}
		// The driver's Exec would copy the values into a new slice of
		// NamedValue per statement; this one is reused.
		nv := c.nv[:0]
		for _, v := range shared {
			nv = append(nv, driver.NamedValue{Ordinal: len(nv) + 1, Value: v})
		}
		for _, v := range args[:size*m.cols] {
			nv = append(nv, driver.NamedValue{Ordinal: len(nv) + 1, Value: v})
		}
		r, err := st.ExecContext(context.Background(), nv)
		clear(nv) // drop the references to the batch's values
		c.nv = nv
		if err != nil {
			return n, err
		}
		k, err := r.RowsAffected()
		if err != nil {
			return n, err
		}
		n += k
		args = args[size*m.cols:]
		rows -= size
	}
	return n, nil
}

// write queues fn for the writer and waits for its commit. When it returns
// nil, fn's changes are committed.
func (s *Store) write(ctx context.Context, fn func(c *wconn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	r := &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case s.reqs <- r:
		s.closeMu.RUnlock()
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		// The write may still commit; the caller did not get an
		// acknowledgement, so a replay is reported as duplicates of
		// events that are stored: nothing is lost.
		return ctx.Err()
	}
}

func (s *Store) writer() {
	defer close(s.done)
	group := make([]*writeReq, 0, maxGroup)
	for {
		var first *writeReq
		select {
		case first = <-s.reqs:
		case <-s.quit:
			// Close holds closeMu while setting closed, so no request is
			// queued after quit; drain what is already there.
			for {
				select {
				case r := <-s.reqs:
					s.commit([]*writeReq{r})
				default:
					return
				}
			}
		}
		group = append(group[:0], first)
	fill:
		for len(group) < maxGroup {
			select {
			case r := <-s.reqs:
				group = append(group, r)
			default:
				break fill
			}
		}
		s.commit(group)
	}
}

// commit runs the group in one transaction (group commit: one WAL append
// and, with synchronous=full, one fsync for all of them), each request in
// a savepoint so one failing request does not fail the others.
func (s *Store) commit(group []*writeReq) {
	c := s.wc
	errs := make([]error, len(group))
	fail := func(err error) {
		for _, r := range group {
			r.done <- err
		}
	}
	// IMMEDIATE takes the write lock now, so a second process on the file
	// waits (busy_timeout) here instead of failing at its first write.
	if _, err := c.exec("BEGIN IMMEDIATE"); err != nil {
		fail(fmt.Errorf("sqlitestore: begin transaction on %s: %w", s.path, err))
		return
	}
	rollback := func() {
		if _, err := c.exec("ROLLBACK"); err != nil {
			s.log.Warn("rollback failed", "err", err)
		}
	}
	if err := s.w.sync(c); err != nil {
		rollback()
		fail(fmt.Errorf("%w (%s)", err, s.path))
		return
	}
	saved := s.w.nextID
	live := 0
	for i, r := range group {
		if err := r.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		before := s.w.nextID
		if len(group) > 1 {
			if _, err := c.exec("SAVEPOINT req"); err != nil {
				errs[i] = err
				continue
			}
		}
		errs[i] = r.fn(c)
		if len(group) > 1 {
			if errs[i] != nil {
				if _, err := c.exec("ROLLBACK TO req"); err != nil {
					// The transaction is unusable; fail everyone.
					rollback()
					s.w.nextID = saved
					s.w.names = make(map[[2]string]struct{})
					fail(fmt.Errorf("sqlitestore: roll back a failed write on %s: %w", s.path, err))
					return
				}
				s.w.nextID = before
			}
			if _, err := c.exec("RELEASE req"); err != nil && errs[i] == nil {
				errs[i] = err
			}
		}
		if errs[i] == nil {
			live++
		}
	}
	for _, err := range errs {
		if err != nil {
			// A cached name may belong to rolled-back work.
			s.w.names = make(map[[2]string]struct{})
			break
		}
	}
	if live == 0 && len(group) == 1 {
		rollback()
		s.w.nextID = saved
	} else if _, err := c.exec("COMMIT"); err == nil {
		s.commits.Add(1)
		if s.w.nextID-1 > s.committed.Load() {
			s.committed.Store(s.w.nextID - 1)
			s.kickIndexer()
		}
	} else {
		rollback()
		s.w.nextID = saved
		// A cached name may belong to the rolled-back work.
		s.w.names = make(map[[2]string]struct{})
		err = fmt.Errorf("sqlitestore: commit to %s: %w", s.path, err)
		for i := range errs {
			errs[i] = err
		}
	}
	for i, r := range group {
		r.done <- errs[i]
	}
}
