package mongostore

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/internal/storeutil"
)

// eventDoc is an event as stored. time is Unix nanoseconds (exact, so
// ties and page tokens are exact); seq is the insertion order, reserved a
// batch at a time from the counters collection.
type eventDoc struct {
	Key     string `bson:"_id"`
	Source  string `bson:"source"`
	ID      string `bson:"id"`
	Server  string `bson:"server"`
	Channel string `bson:"channel"`
	Kind    int32  `bson:"kind"`
	Time    int64  `bson:"time"`
	Seq     int64  `bson:"seq"`
	// Names are the user's distinct lowercased names (multikey index).
	Names []string `bson:"names"`
	UKey  string   `bson:"ukey"`
	Text  string   `bson:"text"`
	Data  []byte   `bson:"data"`
}

type processedDoc struct {
	Key    string    `bson:"_id"`
	Source string    `bson:"source"`
	ID     string    `bson:"id"`
	At     time.Time `bson:"at"`
}

func eventKey(source, id string) string { return source + "/" + id }

// dupIndexes returns the batch positions that failed with a duplicate key,
// or an error when anything else failed.
func dupIndexes(err error, n int) ([]bool, error) {
	dup := make([]bool, n)
	if err == nil {
		return dup, nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
		return nil, err
	}
	for _, we := range bwe.WriteErrors {
		switch we.Code {
		case 11000, 11001, 12582:
			if we.Index >= 0 && we.Index < n {
				dup[we.Index] = true
				continue
			}
		}
		return nil, err
	}
	return dup, nil
}

// InsertEvents implements store.Store. Steps, each safe to crash after:
//  1. reserve seq numbers for the batch (a gap after a crash is harmless);
//  2. insert the events (unordered, _id source/id: an event already stored
//     fails alone with a duplicate key);
//  3. insert the processed ids (unordered): an id already there makes its
//     event a duplicate; if step 2 stored that event just now (its earlier
//     copy was cleaned up while its id was kept), remove it again;
//  4. upsert the cursors.
//
// Only then does it return, so an acknowledged event is in events; a crash
// before 3 leaves events whose ids are not processed, which the source's
// replay (it was not acknowledged) records without storing a copy.
func (s *Store) InsertEvents(ctx context.Context, source string, events []*quiltv1.Event, cursors []*quiltv1.Cursor) (store.InsertResult, error) {
	events, err := storeutil.CheckBatch(source, events)
	if err != nil {
		return store.InsertResult{}, err
	}
	var res store.InsertResult
	if n := len(events); n > 0 {
		docs := make([]any, n)
		procs := make([]any, n)
		for i, e := range events {
			data, err := proto.Marshal(e)
			if err != nil {
				return res, fmt.Errorf("mongodb: encode event %q of source %q: %w", e.GetId(), source, err)
			}
			docs[i] = &eventDoc{
				Key: eventKey(source, e.GetId()), Source: source, ID: e.GetId(), Server: e.GetServer(),
				Channel: e.GetChannel(), Kind: int32(e.GetKind()), Time: storeutil.TimeNS(e),
				Names: storeutil.Names(e.GetUser()), UKey: storeutil.UserKey(e.GetUser()), Text: e.GetText(), Data: data,
			}
			if docs[i].(*eventDoc).Names == nil {
				docs[i].(*eventDoc).Names = []string{}
			}
		}
		var ctr struct {
			N int64 `bson:"n"`
		}
		err := s.counters.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: "events"}},
			bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int64(n)}}}},
			options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&ctr)
		if err != nil {
			return res, s.wrap(fmt.Sprintf("insert %d events from %q: reserve sequence numbers", n, source), err)
		}
		for i := range docs {
			docs[i].(*eventDoc).Seq = ctr.N - int64(n) + 1 + int64(i)
		}
		_, err = s.events.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
		evDup, err := dupIndexes(err, n)
		if err != nil {
			return res, s.wrap(fmt.Sprintf("insert %d events from %q", n, source), err)
		}
		now := time.Now().UTC()
		for i, e := range events {
			procs[i] = &processedDoc{Key: eventKey(source, e.GetId()), Source: source, ID: e.GetId(), At: now}
		}
		_, err = s.processed.InsertMany(ctx, procs, options.InsertMany().SetOrdered(false))
		procDup, err := dupIndexes(err, n)
		if err != nil {
			return res, s.wrap(fmt.Sprintf("record %d processed ids from %q", n, source), err)
		}
		var undo []string
		var horizon *int64
		for i, e := range events {
			if !procDup[i] {
				res.Stored++
				continue
			}
			res.Duplicates = append(res.Duplicates, e.GetId())
			if evDup[i] {
				continue
			}
			// We stored an event whose id was already processed. Either a
			// concurrent insert of the same event recorded the id after
			// finding our copy (keep it: that insert was acknowledged), or
			// the earlier copy was removed by retention (remove ours, as
			// the SQLite store would never have stored it). Only events
			// older than the clean-up horizon can be the second case.
			if horizon == nil {
				h, err := s.cleanHorizon(ctx)
				if err != nil {
					return res, err
				}
				horizon = &h
			}
			if storeutil.TimeNS(e) < *horizon {
				undo = append(undo, eventKey(source, e.GetId()))
			}
		}
		if len(undo) > 0 {
			if _, err := s.events.DeleteMany(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: undo}}}}); err != nil {
				return res, s.wrap(fmt.Sprintf("remove %d re-sent duplicates from %q", len(undo), source), err)
			}
		}
	}
	if len(cursors) > 0 {
		models := make([]mongo.WriteModel, len(cursors))
		for i, c := range cursors {
			models[i] = mongo.NewReplaceOneModel().
				SetFilter(bson.D{{Key: "_id", Value: key(source, c.GetServer(), c.GetName())}}).
				SetReplacement(bson.D{{Key: "source", Value: source}, {Key: "server", Value: c.GetServer()}, {Key: "name", Value: c.GetName()}, {Key: "value", Value: c.GetValue()}}).
				SetUpsert(true)
		}
		if _, err := s.cursors.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false)); err != nil {
			return store.InsertResult{}, s.wrap(fmt.Sprintf("store %d cursors of %q", len(cursors), source), err)
		}
	}
	return res, nil
}

