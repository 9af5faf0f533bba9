package sqlitestore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/internal/storeutil"
)

// InsertEvents implements store.Store. The processed-id insert, the events
// and the cursors commit in one transaction, and the (source, id) primary
// key of processed is the atomic check: of concurrent overlapping batches,
// exactly one gets each id's row.
func (s *Store) InsertEvents(ctx context.Context, source string, events []*quiltv1.Event, cursors []*quiltv1.Cursor) (store.InsertResult, error) {
	events, err := storeutil.CheckBatch(source, events)
	if err != nil {
		return store.InsertResult{}, err
	}
	// Everything that needs no lock is done here, beside other callers,
	// so the single writer only binds values and steps statements.
	prep := make([]preparedEvent, len(events))
	for i, e := range events {
		p := &prep[i]
		if p.data, err = proto.Marshal(e); err != nil {
			return store.InsertResult{}, fmt.Errorf("sqlitestore: encode event %q of source %q: %w", e.GetId(), source, err)
		}
		p.timeNS = storeutil.TimeNS(e)
		p.ukey = storeutil.UserKey(e.GetUser())
		p.names = storeutil.Names(e.GetUser())
		p.msg = storeutil.IsMessage(e.GetKind())
	}
	var res store.InsertResult
	err = s.write(ctx, func(c *wconn) error {
		res = store.InsertResult{}
		return s.insertTx(c, source, events, prep, cursors, &res)
	})
	if err != nil {
		return store.InsertResult{}, fmt.Errorf("sqlitestore: insert %d events from source %q: %w", len(events), source, err)
	}
	return res, nil
}

// preparedEvent is what InsertEvents computes for an event before queueing
// the write.
type preparedEvent struct {
	data   []byte
	timeNS int64
	ukey   string
	names  []string
	msg    bool
}

// The multi-row INSERTs of a batch: one statement per table per chunk of
// rows instead of one per row.
var (
	insProcessed = newMultiRow("INSERT INTO processed(source, id, processed_at) VALUES ", 3, " ON CONFLICT DO NOTHING RETURNING id")
	insEvents    = newMultiRow("INSERT INTO events(id, source, eid, server, channel, kind, time_ns, ukey, text, data) VALUES ", 10, "")
	insUsers     = newMultiRow("INSERT INTO event_users(name, time_ns, ev, ukey, msg) VALUES ", 5, " ON CONFLICT DO NOTHING")
	insNames     = newMultiRow("INSERT INTO user_names(name, ukey) VALUES ", 2, " ON CONFLICT DO NOTHING")
	insFTS       = newMultiRow("INSERT INTO events_fts(rowid, text) VALUES ", 2, "")
)

