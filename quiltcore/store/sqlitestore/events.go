package sqlitestore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"
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
	// One scratch message and one buffer for the batch's encodings: an
	// Event and a slice per event were most of the garbage an insert
	// made.
	var scratch quiltv1.Event
	buf := make([]byte, 0, 128*len(events))
	for i, e := range events {
		p := &prep[i]
		p.timeNS = storeutil.TimeNS(e)
		start := len(buf)
		if buf, err = appendStoredData(buf, &scratch, e, p.timeNS); err != nil {
			return store.InsertResult{}, fmt.Errorf("sqlitestore: encode event %q of source %q: %w", e.GetId(), source, err)
		}
		p.data = buf[start:len(buf):len(buf)]
		p.ukey = storeutil.UserKey(e.GetUser())
		p.names, p.namesCol = rowNames(e.GetUser())
	}
	// Back-pressure: hold the batch while the indexer is far behind
	// (index.go).
	if err := s.waitIndexed(ctx, s.committed.Load()-maxIndexLag); err != nil {
		return store.InsertResult{}, fmt.Errorf("sqlitestore: insert %d events from source %q: %w", len(events), source, err)
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
	// namesCol is the events.names value.
	namesCol string
}

// nameSep delimits the names in events.names, which starts and ends with
// it, so "the event has name N" is instr(names, nameSep+N+nameSep) > 0.
const nameSep = "\x1f"

// normName makes a lowercased name safe between nameSep: a name holding
// the separator itself (a control character no network allows in a nick;
// a display name might) has it replaced, for stored names and query names
// alike.
func normName(n string) string {
	if strings.Contains(n, nameSep) {
		return strings.ReplaceAll(n, nameSep, "\uFFFD")
	}
	return n
}

// rowNames are a user's normalised lowercased names and the events.names
// value holding them.
func rowNames(u *quiltv1.User) (names []string, col string) {
	names = storeutil.Names(u)
	for j, n := range names {
		names[j] = normName(n)
	}
	return names, namesColumn(names)
}

// namesColumn is the events.names value for the (normalised) names.
func namesColumn(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return nameSep + strings.Join(names, nameSep) + nameSep
}

// The multi-row INSERTs of a batch: one statement per table per chunk of
// rows instead of one per row.
var (
	// ?1 the source, ?2 this call's mark.
	insProcessed = newMultiRow("INSERT INTO processed(source, id, processed_at) VALUES ", 2, "($1,?,$2)", " ON CONFLICT DO NOTHING")
	// ?1 the source.
	insEvents = newMultiRow("INSERT INTO events(id, source, eid, server, channel, kind, time_ns, ukey, text, data, names) VALUES ", 1, "(?,$1,?,?,?,?,?,?,?,?,?)", "")
	insNames  = newMultiRow("INSERT INTO user_names(name, ukey) VALUES ", 0, "(?,?)", " ON CONFLICT DO NOTHING")
)