// key joins record key parts with a separator names do not contain.
func key(parts ...string) string { return strings.Join(parts, "\x1f") }

func d(k string, v any) bson.E { return bson.E{Key: k, Value: v} }

// filter builds the query document of an EventFilter. Index use on a real
// MongoDB: channel → channel_time_seq; user → names_time_seq (an exact
// name is a point, a glob an anchored regex whose prefix bounds the scan);
// sources → source_time_seq; otherwise time_seq, which also serves the
// sort. Text and regex are residual filters.
func filter(f *quiltv1.EventFilter) bson.D {
	var and bson.A
	q := bson.D{}
	if src := f.GetSources(); len(src) == 1 {
		q = append(q, d("source", src[0]))
	} else if len(src) > 1 {
		q = append(q, d("source", bson.D{d("$in", src)}))
	}
	if v := f.GetServer(); v != "" {
		q = append(q, d("server", v))
	}
	if v := f.GetChannel(); v != "" {
		q = append(q, d("channel", v))
	}
	if u := f.GetUser(); u != "" {
		q = append(q, d("names", userMatch(u)))
	}
	if k := f.GetKinds(); len(k) > 0 {
		ks := make(bson.A, len(k))
		for i, x := range k {
			ks[i] = int32(x)
		}
		q = append(q, d("kind", bson.D{d("$in", ks)}))
	}
	if v := f.GetText(); v != "" {
		and = append(and, bson.D{d("text", bson.D{d("$regex", regexp.QuoteMeta(v)), d("$options", "i")})})
	}
	if v := f.GetTextRegex(); v != "" {
		and = append(and, bson.D{d("text", bson.D{d("$regex", v)})})
	}
	if f.GetSince() != nil || f.GetUntil() != nil {
		r := bson.D{}
		if v := f.GetSince(); v != nil {
			r = append(r, d("$gte", v.AsTime().UnixNano()))
		}
		if v := f.GetUntil(); v != nil {
			r = append(r, d("$lt", v.AsTime().UnixNano()))
		}
		q = append(q, d("time", r))
	}
	if len(and) > 0 {
		q = append(q, d("$and", and))
	}
	return q
}

