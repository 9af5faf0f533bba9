package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// writeReq is one unit of work for the writer goroutine.
type writeReq struct {
	ctx  context.Context
	fn   func(tx *sql.Tx) error
	done chan error
}

// maxGroup bounds how many queued requests share one commit, so one commit's
// latency stays bounded under a flood.
const maxGroup = 64

// writerState is owned by the writer goroutine (and init, before it starts).
type writerState struct {
	nextID int64
	// names caches (name, ukey) pairs known to be in user_names, so the
	// common case (the same users again) costs no write.
	names map[[2]string]struct{}
	stmts map[string]*sql.Stmt
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
func (w *writerState) sync(ctx context.Context, tx *sql.Tx) error {
	var v int64
	if err := tx.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v); err != nil {
		return fmt.Errorf("sqlitestore: read data_version: %w", err)
	}
	if w.synced && v == w.dataVersion {
		return nil
	}
	var last sql.NullInt64
	if err := tx.QueryRowContext(ctx, "SELECT max(id) FROM events").Scan(&last); err != nil {
		return fmt.Errorf("sqlitestore: read last event id: %w", err)
	}
	if w.synced {
		// Names another process's cleanup removed must be inserted again.
		w.names = make(map[[2]string]struct{})
	}
	w.nextID = max(w.nextID, last.Int64+1)
	w.dataVersion, w.synced = v, true
	return nil
}

const maxNameCache = 200000

func (w *writerState) load(ctx context.Context, db *sql.DB) error {
	var max sql.NullInt64
	if err := db.QueryRowContext(ctx, "SELECT max(id) FROM events").Scan(&max); err != nil {
		return fmt.Errorf("sqlitestore: read last event id: %w", err)
	}
	w.nextID = max.Int64 + 1
	w.names = make(map[[2]string]struct{})
	if w.stmts == nil {
		w.stmts = make(map[string]*sql.Stmt)
	}
	return nil
}

// stmt returns a cached prepared statement. It is prepared on the DB, not
// on a sql.Conn: database/sql re-prepares a Conn's statement in every
// transaction, but caches a DB statement per connection. Multi-row statements are keyed
// by their text, and the row counts come from a few fixed chunk sizes, so
// the cache stays small.
func (s *Store) stmt(ctx context.Context, tx *sql.Tx, q string) (*sql.Stmt, error) {
	st, ok := s.w.stmts[q]
	if !ok {
		var err error
		st, err = s.wdb.PrepareContext(ctx, q)
		if err != nil {
			return nil, err
		}
		s.w.stmts[q] = st
	}
	return tx.StmtContext(ctx, st), nil
}

// rowsSQL builds "prefix (?,?),(?,?) suffix" for n rows of cols values.
func rowsSQL(prefix string, cols, n int, suffix string) string {
	var b strings.Builder
	one := "(" + strings.Repeat("?,", cols-1) + "?)"
	b.Grow(len(prefix) + len(suffix) + n*(len(one)+1))
	b.WriteString(prefix)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(one)
	}
	b.WriteString(suffix)
	return b.String()
}

// chunkSizes are the row counts of the cached multi-row statements; a batch
// is cut greedily into them.
var chunkSizes = [...]int{256, 64, 16, 4, 1}

// execRows inserts rows (each cols values, flattened in args) with
// multi-row statements.
func (s *Store) execRows(ctx context.Context, tx *sql.Tx, prefix string, cols int, suffix string, args []any) error {
	n := len(args) / cols
	for n > 0 {
		size := 1
		for _, c := range chunkSizes {
			if c <= n {
				size = c
				break
			}
		}
		st, err := s.stmt(ctx, tx, rowsSQL(prefix, cols, size, suffix))
		if err != nil {
			return err
		}
		if _, err := st.ExecContext(ctx, args[:size*cols]...); err != nil {
			return err
		}
		args = args[size*cols:]
		n -= size
	}
	return nil
}

// write queues fn for the writer and waits for its commit. When it returns
// nil, fn's changes are committed.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
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
	defer func() {
		for _, st := range s.w.stmts {
			st.Close()
		}
	}()
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

// commit runs the group in one transaction, each request in a savepoint.
func (s *Store) commit(group []*writeReq) {
	ctx := context.Background()
	errs := make([]error, len(group))
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		err = fmt.Errorf("sqlitestore: begin transaction on %s: %w", s.path, err)
		for _, r := range group {
			r.done <- err
		}
		return
	}
	if err := s.w.sync(ctx, tx); err != nil {
		tx.Rollback()
		for _, r := range group {
			r.done <- fmt.Errorf("%w (%s)", err, s.path)
		}
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
			if _, err := tx.ExecContext(ctx, "SAVEPOINT req"); err != nil {
				errs[i] = err
				continue
			}
		}
		errs[i] = r.fn(tx)
		if len(group) > 1 {
			if errs[i] != nil {
				if _, err := tx.ExecContext(ctx, "ROLLBACK TO req"); err != nil {
					// The transaction is unusable; fail everyone.
					tx.Rollback()
					s.w.nextID = saved
					s.w.names = make(map[[2]string]struct{})
					for _, r := range group {
						r.done <- fmt.Errorf("sqlitestore: roll back a failed write on %s: %w", s.path, err)
					}
					return
				}
				s.w.nextID = before
			}
			if _, err := tx.ExecContext(ctx, "RELEASE req"); err != nil && errs[i] == nil {
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
		tx.Rollback()
		s.w.nextID = saved
	} else if err := tx.Commit(); err != nil {
		tx.Rollback()
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