func (s *Store) insertTx(c *wconn, source string, events []*quiltv1.Event, prep []preparedEvent, cursors []*quiltv1.Cursor, res *store.InsertResult) error {
	// now marks this call's processed rows: unique per call (the writer
	// is the only caller), so the rare batch holding duplicates can tell
	// its own new rows from older ones.
	now := max(time.Now().UnixNano(), s.w.lastMark+1)
	s.w.lastMark = now
	if len(events) > 0 {
		args := make([]driver.Value, 0, len(events))
		for _, e := range events {
			args = append(args, e.GetId())
		}
		// The common batch has no duplicate: a plain insert and its row
		// count say so, without RETURNING (a row stepped back through cgo
		// per event, a third of the insert's cost).
		inserted, err := insProcessed.execCount(c, []driver.Value{source, now}, args)
		if err != nil {
			return err
		}
		var fresh map[string]bool
		if inserted < int64(len(events)) {
			fresh = make(map[string]bool, inserted)
			ids := make([]any, 0, len(events))
			for _, e := range events {
				ids = append(ids, e.GetId())
			}
			for len(ids) > 0 {
				chunk := ids[:min(len(ids), 500)]
				ids = ids[len(chunk):]
				err := c.query("SELECT id FROM processed WHERE source = ? AND processed_at = ? AND id IN ("+placeholders(len(chunk))+")", append([]any{source, now}, chunk...), func(d []driver.Value) error {
					fresh[asString(d[0])] = true
					return nil
				})
				if err != nil {
					return err
				}
			}
		}
		evArgs := s.w.args[:0]
		defer func() {
			clear(evArgs) // drop the references to the batch
			s.w.args = evArgs[:0]
		}()
		nameArgs := []driver.Value(nil)
		for i, e := range events {
			if fresh != nil {
				if !fresh[e.GetId()] {
					res.Duplicates = append(res.Duplicates, e.GetId())
					continue
				}
				// A repeated id within the batch is a duplicate of its
				// first occurrence.
				delete(fresh, e.GetId())
			}
			p := &prep[i]
			id := s.w.nextID
			s.w.nextID++
			evArgs = append(evArgs, id, e.GetId(), e.GetServer(), e.GetChannel(), int64(e.GetKind()), p.timeNS, p.ukey, e.GetText(), p.data, p.namesCol)
			for _, n := range p.names {
				k := [2]string{n, p.ukey}
				if _, ok := s.w.names[k]; !ok {
					if len(s.w.names) >= maxNameCache {
						s.w.names = make(map[[2]string]struct{})
					}
					s.w.names[k] = struct{}{}
					nameArgs = append(nameArgs, n, p.ukey)
				}
			}
			res.Stored++
		}
		if err := insEvents.exec(c, []driver.Value{source}, evArgs); err != nil {
			return err
		}
		if err := insNames.exec(c, nil, nameArgs); err != nil {
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

// userPart is the share of a user filter that lives under one user key:
// the events of ukey carrying one of names (normalised, lowercased).
type userPart struct {
	ukey  string
	names []string
}

// where builds the FROM/WHERE of an event query. part, when set, replaces
// the filter's user: "u.ukey = ?" lets the index file's user_time, (ukey,
// time_ns, id), drive an ordered page. Without it a user filter becomes a
// user_names subquery (counts, and globs matching too many users to
// merge). A channel filter walks channel_time the same way. Queries using
// the index file must syncIndexed first (needsIndex).
func (s *Store) where(f *quiltv1.EventFilter, part *userPart) (from string, conds []string, args []any, tcol, idcol string) {
	return s.whereOn(f, part, false)
}

// whereOn is where; plain keeps every condition on the events row (for
// rows already found by id), walking no index of the index file.
func (s *Store) whereOn(f *quiltv1.EventFilter, part *userPart, plain bool) (from string, conds []string, args []any, tcol, idcol string) {
	from, tcol, idcol = "events e", "e.time_ns", "e.id"
	// userKeys selects the events of the user keys a subquery names: by
	// the row's own column, or (unless plain) through user_time.
	userKeys := "e.id IN (SELECT id FROM ix.user_time WHERE ukey IN (%s))"
	if plain {
		userKeys = "e.ukey IN (%s)"
	}
	channelDone := false
	switch {
	case part != nil:
		if plain {
			conds = append(conds, "e.ukey = ?")
		} else {
			from, tcol, idcol = "ix.user_time u CROSS JOIN events e ON e.id = u.id", "u.time_ns", "u.id"
			conds = append(conds, "u.ukey = ?")
		}
		args = append(args, part.ukey)
		c, a := namesCond(part.names)
		conds = append(conds, c)
		args = append(args, a...)
	case f.GetUser() != "":
		u := f.GetUser()
		if storeutil.HasWildcard(u) {
			conds = append(conds, fmt.Sprintf(userKeys, "SELECT ukey FROM user_names WHERE name GLOB ?"), "e.names REGEXP ?")
			args = append(args, sqliteGlob(u), namesGlobRegex(u))
		} else {
			n := normName(strings.ToLower(u))
			conds = append(conds, fmt.Sprintf(userKeys, "SELECT ukey FROM user_names WHERE name = ?"), "instr(e.names, ?) > 0")
			args = append(args, n, nameSep+n+nameSep)
		}
	}
	if v := f.GetChannel(); v != "" && part == nil && !plain {
		// The channel index drives the page; the user condition (if any)
		// filters it.
		from, tcol, idcol = "ix.channel_time c CROSS JOIN events e ON e.id = c.id", "c.time_ns", "c.id"
		conds = append([]string{"c.channel = ?"}, conds...)
		args = append([]any{v}, args...)
		channelDone = true
	}
	if src := f.GetSources(); sourceIndexed(f) && part == nil && !plain {
		// One source and nothing narrower: its index drives the page.
		from, tcol, idcol = "ix.source_time s CROSS JOIN events e ON e.id = s.id", "s.time_ns", "s.id"
		conds = append(conds, "s.source = ?")
		args = append(args, src[0])
	} else if len(src) > 0 {
		conds = append(conds, "e.source IN ("+placeholders(len(src))+")")
		for _, x := range src {
			args = append(args, x)
		}
	}
	if v := f.GetServer(); v != "" {
		conds = append(conds, "e.server = ?")
		args = append(args, v)
	}
	if v := f.GetChannel(); v != "" && !channelDone {
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
		if s.hasFTS && !plain && utf8.RuneCountInString(v) >= 3 {
			// The index finds the events holding the needle's trigrams;
			// the substring test keeps those holding the needle.
			conds = append(conds, fmt.Sprintf("e.id IN (WITH RECURSIVE o(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM o WHERE n < %d) "+
				"SELECT (f.rowid << %d) + o.n FROM ix.events_fts f, o WHERE events_fts MATCH ?)", 1<<textBlockShift-1, textBlockShift))
			args = append(args, trigramQuery(v))
		}
		{
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

// needsIndex reports whether a query with f reads the index file, and so
// must wait for it to hold every acknowledged event first.
func needsIndex(f *quiltv1.EventFilter) bool {
	return f.GetUser() != "" || f.GetChannel() != "" || f.GetText() != "" || sourceIndexed(f)
}

// sourceIndexed: a filter on one source and no channel or user walks the
// index file's source_time (several sources walk events_time, filtering).
func sourceIndexed(f *quiltv1.EventFilter) bool {
	return len(f.GetSources()) == 1 && f.GetChannel() == "" && f.GetUser() == ""
}

// namesCond keeps the events carrying one of names.
func namesCond(names []string) (string, []any) {
	conds := make([]string, len(names))
	args := make([]any, len(names))
	for i, n := range names {
		conds[i] = "instr(e.names, ?) > 0"
		args[i] = nameSep + n + nameSep
	}
	return "(" + strings.Join(conds, " OR ") + ")", args
}

// namesGlobRegex matches an events.names value holding a name that
// matches the user glob (whose * and ? stay inside one name).
func namesGlobRegex(glob string) string {
	var b strings.Builder
	b.WriteString(regexp.QuoteMeta(nameSep) + "(?:")
	for _, r := range normName(strings.ToLower(glob)) {
		switch r {
		case '*':
			b.WriteString("[^" + nameSep + "]*")
		case '?':
			b.WriteString("[^" + nameSep + "]")
		default:
			b.WriteString(regexp.QuoteMeta(string(r)))
		}
	}
	b.WriteString(")" + regexp.QuoteMeta(nameSep))
	return b.String()
}

func placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?,", n), ",") }

// sqliteGlob lowercases a user glob and makes everything but * and ?
// literal for GLOB ("[" is GLOB's only other special character).
func sqliteGlob(p string) string {
	return strings.ReplaceAll(normName(strings.ToLower(p)), "[", "[[]")
}

func whereSQL(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// maxGlobMerge is how many user keys a user filter may match and still be
// answered by merging one index-ordered query per user key; beyond it one
// query filters through user_names and sorts.
const maxGlobMerge = 64

type pageRow struct {
	key storeutil.Key
	row storedRow
}

// QueryEvents implements store.Store with a keyset page token (time, id).
func (s *Store) QueryEvents(ctx context.Context, q store.EventQuery) (store.EventPage, error) {
	if err := storeutil.CheckFilter(q.Filter); err != nil {
		return store.EventPage{}, err
	}
	if needsIndex(q.Filter) {
		if err := s.syncIndexed(ctx); err != nil {
			return store.EventPage{}, err
		}
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
	var parts []userPart
	merge := false
	if u := q.Filter.GetUser(); u != "" {
		parts, err = s.userParts(ctx, u, maxGlobMerge+1)
		if err != nil {
			return store.EventPage{}, err
		}
		if len(parts) == 0 {
			return store.EventPage{}, nil
		}
		merge = len(parts) <= maxGlobMerge
	}
	if merge {
		// Each user key's rows come in order from user_time; merge
		// them. An event has one user key, so the lists are disjoint.
		for i := range parts {
			part, err := s.page(ctx, q.Filter, &parts[i], after, q.OldestFirst, limit+1)
			if err != nil {
				return store.EventPage{}, err
			}
			rows = append(rows, part...)
		}
		if len(parts) > 1 {
			sort.Slice(rows, func(i, j int) bool {
				a, b := rows[i].key, rows[j].key
				less := a.TimeNS < b.TimeNS || (a.TimeNS == b.TimeNS && a.Seq < b.Seq)
				return less == q.OldestFirst
			})
		}
		if len(rows) > limit+1 {
			rows = rows[:limit+1]
		}
	} else if rows, err = s.page(ctx, q.Filter, nil, after, q.OldestFirst, limit+1); err != nil {
		return store.EventPage{}, err
	}
	var page store.EventPage
	for i, r := range rows {
		if i == limit {
			page.NextPageToken = storeutil.EncodeToken(rows[i-1].key)
			break
		}
		e, err := r.row.decode(r.key.TimeNS)
		if err != nil {
			return store.EventPage{}, fmt.Errorf("sqlitestore: event row %d: %w", r.key.Seq, err)
		}
		page.Events = append(page.Events, e)
	}
	return page, nil
}

// userParts resolves a user name or glob through user_names into the user
// keys it was seen with (at most max of them), each with its matching
// names.
func (s *Store) userParts(ctx context.Context, user string, max int) ([]userPart, error) {
	var rows *sql.Rows
	var err error
	if storeutil.HasWildcard(user) {
		rows, err = s.rdb.QueryContext(ctx, "SELECT name, ukey FROM user_names WHERE name GLOB ? ORDER BY ukey", sqliteGlob(user))
	} else {
		rows, err = s.rdb.QueryContext(ctx, "SELECT name, ukey FROM user_names WHERE name = ? ORDER BY ukey", normName(strings.ToLower(user)))
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: users named %q: %w", user, err)
	}
	defer rows.Close()
	var out []userPart
	for rows.Next() {
		var n, k string
		if err := rows.Scan(&n, &k); err != nil {
			return nil, fmt.Errorf("sqlitestore: users named %q: %w", user, err)
		}
		if len(out) > 0 && out[len(out)-1].ukey == k {
			out[len(out)-1].names = append(out[len(out)-1].names, n)
			continue
		}
		if len(out) == max {
			break
		}
		out = append(out, userPart{ukey: k, names: []string{n}})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: users named %q: %w", user, err)
	}
	return out, nil
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
// filters a text search checks directly before walking the full-text
// index (ftsWalk). A phrase in more than 1 in 40 events fills a page
// inside the window, in about a millisecond; a sparser one would make the
// window cost more than the walk, which stops once a page is found.
var textScanWindow = 4000

// page runs one ordered, limited query (part, when set, replaces the
// filter's user).
func (s *Store) page(ctx context.Context, f *quiltv1.EventFilter, part *userPart, after *storeutil.Key, oldest bool, n int) ([]pageRow, error) {
	if f.GetText() != "" {
		rows, full, err := s.scanPage(ctx, f, part, after, oldest, n)
		if err != nil || full {
			return rows, err
		}
		if s.hasFTS && utf8.RuneCountInString(f.GetText()) >= 3 {
			return s.ftsWalk(ctx, f, part, after, oldest, n)
		}
	}
	return s.indexPage(ctx, f, part, after, oldest, n)
}

// ftsBlocks is how many candidate text blocks ftsWalk checks in its first
// query; each next one checks twice as many, up to 8 times.
var ftsBlocks = 64

// trigramQuery is an FTS5 query every text holding needle matches: the
// AND of the needle's trigrams that span a word boundary (they carry the
// word order, what makes a phrase rare), every third other one and the
// last. The index keeps no positions (detail=none: half the indexing
// cost), so it cannot match a phrase; its candidates are checked with the
// real substring test. At 1M events a sparse three-word phrase had 46% of
// its candidates true this way, 2.5% with every third trigram alone, and
// matching all 19 trigrams cost twice as long for the same candidates.
func trigramQuery(needle string) string {
	r := []rune(needle)
	seen := map[string]bool{}
	var terms []string
	for i := 0; i+3 <= len(r); i++ {
		t := string(r[i : i+3])
		boundary := false
		for _, c := range r[i : i+3] {
			if !unicode.IsLetter(c) && !unicode.IsDigit(c) {
				boundary = true
			}
		}
		if (boundary || i%3 == 0 || i+3 == len(r)) && !seen[t] {
			seen[t] = true
			terms = append(terms, `"`+strings.ReplaceAll(t, `"`, `""`)+`"`)
		}
	}
	return strings.Join(terms, " AND ")
}

// ftsWalk answers a text search by walking the full-text index's
// candidate blocks from the newest (oldest first: the oldest), checking
// each of their events against the whole filter, until n rows are found
// and id_chunks shows no id not yet walked can hold an event that sorts
// before the n-th.
func (s *Store) ftsWalk(ctx context.Context, f *quiltv1.EventFilter, part *userPart, after *storeutil.Key, oldest bool, n int) ([]pageRow, error) {
	rest := proto.Clone(f).(*quiltv1.EventFilter)
	rest.Text = ""
	_, conds, args, _, _ := s.whereOn(rest, part, true)
	textCond, textArgs := containsCond("e.text", f.GetText())
	conds = append(conds, textCond)
	args = append(args, textArgs...)
	cmp, dir, idcmp := "<", "DESC", "<"
	if oldest {
		cmp, dir, idcmp = ">", "ASC", ">"
	}
	if after != nil {
		conds = append(conds, "(e.time_ns, e.id) "+cmp+" (?, ?)")
		args = append(args, after.TimeNS, after.Seq)
	}
	// A block without a match still yields its candidate row (LEFT
	// JOIN), so the walk knows how far it got.
	query := fmt.Sprintf("SELECT c.rowid, e.id, e.time_ns, "+rowCols("e")+" FROM (SELECT rowid FROM ix.events_fts WHERE events_fts MATCH ? AND rowid "+idcmp+" ? ORDER BY rowid "+dir+" LIMIT ?) c"+
		" LEFT JOIN events e ON e.id >= c.rowid << %d AND e.id < (c.rowid + 1) << %[1]d AND "+strings.Join(conds, " AND "), textBlockShift)
	// The chunk of a block's ids: blocks are smaller than chunks.
	bound := fmt.Sprintf("SELECT max(max_time) FROM ix.id_chunks WHERE chunk <= ? >> %d", chunkShift-textBlockShift)
	if oldest {
		bound = fmt.Sprintf("SELECT min(min_time) FROM ix.id_chunks WHERE chunk >= ? >> %d", chunkShift-textBlockShift)
	}
	before := func(a, b storeutil.Key) bool {
		less := a.TimeNS < b.TimeNS || (a.TimeNS == b.TimeNS && a.Seq < b.Seq)
		return less == oldest
	}
	match := trigramQuery(f.GetText())
	block := ftsBlocks
	var out []pageRow
	edge := int64(math.MaxInt64)
	if oldest {
		edge = -1 // block 0 holds the first ids
	}
	for {
		blockArgs := append([]any{match, edge, block}, args...)
		rows, err := s.rdb.QueryContext(ctx, query, blockArgs...)
		if err != nil {
			return nil, fmt.Errorf("sqlitestore: query events: %w", err)
		}
		seen, last := 0, int64(-1)
		for rows.Next() {
			var cand int64
			var id, t sql.NullInt64
			var row storedRow
			if err := rows.Scan(append([]any{&cand, &id, &t}, row.scanTargets()...)...); err != nil {
				rows.Close()
				return nil, fmt.Errorf("sqlitestore: query events: %w", err)
			}
			if cand != last {
				seen++
				last = cand
			}
			edge = cand
			if id.Valid {
				out = append(out, pageRow{key: storeutil.Key{TimeNS: t.Int64, Seq: id.Int64}, row: row})
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("sqlitestore: query events: %w", err)
		}
		sort.Slice(out, func(i, j int) bool { return before(out[i].key, out[j].key) })
		if len(out) > n {
			out = out[:n]
		}
		if seen < block {
			return out, nil
		}
		// A sparse match needs many candidates: fewer, bigger queries.
		block = min(block*2, 8*ftsBlocks)
		if len(out) == n {
			var b sql.NullInt64
			if err := s.rdb.QueryRowContext(ctx, bound, edge).Scan(&b); err != nil {
				return nil, fmt.Errorf("sqlitestore: query events: %w", err)
			}
			last := out[n-1].key
			// Every id not walked yet is past edge, so at an equal time
			// it sorts after last.
			if b.Valid && (b.Int64 == last.TimeNS || (b.Int64 < last.TimeNS) != oldest) {
				return out, nil
			}
		}
	}
}

// scanPage answers a text search from the newest textScanWindow rows of
// the rest of the filter; full is false when they held fewer than n
// matches (older rows may hold the rest).
func (s *Store) scanPage(ctx context.Context, f *quiltv1.EventFilter, part *userPart, after *storeutil.Key, oldest bool, n int) (rows []pageRow, full bool, err error) {
	rest := proto.Clone(f).(*quiltv1.EventFilter)
	rest.Text = ""
	from, conds, args, tcol, idcol := s.where(rest, part)
	cmp, dir := "<", "DESC"
	if oldest {
		cmp, dir = ">", "ASC"
	}
	if after != nil {
		conds = append(conds, "("+tcol+", "+idcol+") "+cmp+" (?, ?)")
		args = append(args, after.TimeNS, after.Seq)
	}
	textCond, textArgs := containsCond("x.text", f.GetText())
	query := "SELECT x.id, x.t, " + rowCols("ev") + " FROM (SELECT e.id AS id, " + tcol + " AS t, e.text AS text FROM " + from + whereSQL(conds) +
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
		if err := r.Scan(append([]any{&row.key.Seq, &row.key.TimeNS}, row.row.scanTargets()...)...); err != nil {
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
func (s *Store) indexPage(ctx context.Context, f *quiltv1.EventFilter, part *userPart, after *storeutil.Key, oldest bool, n int) ([]pageRow, error) {
	from, conds, args, tcol, idcol := s.where(f, part)
	cmp, dir := "<", "DESC"
	if oldest {
		cmp, dir = ">", "ASC"
	}
	if after != nil {
		conds = append(conds, "("+tcol+", "+idcol+") "+cmp+" (?, ?)")
		args = append(args, after.TimeNS, after.Seq)
	}
	query := "SELECT e.id, e.time_ns, " + rowCols("e") + " FROM " + from + whereSQL(conds) +
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
		if err := rows.Scan(append([]any{&r.key.Seq, &r.key.TimeNS}, r.row.scanTargets()...)...); err != nil {
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
	if needsIndex(f) {
		if err := s.syncIndexed(ctx); err != nil {
			return 0, err
		}
	}
	from, conds, args, _, _ := s.where(f, nil)
	var n int64
	if err := s.rdb.QueryRowContext(ctx, "SELECT count(*) FROM "+from+whereSQL(conds), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlitestore: count events: %w", err)
	}
	return n, nil
}

// maxLastSeenNames bounds how many user keys one LastSeen probes.
const maxLastSeenNames = 10000

// LastSeen implements store.Store: user_names gives the matching user keys
// and their matching names; each key's newest event and newest message
// are a backwards walk of user_time that stops at the first row
// carrying one of the names (and, for the message, of a message kind).
func (s *Store) LastSeen(ctx context.Context, q store.LastSeenQuery) ([]*quiltv1.LastSeenRow, error) {
	if q.User == "" {
		return nil, fmt.Errorf("sqlitestore: lastseen: empty user pattern")
	}
	if err := s.syncIndexed(ctx); err != nil {
		return nil, fmt.Errorf("sqlitestore: lastseen: %w", err)
	}
	parts, err := s.userParts(ctx, q.User, maxLastSeenNames)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: lastseen: %w", err)
	}
	srcCond, srcArgs := "", []any(nil)
	if len(q.Sources) > 0 {
		srcCond = " AND e.source IN (" + placeholders(len(q.Sources)) + ")"
		for _, x := range q.Sources {
			srcArgs = append(srcArgs, x)
		}
	}
	msgCond := " AND e.kind IN (" + placeholders(len(storeutil.MessageKinds)) + ")"
	var msgArgs []any
	for _, k := range storeutil.MessageKinds {
		msgArgs = append(msgArgs, int64(k))
	}
	type hit struct {
		key storeutil.Key
		ev  *quiltv1.Event
	}
	newest := func(p userPart, msgOnly bool) (hit, error) {
		nc, na := namesCond(p.names)
		args := append([]any{p.ukey}, na...)
		args = append(args, srcArgs...)
		cond := srcCond
		if msgOnly {
			cond += msgCond
			args = append(args, msgArgs...)
		}
		var h hit
		var row storedRow
		// CROSS JOIN: walk the user's entries newest first, whatever
		// the planner thinks of a source filter.
		err := s.rdb.QueryRowContext(ctx, "SELECT u.time_ns, u.id, "+rowCols("e")+" FROM ix.user_time u CROSS JOIN events e ON e.id = u.id WHERE u.ukey = ? AND "+nc+cond+
			" ORDER BY u.time_ns DESC, u.id DESC LIMIT 1", args...).Scan(append([]any{&h.key.TimeNS, &h.key.Seq}, row.scanTargets()...)...)
		if err == sql.ErrNoRows {
			return hit{}, nil
		}
		if err != nil {
			return hit{}, err
		}
		h.ev, err = row.decode(h.key.TimeNS)
		return h, err
	}
	later := func(a, b hit) bool {
		if b.ev == nil {
			return true
		}
		return a.key.TimeNS > b.key.TimeNS || (a.key.TimeNS == b.key.TimeNS && a.key.Seq > b.key.Seq)
	}
	type acc struct{ last, msg hit }
	users := map[string]*acc{}
	for _, p := range parts {
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
		a := users[p.ukey]
		if a == nil {
			a = &acc{}
			users[p.ukey] = a
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

// processedScanChunk is how many processed ids one cleanup transaction
// looks at.
var processedScanChunk = 20000

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
		if err := s.cleanIndex(ctx, before); err != nil {
			return res, fmt.Errorf("sqlitestore: clean up index %s: %w", s.ix.path, err)
		}
		if err := s.cleanUserNames(ctx); err != nil {
			return res, fmt.Errorf("sqlitestore: clean up user names: %w", err)
		}
	}
	if !processedBefore.IsZero() {
		// processed has no index on processed_at (it would cost every
		// insert a second B-tree entry): walk its key in chunks.
		from := [2]string{}
		for {
			var n int64
			scanned := 0
			err := s.write(ctx, func(c *wconn) error {
				n, scanned = 0, 0
				var old [][2]string
				err := c.query("SELECT source, id, processed_at FROM processed WHERE (source, id) > (?, ?) ORDER BY source, id LIMIT ?",
					[]any{from[0], from[1], int64(processedScanChunk)}, func(d []driver.Value) error {
						scanned++
						k := [2]string{asString(d[0]), asString(d[1])}
						from = k
						if at, _ := d[2].(int64); at < processedBefore.UnixNano() {
							old = append(old, k)
						}
						return nil
					})
				if err != nil {
					return err
				}
				for _, k := range old {
					m, err := c.exec("DELETE FROM processed WHERE source = ? AND id = ?", k[0], k[1])
					if err != nil {
						return err
					}
					n += m
				}
				return nil
			})
			if err != nil {
				return res, fmt.Errorf("sqlitestore: clean up processed ids before %s: %w", processedBefore.Format(time.RFC3339), err)
			}
			res.Processed += n
			if scanned < processedScanChunk {
				break
			}
		}
	}
	return res, nil
}

func (s *Store) deleteEventsTx(c *wconn, before int64) (int, error) {
	var ids []int64
	err := c.query("SELECT id FROM events WHERE time_ns < ? ORDER BY time_ns LIMIT ?", []any{before, int64(cleanupChunk)}, func(d []driver.Value) error {
		ids = append(ids, d[0].(int64))
		return nil
	})
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	// Never reuse a removed id: the index file may still hold it.
	if _, err := c.exec("INSERT INTO meta(key, value) SELECT 'id_floor', CAST(max(id) AS TEXT) FROM events WHERE true ON CONFLICT(key) DO UPDATE SET value = CAST(max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)"); err != nil {
		return 0, err
	}
	for _, id := range ids {
		if _, err := c.exec("DELETE FROM events WHERE id = ?", id); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// cleanUserNames drops the (name, user key) pairs no event carries any
// more. The pairs are found through the index (a reader, beside the
// writer); each is then deleted by the writer only if no event the index
// did not yet hold carries it.
func (s *Store) cleanUserNames(ctx context.Context) error {
	if err := s.syncIndexed(ctx); err != nil {
		return err
	}
	upto := s.indexed.Load()
	rows, err := s.rdb.QueryContext(ctx, "SELECT name, ukey FROM user_names un WHERE NOT EXISTS (SELECT 1 FROM ix.user_time u CROSS JOIN events e ON e.id = u.id WHERE u.ukey = un.ukey AND instr(e.names, ? || un.name || ?) > 0)", nameSep, nameSep)
	if err != nil {
		return err
	}
	var gone [][2]string
	for rows.Next() {
		var n, k string
		if err := rows.Scan(&n, &k); err != nil {
			rows.Close()
			return err
		}
		gone = append(gone, [2]string{n, k})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for len(gone) > 0 {
		chunk := gone[:min(len(gone), cleanupChunk)]
		gone = gone[len(chunk):]
		err := s.write(ctx, func(c *wconn) error {
			for _, p := range chunk {
				if _, err := c.exec("DELETE FROM user_names WHERE name = ? AND ukey = ? AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id > ? AND e.ukey = ? AND instr(e.names, ?) > 0)",
					p[0], p[1], upto, p[1], nameSep+p[0]+nameSep); err != nil {
					return err
				}
			}
			s.w.names = make(map[[2]string]struct{})
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
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
