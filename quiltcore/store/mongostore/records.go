package mongostore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

// Cursors implements store.Store.
func (s *Store) Cursors(ctx context.Context, source string) ([]*quiltv1.Cursor, error) {
	cur, err := s.cursors.Find(ctx, bson.D{d("source", source)}, options.Find().SetSort(bson.D{d("server", 1), d("name", 1)}))
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("cursors of %q", source), err)
	}
	var docs []struct {
		Server string `bson:"server"`
		Name   string `bson:"name"`
		Value  string `bson:"value"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, s.wrap(fmt.Sprintf("cursors of %q", source), err)
	}
	out := make([]*quiltv1.Cursor, len(docs))
	for i, x := range docs {
		out[i] = &quiltv1.Cursor{Server: x.Server, Name: x.Name, Value: x.Value}
	}
	return out, nil
}

func (s *Store) upsert(ctx context.Context, coll *mongo.Collection, what string, id string, doc bson.D) error {
	_, err := coll.ReplaceOne(ctx, bson.D{d("_id", id)}, doc, options.Replace().SetUpsert(true))
	return s.wrap(what, err)
}

// SetDesiredServer implements store.Store.
func (s *Store) SetDesiredServer(ctx context.Context, source string, ds *quiltv1.DesiredServer) error {
	if source == "" || ds.GetServer() == "" {
		return fmt.Errorf("mongodb: desired server: source %q and server %q must not be empty", source, ds.GetServer())
	}
	return s.upsert(ctx, s.desired, fmt.Sprintf("set desired state of %s/%s", source, ds.GetServer()), key(source, ds.GetServer()),
		bson.D{d("source", source), d("server", ds.GetServer()), d("enabled", ds.GetEnabled()), d("reconnect", ds.GetReconnect())})
}

// DesiredServers implements store.Store.
func (s *Store) DesiredServers(ctx context.Context, source string) ([]*quiltv1.DesiredServer, error) {
	cur, err := s.desired.Find(ctx, bson.D{d("source", source)}, options.Find().SetSort(bson.D{d("server", 1)}))
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("desired servers of %q", source), err)
	}
	var docs []struct {
		Server    string `bson:"server"`
		Enabled   bool   `bson:"enabled"`
		Reconnect bool   `bson:"reconnect"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, s.wrap(fmt.Sprintf("desired servers of %q", source), err)
	}
	out := make([]*quiltv1.DesiredServer, len(docs))
	for i, x := range docs {
		out[i] = &quiltv1.DesiredServer{Server: x.Server, Enabled: x.Enabled, Reconnect: x.Reconnect}
	}
	return out, nil
}

func nsOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func timeOf(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

type sourceDoc struct {
	Name     string `bson:"_id"`
	Protocol string `bson:"protocol"`
	Version  string `bson:"version"`
	Node     string `bson:"node"`
	First    int64  `bson:"first"`
	Last     int64  `bson:"last"`
	Detached int64  `bson:"detached"`
	Servers  []byte `bson:"servers"`
}

func (x *sourceDoc) record() (store.SourceRecord, error) {
	r := store.SourceRecord{Name: x.Name, Protocol: x.Protocol, Version: x.Version, Node: x.Node,
		FirstAttached: timeOf(x.First), LastAttached: timeOf(x.Last), DetachedAt: timeOf(x.Detached)}
	var info quiltv1.SourceInfo
	if err := proto.Unmarshal(x.Servers, &info); err != nil {
		return r, fmt.Errorf("mongodb: decode servers of source %q: %w", x.Name, err)
	}
	r.Servers = info.Servers
	return r, nil
}

// PutSource implements store.Store; first is only set on insert.
func (s *Store) PutSource(ctx context.Context, r store.SourceRecord) error {
	if r.Name == "" {
		return errors.New("mongodb: put source: empty name")
	}
	servers, err := proto.Marshal(&quiltv1.SourceInfo{Servers: r.Servers})
	if err != nil {
		return fmt.Errorf("mongodb: put source %q: %w", r.Name, err)
	}
	_, err = s.sources.UpdateOne(ctx, bson.D{d("_id", r.Name)}, bson.D{
		d("$set", bson.D{d("protocol", r.Protocol), d("version", r.Version), d("node", r.Node),
			d("last", nsOf(r.LastAttached)), d("detached", nsOf(r.DetachedAt)), d("servers", servers)}),
		d("$setOnInsert", bson.D{d("first", nsOf(r.FirstAttached))}),
	}, options.UpdateOne().SetUpsert(true))
	return s.wrap(fmt.Sprintf("put source %q", r.Name), err)
}

// GetSource implements store.Store.
func (s *Store) GetSource(ctx context.Context, name string) (store.SourceRecord, error) {
	var doc sourceDoc
	err := s.sources.FindOne(ctx, bson.D{d("_id", name)}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return store.SourceRecord{}, fmt.Errorf("source %q: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return store.SourceRecord{}, s.wrap(fmt.Sprintf("source %q", name), err)
	}
	return doc.record()
}

// Sources implements store.Store.
func (s *Store) Sources(ctx context.Context) ([]store.SourceRecord, error) {
	cur, err := s.sources.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{d("_id", 1)}))
	if err != nil {
		return nil, s.wrap("sources", err)
	}
	var docs []sourceDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, s.wrap("sources", err)
	}
	out := make([]store.SourceRecord, 0, len(docs))
	for i := range docs {
		r, err := docs[i].record()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// PutQuery implements store.Store.
func (s *Store) PutQuery(ctx context.Context, r *quiltv1.QueryRecord) error {
	if r.GetId() == "" {
		return errors.New("mongodb: put query record: empty id")
	}
	data, err := proto.Marshal(r)
	if err != nil {
		return fmt.Errorf("mongodb: put query %q: %w", r.GetId(), err)
	}
	var started int64
	if r.GetStarted() != nil {
		started = r.GetStarted().AsTime().UnixNano()
	}
	return s.upsert(ctx, s.queries, fmt.Sprintf("put query %q", r.GetId()), r.GetId(),
		bson.D{d("started", started), d("requested_by", r.GetRequestedBy()), d("data", data)})
}

func decodeQuery(data []byte) (*quiltv1.QueryRecord, error) {
	r := new(quiltv1.QueryRecord)
	if err := proto.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("mongodb: decode query record: %w", err)
	}
	return r, nil
}