func userMatch(u string) any {
	if storeutil.HasWildcard(u) {
		return bson.D{d("$regex", storeutil.GlobRegex(u))}
	}
	return strings.ToLower(u)
}

// QueryEvents implements store.Store: a keyset page on (time, seq).
func (s *Store) QueryEvents(ctx context.Context, q store.EventQuery) (store.EventPage, error) {
	if err := storeutil.CheckFilter(q.Filter); err != nil {
		return store.EventPage{}, err
	}
	limit := storeutil.Limit(q.Limit)
	flt := filter(q.Filter)
	dir, cmp := -1, "$lt"
	if q.OldestFirst {
		dir, cmp = 1, "$gt"
	}
	if q.PageToken != "" {
		k, err := storeutil.DecodeToken(q.PageToken)
		if err != nil {
			return store.EventPage{}, err
		}
		flt = append(flt, d("$or", bson.A{
			bson.D{d("time", bson.D{d(cmp, k.TimeNS)})},
			bson.D{d("time", k.TimeNS), d("seq", bson.D{d(cmp, k.Seq)})},
		}))
	}
	opts := options.Find().SetSort(bson.D{d("time", dir), d("seq", dir)}).SetLimit(int64(limit + 1)).
		SetProjection(bson.D{d("time", 1), d("seq", 1), d("data", 1)})
	cur, err := s.events.Find(ctx, flt, opts)
	if err != nil {
		return store.EventPage{}, s.wrap("query events", err)
	}
	defer cur.Close(ctx)
	var page store.EventPage
	var last storeutil.Key
	for cur.Next(ctx) {
		if len(page.Events) == limit {
			page.NextPageToken = storeutil.EncodeToken(last)
			break
		}
		var doc eventDoc
		if err := cur.Decode(&doc); err != nil {
			return store.EventPage{}, s.wrap("decode event", err)
		}
		e := new(quiltv1.Event)
		if err := proto.Unmarshal(doc.Data, e); err != nil {
			return store.EventPage{}, fmt.Errorf("mongodb: decode event seq %d: %w", doc.Seq, err)
		}
		last = storeutil.Key{TimeNS: doc.Time, Seq: doc.Seq}
		page.Events = append(page.Events, e)
	}
	if err := cur.Err(); err != nil {
		return store.EventPage{}, s.wrap("query events", err)
	}
	return page, nil
}

// CountEvents implements store.Store.
func (s *Store) CountEvents(ctx context.Context, f *quiltv1.EventFilter) (int64, error) {
	if err := storeutil.CheckFilter(f); err != nil {
		return 0, err
	}
	n, err := s.events.CountDocuments(ctx, filter(f))
	if err != nil {
		return 0, s.wrap("count events", err)
	}
	return n, nil
}

// maxLastSeenUsers bounds how many users one LastSeen looks at.
const maxLastSeenUsers = 10000

