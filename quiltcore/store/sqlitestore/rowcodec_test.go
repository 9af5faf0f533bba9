package sqlitestore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// fill sets every field of m (and of its messages, to depth levels) to a
// value other than its default.
func fill(m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.ContainingOneof() != nil && m.WhichOneof(fd.ContainingOneof()) != nil {
			continue
		}
		scalar := func(fd protoreflect.FieldDescriptor) protoreflect.Value {
			switch fd.Kind() {
			case protoreflect.StringKind:
				return protoreflect.ValueOfString(fmt.Sprintf("%s-%d", fd.Name(), depth))
			case protoreflect.BoolKind:
				return protoreflect.ValueOfBool(true)
			case protoreflect.EnumKind:
				return protoreflect.ValueOfEnum(fd.Enum().Values().Get(fd.Enum().Values().Len() - 1).Number())
			case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
				return protoreflect.ValueOfInt32(7)
			case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
				return protoreflect.ValueOfInt64(7)
			case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
				return protoreflect.ValueOfUint32(7)
			case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
				return protoreflect.ValueOfUint64(7)
			case protoreflect.BytesKind:
				return protoreflect.ValueOfBytes([]byte("b"))
			case protoreflect.DoubleKind:
				return protoreflect.ValueOfFloat64(1.5)
			case protoreflect.FloatKind:
				return protoreflect.ValueOfFloat32(1.5)
			}
			return protoreflect.Value{}
		}
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			k := scalar(fd.MapKey())
			if fd.MapValue().Message() != nil {
				v := mp.NewValue()
				if depth > 0 {
					fill(v.Message(), depth-1)
				}
				mp.Set(k.MapKey(), v)
			} else {
				mp.Set(k.MapKey(), scalar(fd.MapValue()))
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			if fd.Message() != nil {
				v := l.NewElement()
				if depth > 0 {
					fill(v.Message(), depth-1)
				}
				l.Append(v)
			} else {
				l.Append(scalar(fd))
			}
		case fd.Message() != nil:
			if depth > 0 {
				fill(m.Mutable(fd).Message(), depth-1)
			}
		default:
			m.Set(fd, scalar(fd))
		}
	}
}

// Every field of an event comes back from the store as it went in, the
// fields with their own columns included, whatever the time: a field
// added to Event and forgotten by appendStoredData fails here.
func TestEventRoundTrip(t *testing.T) {
	s := openT(t, t.TempDir())
	defer s.Close()
	full := &quiltv1.Event{}
	fill(full.ProtoReflect(), 2)
	full.Source = "irc"
	var evs []*quiltv1.Event
	for i, tm := range []*timestamppb.Timestamp{
		timestamppb.New(time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)),
		nil,
		timestamppb.New(time.Unix(0, 0)),
		timestamppb.New(time.Date(1960, 1, 1, 0, 0, 0, 1, time.UTC)),
		{Seconds: 1 << 40, Nanos: 5}, // beyond int64 nanoseconds
	} {
		e := proto.Clone(full).(*quiltv1.Event)
		e.Id = fmt.Sprintf("rt-%d", i)
		e.Time = tm
		evs = append(evs, e)
	}
	mustInsert(t, s, evs)
	p, err := s.QueryEvents(context.Background(), store.EventQuery{Filter: &quiltv1.EventFilter{}, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*quiltv1.Event{}
	for _, e := range p.Events {
		got[e.GetId()] = e
	}
	for _, want := range evs {
		if g := got[want.GetId()]; !proto.Equal(g, want) {
			t.Errorf("event %s:\n got  %v\n want %v", want.GetId(), g, want)
		}
	}
}

// A row written before the columns' fields left data (the whole event
// encoded) decodes to the same event.
func TestOldRowDecodes(t *testing.T) {
	e := &quiltv1.Event{}
	fill(e.ProtoReflect(), 2)
	e.Time = timestamppb.New(time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC))
	data, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	r := storedRow{source: e.GetSource(), eid: e.GetId(), server: e.GetServer(), channel: e.GetChannel(), kind: int64(e.GetKind()), text: e.GetText(), data: data}
	got, err := r.decode(e.GetTime().AsTime().UnixNano())
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, e) {
		t.Errorf("got %v, want %v", got, e)
	}
}

// Shared values are numbered once; each row's own values get the next
// numbers.
func TestRowsSQL(t *testing.T) {
	got := rowsSQL("INSERT INTO t VALUES ", 2, "($1,?,$2,?)", 2, " ON CONFLICT DO NOTHING")
	want := "INSERT INTO t VALUES (?1,?3,?2,?4),(?1,?5,?2,?6) ON CONFLICT DO NOTHING"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