// GetQuery implements store.Store.
func (s *Store) GetQuery(ctx context.Context, id string) (*quiltv1.QueryRecord, error) {
	var doc struct {
		Data []byte `bson:"data"`
	}
	err := s.queries.FindOne(ctx, bson.D{d("_id", id)}).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, fmt.Errorf("query %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("query %q", id), err)
	}
	return decodeQuery(doc.Data)
}

// ListQueries implements store.Store (started or by_started index).
func (s *Store) ListQueries(ctx context.Context, limit int, requestedBy string) ([]*quiltv1.QueryRecord, error) {
	if limit <= 0 {
		limit = store.DefaultLimit
	}
	f := bson.D{}
	if requestedBy != "" {
		f = append(f, d("requested_by", requestedBy))
	}
	cur, err := s.queries.Find(ctx, f, options.Find().SetSort(bson.D{d("started", -1), d("_id", -1)}).SetLimit(int64(limit)))
	if err != nil {
		return nil, s.wrap("list queries", err)
	}
	var docs []struct {
		Data []byte `bson:"data"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, s.wrap("list queries", err)
	}
	out := make([]*quiltv1.QueryRecord, 0, len(docs))
	for _, x := range docs {
		r, err := decodeQuery(x.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// PutChannelInfo implements store.Store.
func (s *Store) PutChannelInfo(ctx context.Context, source, server string, info *quiltv1.ChannelInfo) error {
	if source == "" || info.GetName() == "" {
		return fmt.Errorf("mongodb: channel info: source %q and channel name %q must not be empty", source, info.GetName())
	}
	data, err := proto.Marshal(info)
	if err != nil {
		return fmt.Errorf("mongodb: channel info %s/%s/%s: %w", source, server, info.GetName(), err)
	}
	return s.upsert(ctx, s.channels, fmt.Sprintf("put channel info %s/%s/%s", source, server, info.GetName()), key(source, server, info.GetName()),
		bson.D{d("source", source), d("server", server), d("name", info.GetName()), d("data", data)})
}

// ChannelInfos implements store.Store.
func (s *Store) ChannelInfos(ctx context.Context, source, server string) ([]*quiltv1.ChannelRow, error) {
	f := bson.D{d("source", source)}
	if server != "" {
		f = append(f, d("server", server))
	}
	cur, err := s.channels.Find(ctx, f, options.Find().SetSort(bson.D{d("server", 1), d("name", 1)}))
	if err != nil {
		return nil, s.wrap(fmt.Sprintf("channel infos of %q", source), err)
	}
	var docs []struct {
		Server string `bson:"server"`
		Data   []byte `bson:"data"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, s.wrap(fmt.Sprintf("channel infos of %q", source), err)
	}
	out := make([]*quiltv1.ChannelRow, 0, len(docs))
	for _, x := range docs {
		info := new(quiltv1.ChannelInfo)
		if err := proto.Unmarshal(x.Data, info); err != nil {
			return nil, fmt.Errorf("mongodb: decode channel info of %q: %w", source, err)
		}
		out = append(out, &quiltv1.ChannelRow{Source: source, Server: x.Server, Info: info})
	}
	return out, nil
}
