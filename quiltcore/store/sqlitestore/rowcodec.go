package sqlitestore

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
)

// An events row keeps id, source, server, channel, kind, time and text in
// their own columns (queries filter on them) and the rest of the event in
// data. Encoding those fields in data too made a typical chat event's row
// ~40% bigger, and the row's size is most of what a stored event costs:
// the bytes copied into pages, checksummed into the WAL and copied back
// at checkpoints. Rows written before this build hold the whole event in
// data; decoding them the same way gives the same event.

// rowCols are the columns storedRow.scanTargets reads, of the events
// row aliased a. In a LEFT JOIN that found no row they read as empty.
func rowCols(a string) string {
	return fmt.Sprintf("ifnull(%[1]s.source, ''), ifnull(%[1]s.eid, ''), ifnull(%[1]s.server, ''), ifnull(%[1]s.channel, ''), ifnull(%[1]s.kind, 0), ifnull(%[1]s.text, ''), %[1]s.data", a)
}

// appendStoredData appends e's data column to b: the event without the
// fields that have columns. time_ns stands for the time unless it is 0
// (the epoch and "no time" both give 0) or does not round-trip. d is
// scratch, overwritten.
func appendStoredData(b []byte, d, e *quiltv1.Event, timeNS int64) ([]byte, error) {
	*d = quiltv1.Event{
		Protocol:    e.GetProtocol(),
		Received:    e.GetReceived(),
		User:        e.GetUser(),
		Private:     e.GetPrivate(),
		TargetUser:  e.GetTargetUser(),
		Members:     e.GetMembers(),
		ChannelInfo: e.GetChannelInfo(),
		Mail:        e.GetMail(),
		Raw:         e.GetRaw(),
		Tags:        e.GetTags(),
		Channels:    e.GetChannels(),
	}
	if t := e.GetTime(); t != nil && !timeFromColumn(t, timeNS) {
		d.Time = t
	}
	return proto.MarshalOptions{}.MarshalAppend(b, d)
}

// timeFromColumn reports whether time_ns restores t exactly (t is a
// normalised timestamp inside int64 nanoseconds).
func timeFromColumn(t *timestamppb.Timestamp, timeNS int64) bool {
	if timeNS == 0 {
		return false
	}
	sec, nsec := timeNS/1e9, timeNS%1e9
	if nsec < 0 {
		sec, nsec = sec-1, nsec+1e9
	}
	return t.GetSeconds() == sec && int64(t.GetNanos()) == nsec
}

// storedRow is what a query reads of an events row.
type storedRow struct {
	source, eid, server, channel, text string
	kind                               int64
	data                               []byte
}

// scanTargets are the Scan destinations for rowCols.
func (r *storedRow) scanTargets() []any {
	return []any{&r.source, &r.eid, &r.server, &r.channel, &r.kind, &r.text, &r.data}
}

// decode rebuilds the event stored in the row (timeNS: its time_ns).
func (r *storedRow) decode(timeNS int64) (*quiltv1.Event, error) {
	e := new(quiltv1.Event)
	if err := proto.Unmarshal(r.data, e); err != nil {
		return nil, fmt.Errorf("decode event %q of source %q: %w", r.eid, r.source, err)
	}
	e.Id, e.Source, e.Server, e.Channel, e.Text = r.eid, r.source, r.server, r.channel, r.text
	e.Kind = quiltv1.EventKind(r.kind)
	if e.Time == nil && timeNS != 0 {
		e.Time = timestamppb.New(time.Unix(0, timeNS))
	}
	return e, nil
}