// LastSeen implements store.Store: the distinct user keys among events
// matching the name (names_time_seq), then per user the newest event and
// the newest message (ukey_time_seq, the name as a residual filter).
func (s *Store) LastSeen(ctx context.Context, q store.LastSeenQuery) ([]*quiltv1.LastSeenRow, error) {
	if q.User == "" {
		return nil, errors.New("mongodb: lastseen: empty user pattern")
	}
	base := bson.D{d("names", userMatch(q.User))}
	if len(q.Sources) > 0 {
		base = append(base, d("source", bson.D{d("$in", q.Sources)}))
	}
	// An aggregation rather than distinct: FerretDB's distinct rejects the
	// maxTimeMS the driver adds for a context deadline.
	cur, err := s.events.Aggregate(ctx, mongo.Pipeline{
		{d("$match", base)},
		{d("$group", bson.D{d("_id", "$ukey")})},
		{d("$limit", maxLastSeenUsers)},
	})
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("lastseen %q", q.User), err)
	}
	var groups []struct {
		UKey string `bson:"_id"`
	}
	if err := cur.All(ctx, &groups); err != nil {
		return nil, s.wrap(fmt.Sprintf("lastseen %q", q.User), err)
	}
	ukeys := make([]string, len(groups))
	for i, g := range groups {
		ukeys[i] = g.UKey
	}
	newest := func(ukey string, msg bool) (*eventDoc, *quiltv1.Event, error) {
		f := append(bson.D{d("ukey", ukey)}, base...)
		if msg {
			ks := bson.A{}
			for _, k := range storeutil.MessageKinds {
				ks = append(ks, int32(k))
			}
			f = append(f, d("kind", bson.D{d("$in", ks)}))
		}
		var doc eventDoc
		err := s.events.FindOne(ctx, f, options.FindOne().SetSort(bson.D{d("time", -1), d("seq", -1)}).
			SetProjection(bson.D{d("time", 1), d("seq", 1), d("data", 1)})).Decode(&doc)
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, err
		}
		e := new(quiltv1.Event)
		return &doc, e, proto.Unmarshal(doc.Data, e)
	}
	type row struct {
		r   *quiltv1.LastSeenRow
		doc *eventDoc
	}
	var rows []row
	for _, k := range ukeys {
		doc, last, err := newest(k, false)
		if err != nil {
			return nil, s.wrap(fmt.Sprintf("lastseen %q", q.User), err)
		}
		if last == nil {
			continue
		}
		_, msg, err := newest(k, true)
		if err != nil {
			return nil, s.wrap(fmt.Sprintf("lastseen %q", q.User), err)
		}
		rows = append(rows, row{storeutil.LastSeenRow(last, msg), doc})
	}
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i].doc, rows[j].doc
		return a.Time > b.Time || (a.Time == b.Time && a.Seq > b.Seq)
	})
	limit := storeutil.Limit(q.Limit)
	if len(rows) > limit {
		rows = rows[:limit]
	}
	out := make([]*quiltv1.LastSeenRow, len(rows))
	for i, r := range rows {
		out[i] = r.r
	}
	return out, nil
}

// horizonID is the counters document holding the newest eventsBefore a
// Cleanup used.
const horizonID = "events_cleaned_before"

func (s *Store) cleanHorizon(ctx context.Context) (int64, error) {
	var doc struct {
		N int64 `bson:"n"`
	}
	err := s.counters.FindOne(ctx, bson.D{d("_id", horizonID)}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	return doc.N, s.wrap("read the clean-up horizon", err)
}

// Cleanup implements store.Store with two range deletes (time_seq and at
// indexes). A zero time skips that part.
func (s *Store) Cleanup(ctx context.Context, eventsBefore, processedBefore time.Time) (store.CleanupResult, error) {
	var res store.CleanupResult
	if !eventsBefore.IsZero() {
		// Record the horizon first: InsertEvents must know an event older
		// than it may have been removed while its id stays processed.
		h, err := s.cleanHorizon(ctx)
		if err != nil {
			return res, err
		}
		if ns := eventsBefore.UnixNano(); ns > h {
			_, err := s.counters.UpdateOne(ctx, bson.D{d("_id", horizonID)}, bson.D{d("$set", bson.D{d("n", ns)})}, options.UpdateOne().SetUpsert(true))
			if err != nil {
				return res, s.wrap("record the clean-up horizon", err)
			}
		}
		r, err := s.events.DeleteMany(ctx, bson.D{d("time", bson.D{d("$lt", eventsBefore.UnixNano())})})
		if err != nil {
			return res, s.wrap(fmt.Sprintf("clean up events before %s", eventsBefore.Format(time.RFC3339)), err)
		}
		res.Events = r.DeletedCount
	}
	if !processedBefore.IsZero() {
		r, err := s.processed.DeleteMany(ctx, bson.D{d("at", bson.D{d("$lt", processedBefore.UTC())})})
		if err != nil {
			return res, s.wrap(fmt.Sprintf("clean up processed ids before %s", processedBefore.Format(time.RFC3339)), err)
		}
		res.Processed = r.DeletedCount
	}
	return res, nil
}