func (s *Store) insertTx(c *wconn, source string, events []*quiltv1.Event, prep []preparedEvent, cursors []*quiltv1.Cursor, res *store.InsertResult) error {
	now := time.Now().UnixNano()
	if len(events) > 0 {
		args := make([]driver.Value, 0, 3*len(events))
		for _, e := range events {
			args = append(args, source, e.GetId(), now)
		}
		fresh := make(map[string]bool, len(events))
		err := insProcessed.chunks(args, func(q string, vals []driver.Value) error {
			return c.queryValues(q, vals, func(d []driver.Value) error {
				switch id := d[0].(type) {
				case string:
					fresh[id] = true
				case []byte:
					fresh[string(id)] = true
				default:
					return fmt.Errorf("processed id returned as %T", d[0])
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		evArgs := make([]driver.Value, 0, 10*len(events))
		userArgs := make([]driver.Value, 0, 5*3*len(events))
		nameArgs := []driver.Value(nil)
		ftsArgs := make([]driver.Value, 0, 2*len(events))
		for i, e := range events {
			if !fresh[e.GetId()] {
				res.Duplicates = append(res.Duplicates, e.GetId())
				continue
			}
			// A repeated id within the batch is a duplicate of its first
			// occurrence.
			delete(fresh, e.GetId())
			p := &prep[i]
			id := s.w.nextID
			s.w.nextID++
			evArgs = append(evArgs, id, source, e.GetId(), e.GetServer(), e.GetChannel(), int64(e.GetKind()), p.timeNS, p.ukey, e.GetText(), p.data)
			msg := int64(0)
			if p.msg {
				msg = 1
			}
			for _, n := range p.names {
				userArgs = append(userArgs, n, p.timeNS, id, p.ukey, msg)
				k := [2]string{n, p.ukey}
				if _, ok := s.w.names[k]; !ok {
					if len(s.w.names) >= maxNameCache {
						s.w.names = make(map[[2]string]struct{})
					}
					s.w.names[k] = struct{}{}
					nameArgs = append(nameArgs, n, p.ukey)
				}
			}
			if s.hasFTS && e.GetText() != "" {
				ftsArgs = append(ftsArgs, id, e.GetText())
			}
			res.Stored++
		}
		if err := insEvents.exec(c, evArgs); err != nil {
			return err
		}
		if err := insUsers.exec(c, userArgs); err != nil {
			return err
		}
		if err := insNames.exec(c, nameArgs); err != nil {
			return err
		}
		if err := insFTS.exec(c, ftsArgs); err != nil {
			return err
		}
	}
	for _, cur := range cursors {
		_, err := c.exec("INSERT INTO cursors(source, server, name, value) VALUES (?, ?, ?, ?) ON CONFLICT(source, server, name) DO UPDATE SET value = excluded.value",
			source, cur.GetServer(), cur.GetName(), cur.GetValue())
		if err != nil {
			return fmt.Errorf("cursor %s/%s: %w", cur.GetServer(), cur.GetName(), err)
		}
	}
	return nil
}

// where builds the FROM/WHERE of an event query. tcol and idcol name the
// (time, id) columns to order and page by: when the user filter is an exact
// name, event_users drives the query, since its primary key is already
// (name, time, id) ordered.
func (s *Store) where(f *quiltv1.EventFilter, exactName string) (from string, conds []string, args []any, tcol, idcol string) {
	from, tcol, idcol = "events e", "e.time_ns", "e.id"
	if exactName != "" {
		from, tcol, idcol = "event_users u JOIN events e ON e.id = u.ev", "u.time_ns", "u.ev"
		conds = append(conds, "u.name = ?")
		args = append(args, exactName)
	} else if u := f.GetUser(); u != "" {
		if storeutil.HasWildcard(u) {
			conds = append(conds, "e.id IN (SELECT ev FROM event_users WHERE name GLOB ?)")
			args = append(args, sqliteGlob(u))
		} else {
			from, tcol, idcol = "event_users u JOIN events e ON e.id = u.ev", "u.time_ns", "u.ev"
			conds = append(conds, "u.name = ?")
			args = append(args, strings.ToLower(u))
		}
	}
	if src := f.GetSources(); len(src) > 0 {
		conds = append(conds, "e.source IN ("+placeholders(len(src))+")")
		for _, x := range src {
			args = append(args, x)
		}
	}
	if v := f.GetServer(); v != "" {
		conds = append(conds, "e.server = ?")
		args = append(args, v)
	}
	if v := f.GetChannel(); v != "" {
		conds = append(conds, "e.channel = ?")
		args = append(args, v)
	}
	if k := f.GetKinds(); len(k) > 0 {
		conds = append(conds, "e.kind IN ("+placeholders(len(k))+")")
		for _, x := range k {
			args = append(args, int64(x))
		}
	}
	if v := f.GetText(); v != "" {
		if s.hasFTS && utf8.RuneCountInString(v) >= 3 {
			// Trigram MATCH is a case-insensitive substring search; the
			// string is one quoted phrase so its characters are literal.
			conds = append(conds, "e.id IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)")
			args = append(args, `"`+strings.ReplaceAll(v, `"`, `""`)+`"`)
		} else {
			c, a := containsCond("e.text", v)
			conds = append(conds, c)
			args = append(args, a...)
		}
	}
	if v := f.GetTextRegex(); v != "" {
		conds = append(conds, "e.text REGEXP ?")
		args = append(args, v)
	}
	if v := f.GetSince(); v != nil {
		conds = append(conds, tcol+" >= ?")
		args = append(args, v.AsTime().UnixNano())
	}
	if v := f.GetUntil(); v != nil {
		conds = append(conds, tcol+" < ?")
		args = append(args, v.AsTime().UnixNano())
	}
	return from, conds, args, tcol, idcol
}

func placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

// sqliteGlob lowercases a user glob and makes everything but * and ?
// literal for GLOB ("[" is GLOB's only other special character).
func sqliteGlob(p string) string {
	return strings.ReplaceAll(strings.ToLower(p), "[", "[[]")
}

func whereSQL(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// maxGlobMerge is how many names a user glob may match and still be
// answered by merging one index-ordered query per name; beyond it one query
// filters by the glob and sorts.
const maxGlobMerge = 64

type pageRow struct {
	key  storeutil.Key
	data []byte
}

// QueryEvents implements store.Store with a keyset page token (time, id).
func (s *Store) QueryEvents(ctx context.Context, q store.EventQuery) (store.EventPage, error) {
	if err := storeutil.CheckFilter(q.Filter); err != nil {
		return store.EventPage{}, err
	}
	limit := storeutil.Limit(q.Limit)
	var after *storeutil.Key
	if q.PageToken != "" {
		k, err := storeutil.DecodeToken(q.PageToken)
		if err != nil {
			return store.EventPage{}, err
		}
		after = &k
	}
	var rows []pageRow
	var err error
	names, merge := []string(nil), false
	if u := q.Filter.GetUser(); u != "" && storeutil.HasWildcard(u) {
		names, err = s.globNames(ctx, u)
		if err != nil {
			return store.EventPage{}, err
		}
		merge = len(names) <= maxGlobMerge
	}
	if merge {
		// A glob matching a few names: each name's rows come in order from
		// event_users' primary key; merge them. An event carrying two
		// matching names appears in both lists: keep one.
		seen := map[int64]bool{}
		for _, n := range names {
			part, err := s.page(ctx, q.Filter, n, after, q.OldestFirst, limit+1)
			if err != nil {
				return store.EventPage{}, err
			}
			for _, r := range part {
				if !seen[r.key.Seq] {
					seen[r.key.Seq] = true
					rows = append(rows, r)
				}
			}
		}
		sort.Slice(rows, func(i, j int) bool {
			a, b := rows[i].key, rows[j].key
			less := a.TimeNS < b.TimeNS || (a.TimeNS == b.TimeNS && a.Seq < b.Seq)
			return less == q.OldestFirst
		})
		if len(rows) > limit+1 {
			rows = rows[:limit+1]
		}
	} else if rows, err = s.page(ctx, q.Filter, "", after, q.OldestFirst, limit+1); err != nil {
		return store.EventPage{}, err
	}
	var page store.EventPage
	for i, r := range rows {
		if i == limit {
			page.NextPageToken = storeutil.EncodeToken(rows[i-1].key)
			break
		}
		e := new(quiltv1.Event)
		if err := proto.Unmarshal(r.data, e); err != nil {
			return store.EventPage{}, fmt.Errorf("sqlitestore: decode event row %d: %w", r.key.Seq, err)
		}
		page.Events = append(page.Events, e)
	}
	return page, nil
}

// globNames lists the distinct stored names matching a user glob.
func (s *Store) globNames(ctx context.Context, glob string) ([]string, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT DISTINCT name FROM user_names WHERE name GLOB ? LIMIT ?", sqliteGlob(glob), maxGlobMerge+1)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: names matching %q: %w", glob, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("sqlitestore: names matching %q: %w", glob, err)
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// containsCond is a case-insensitive substring test of col for needle
// that SQLite evaluates without calling back into Go for most rows: for an
// ASCII needle, LIKE (ASCII case folding) decides every row whose text is
// ASCII, and only rows with other characters (where Unicode folding could
// turn e.g. a Kelvin sign into "k") ask quilt_icontains.
func containsCond(col, needle string) (string, []any) {
	lower := strings.ToLower(needle)
	for i := 0; i < len(needle); i++ {
		if needle[i] >= utf8.RuneSelf {
			return "quilt_icontains(" + col + ", ?)", []any{lower}
		}
	}
	esc := strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(needle)
	return "(" + col + " LIKE ? ESCAPE '\\' OR (length(" + col + ") <> octet_length(" + col + ") AND quilt_icontains(" + col + ", ?)))",
		[]any{"%" + esc + "%", lower}
}

// textScanWindow is how many of the newest rows matching the other
// filters a text search checks directly before asking the full-text
// index. A phrase found in more than 1 in 200 events fills a page inside
// the window: checking 20k rows in index order costs a few milliseconds,
// while the trigram index must intersect every posting list of the
// phrase's trigrams over the whole table (hundreds of milliseconds at 1M
// events for common words) before it can sort by time.
const textScanWindow = 20000

// page runs one ordered, limited query (exactName overrides the filter's
// user).
func (s *Store) page(ctx context.Context, f *quiltv1.EventFilter, exactName string, after *storeutil.Key, oldest bool, n int) ([]pageRow, error) {
	if f.GetText() != "" {
		rows, full, err := s.scanPage(ctx, f, exactName, after, oldest, n)
		if err != nil || full {
			return rows, err
		}
	}
	return s.indexPage(ctx, f, exactName, after, oldest, n)
}

// scanPage answers a text search from the newest textScanWindow rows of
// the rest of the filter; full is false when they held fewer than n
// matches (older rows may hold the rest).
func (s *Store) scanPage(ctx context.Context, f *quiltv1.EventFilter, exactName string, after *storeutil.Key, oldest bool, n int) (rows []pageRow, full bool, err error) {
	rest := proto.Clone(f).(*quiltv1.EventFilter)
	rest.Text = ""
	from, conds, args, tcol, idcol := s.where(rest, exactName)
	cmp, dir := "<", "DESC"
	if oldest {
		cmp, dir = ">", "ASC"
	}
	if after != nil {
		conds = append(conds, "("+tcol+", "+idcol+") "+cmp+" (?, ?)")
		args = append(args, after.TimeNS, after.Seq)
	}
	textCond, textArgs := containsCond("x.text", f.GetText())
	query := "SELECT x.id, x.t, ev.data FROM (SELECT e.id AS id, " + tcol + " AS t, e.text AS text FROM " + from + whereSQL(conds) +
		" ORDER BY " + tcol + " " + dir + ", " + idcol + " " + dir + " LIMIT ?) x CROSS JOIN events ev ON ev.id = x.id WHERE " + textCond +
		" ORDER BY x.t " + dir + ", x.id " + dir + " LIMIT ?"
	args = append(args, textScanWindow)
	args = append(args, textArgs...)
	args = append(args, n)
	r, err := s.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, false, fmt.Errorf("sqlitestore: query events: %w", err)
	}
	defer r.Close()
	for r.Next() {
		var row pageRow
		if err := r.Scan(&row.key.Seq, &row.key.TimeNS, &row.data); err != nil {
			return nil, false, fmt.Errorf("sqlitestore: query events: %w", err)
		}
		rows = append(rows, row)
	}
	if err := r.Err(); err != nil {
		return nil, false, fmt.Errorf("sqlitestore: query events: %w", err)
	}
	if len(rows) < n {
		return nil, false, nil
	}
	return rows, true, nil
}

// indexPage runs the page query with every filter in SQL.
func (s *Store) indexPage(ctx context.Context, f *quiltv1.EventFilter, exactName string, after *storeutil.Key, oldest bool, n int) ([]pageRow, error) {
	from, conds, args, tcol, idcol := s.where(f, exactName)
	cmp, dir := "<", "DESC"
	if oldest {
		cmp, dir = ">", "ASC"
	}
	if after != nil {
		conds = append(conds, "("+tcol+", "+idcol+") "+cmp+" (?, ?)")
		args = append(args, after.TimeNS, after.Seq)
	}
	query := "SELECT e.id, e.time_ns, e.data FROM " + from + whereSQL(conds) +
		" ORDER BY " + tcol + " " + dir + ", " + idcol + " " + dir + " LIMIT ?"
	args = append(args, n)
	rows, err := s.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: query events: %w", err)
	}
	defer rows.Close()
	var out []pageRow
	for rows.Next() {
		var r pageRow
		if err := rows.Scan(&r.key.Seq, &r.key.TimeNS, &r.data); err != nil {
			return nil, fmt.Errorf("sqlitestore: query events: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// CountEvents implements store.Store.
func (s *Store) CountEvents(ctx context.Context, f *quiltv1.EventFilter) (int64, error) {
	if err := storeutil.CheckFilter(f); err != nil {
		return 0, err
	}
	from, conds, args, _, _ := s.where(f, "")
	var n int64
	if err := s.rdb.QueryRowContext(ctx, "SELECT count(*) FROM "+from+whereSQL(conds), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlitestore: count events: %w", err)
	}
	return n, nil
}

// maxLastSeenNames bounds how many (name, user) pairs one LastSeen probes.
const maxLastSeenNames = 10000

// LastSeen implements store.Store: user_names gives the matching (name,
// user key) pairs; each pair's newest event and newest message are one
// backwards step on event_users' primary key and its msg=1 partial index.
func (s *Store) LastSeen(ctx context.Context, q store.LastSeenQuery) ([]*quiltv1.LastSeenRow, error) {
	if q.User == "" {
		return nil, fmt.Errorf("sqlitestore: lastseen: empty user pattern")
	}
	var rows *sql.Rows
	var err error
	if storeutil.HasWildcard(q.User) {
		rows, err = s.rdb.QueryContext(ctx, "SELECT name, ukey FROM user_names WHERE name GLOB ? LIMIT ?", sqliteGlob(q.User), maxLastSeenNames)
	} else {
		rows, err = s.rdb.QueryContext(ctx, "SELECT name, ukey FROM user_names WHERE name = ? LIMIT ?", strings.ToLower(q.User), maxLastSeenNames)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: lastseen %q: %w", q.User, err)
	}
	var pairs [][2]string
	for rows.Next() {
		var p [2]string
		if err := rows.Scan(&p[0], &p[1]); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlitestore: lastseen %q: %w", q.User, err)
		}
		pairs = append(pairs, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: lastseen %q: %w", q.User, err)
	}
	srcCond, srcArgs := "", []any(nil)
	if len(q.Sources) > 0 {
		srcCond = " AND e.source IN (" + placeholders(len(q.Sources)) + ")"
		for _, x := range q.Sources {
			srcArgs = append(srcArgs, x)
		}
	}
	type hit struct {
		key storeutil.Key
		ev  *quiltv1.Event
	}
	newest := func(p [2]string, msgOnly bool) (hit, error) {
		cond := ""
		if msgOnly {
			cond = " AND u.msg = 1"
		}
		args := append([]any{p[0], p[1]}, srcArgs...)
		var h hit
		var data []byte
		err := s.rdb.QueryRowContext(ctx, "SELECT u.time_ns, u.ev, e.data FROM event_users u JOIN events e ON e.id = u.ev WHERE u.name = ? AND u.ukey = ?"+cond+srcCond+
			" ORDER BY u.time_ns DESC, u.ev DESC LIMIT 1", args...).Scan(&h.key.TimeNS, &h.key.Seq, &data)
		if err == sql.ErrNoRows {
			return hit{}, nil
		}
		if err != nil {
			return hit{}, err
		}
		h.ev = new(quiltv1.Event)
		return h, proto.Unmarshal(data, h.ev)
	}
	later := func(a, b hit) bool {
		if b.ev == nil {
			return true
		}
		return a.key.TimeNS > b.key.TimeNS || (a.key.TimeNS == b.key.TimeNS && a.key.Seq > b.key.Seq)
	}
	type acc struct{ last, msg hit }
	users := map[string]*acc{}
	for _, p := range pairs {
		h, err := newest(p, false)
		if err != nil {
			return nil, fmt.Errorf("sqlitestore: lastseen %q: %w", q.User, err)
		}
		if h.ev == nil {
			continue
		}
		m, err := newest(p, true)
		if err != nil {
			return nil, fmt.Errorf("sqlitestore: lastseen %q: %w", q.User, err)
		}
		a := users[p[1]]
		if a == nil {
			a = &acc{}
			users[p[1]] = a
		}
		if later(h, a.last) {
			a.last = h
		}
		if m.ev != nil && later(m, a.msg) {
			a.msg = m
		}
	}
	out := make([]*quiltv1.LastSeenRow, 0, len(users))
	keys := make(map[*quiltv1.LastSeenRow]storeutil.Key, len(users))
	for _, a := range users {
		r := storeutil.LastSeenRow(a.last.ev, a.msg.ev)
		keys[r] = a.last.key
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := keys[out[i]], keys[out[j]]
		return a.TimeNS > b.TimeNS || (a.TimeNS == b.TimeNS && a.Seq > b.Seq)
	})
	limit := storeutil.Limit(q.Limit)
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// cleanupChunk bounds one cleanup transaction so inserts interleave.
const cleanupChunk = 2000

// Cleanup implements store.Store. A zero time skips that part.
func (s *Store) Cleanup(ctx context.Context, eventsBefore, processedBefore time.Time) (store.CleanupResult, error) {
	var res store.CleanupResult
	if !eventsBefore.IsZero() {
		before := eventsBefore.UnixNano()
		for {
			var n int
			err := s.write(ctx, func(c *wconn) error {
				var err error
				n, err = s.deleteEventsTx(c, before)
				return err
			})
			if err != nil {
				return res, fmt.Errorf("sqlitestore: clean up events before %s: %w", eventsBefore.Format(time.RFC3339), err)
			}
			res.Events += int64(n)
			if n < cleanupChunk {
				break
			}
		}
		err := s.write(ctx, func(c *wconn) error {
			_, err := c.exec("DELETE FROM user_names WHERE NOT EXISTS (SELECT 1 FROM event_users u WHERE u.name = user_names.name AND u.ukey = user_names.ukey)")
			s.w.names = make(map[[2]string]struct{})
			return err
		})
		if err != nil {
			return res, fmt.Errorf("sqlitestore: clean up user names: %w", err)
		}
	}
	if !processedBefore.IsZero() {
		for {
			var n int64
			err := s.write(ctx, func(c *wconn) error {
				var err error
				n, err = c.exec("DELETE FROM processed WHERE (source, id) IN (SELECT source, id FROM processed WHERE processed_at < ? LIMIT ?)", processedBefore.UnixNano(), int64(cleanupChunk*5))
				return err
			})
			if err != nil {
				return res, fmt.Errorf("sqlitestore: clean up processed ids before %s: %w", processedBefore.Format(time.RFC3339), err)
			}
			res.Processed += n
			if n < cleanupChunk*5 {
				break
			}
		}
	}
	return res, nil
}

func (s *Store) deleteEventsTx(c *wconn, before int64) (int, error) {
	type victim struct {
		id, t int64
		text  string
		names []string
	}
	var vs []victim
	err := c.query("SELECT id, time_ns, text, data FROM events WHERE time_ns < ? ORDER BY time_ns LIMIT ?", []any{before, int64(cleanupChunk)}, func(d []driver.Value) error {
		v := victim{id: d[0].(int64), t: d[1].(int64), text: asString(d[2])}
		data, _ := d[3].([]byte)
		e := new(quiltv1.Event)
		if err := proto.Unmarshal(data, e); err != nil {
			return fmt.Errorf("decode event row %d: %w", v.id, err)
		}
		v.names = storeutil.Names(e.GetUser())
		vs = append(vs, v)
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, v := range vs {
		for _, n := range v.names {
			if _, err := c.exec("DELETE FROM event_users WHERE name = ? AND time_ns = ? AND ev = ?", n, v.t, v.id); err != nil {
				return 0, err
			}
		}
		if s.hasFTS && v.text != "" {
			// External-content FTS5 needs the old text to remove its tokens.
			if _, err := c.exec("INSERT INTO events_fts(events_fts, rowid, text) VALUES('delete', ?, ?)", v.id, v.text); err != nil {
				return 0, err
			}
		}
		if _, err := c.exec("DELETE FROM events WHERE id = ?", v.id); err != nil {
			return 0, err
		}
	}
	return len(vs), nil
}

// asString reads a TEXT column the driver may return as string or []byte.
func asString(v driver.Value) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	}
	return ""
}
