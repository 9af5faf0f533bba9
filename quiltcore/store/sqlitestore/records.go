package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/store"
)

func (s *Store) exec(ctx context.Context, what, q string, args ...any) error {
	err := s.write(ctx, func(c *wconn) error {
		_, err := c.exec(q, args...)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlitestore: %s: %w", what, err)
	}
	return nil
}

// Cursors implements store.Store.
func (s *Store) Cursors(ctx context.Context, source string) ([]*quiltv1.Cursor, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT server, name, value FROM cursors WHERE source = ? ORDER BY server, name", source)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: cursors of %q: %w", source, err)
	}
	defer rows.Close()
	var out []*quiltv1.Cursor
	for rows.Next() {
		c := new(quiltv1.Cursor)
		if err := rows.Scan(&c.Server, &c.Name, &c.Value); err != nil {
			return nil, fmt.Errorf("sqlitestore: cursors of %q: %w", source, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// SetDesiredServer implements store.Store.
func (s *Store) SetDesiredServer(ctx context.Context, source string, d *quiltv1.DesiredServer) error {
	if source == "" || d.GetServer() == "" {
		return fmt.Errorf("sqlitestore: desired server: source %q and server %q must not be empty", source, d.GetServer())
	}
	return s.exec(ctx, fmt.Sprintf("set desired state of %s/%s", source, d.GetServer()),
		"INSERT INTO desired(source, server, enabled, reconnect) VALUES (?, ?, ?, ?) ON CONFLICT(source, server) DO UPDATE SET enabled = excluded.enabled, reconnect = excluded.reconnect",
		source, d.GetServer(), d.GetEnabled(), d.GetReconnect())
}

// DesiredServers implements store.Store.
func (s *Store) DesiredServers(ctx context.Context, source string) ([]*quiltv1.DesiredServer, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT server, enabled, reconnect FROM desired WHERE source = ? ORDER BY server", source)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: desired servers of %q: %w", source, err)
	}
	defer rows.Close()
	var out []*quiltv1.DesiredServer
	for rows.Next() {
		d := new(quiltv1.DesiredServer)
		if err := rows.Scan(&d.Server, &d.Enabled, &d.Reconnect); err != nil {
			return nil, fmt.Errorf("sqlitestore: desired servers of %q: %w", source, err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
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

// PutSource implements store.Store.
func (s *Store) PutSource(ctx context.Context, r store.SourceRecord) error {
	if r.Name == "" {
		return errors.New("sqlitestore: put source: empty name")
	}
	servers, err := proto.Marshal(&quiltv1.SourceInfo{Servers: r.Servers})
	if err != nil {
		return fmt.Errorf("sqlitestore: put source %q: %w", r.Name, err)
	}
	return s.exec(ctx, fmt.Sprintf("put source %q", r.Name),
		`INSERT INTO sources(name, protocol, version, node, first_ns, last_ns, detached_ns, servers) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(name) DO UPDATE SET protocol = excluded.protocol, version = excluded.version, node = excluded.node,
			first_ns = CASE WHEN sources.first_ns = 0 THEN excluded.first_ns ELSE sources.first_ns END,
			last_ns = excluded.last_ns, detached_ns = excluded.detached_ns, servers = excluded.servers`,
		r.Name, r.Protocol, r.Version, r.Node, nsOf(r.FirstAttached), nsOf(r.LastAttached), nsOf(r.DetachedAt), servers)
}

const sourceCols = "name, protocol, version, node, first_ns, last_ns, detached_ns, servers"

func scanSource(sc interface{ Scan(...any) error }) (store.SourceRecord, error) {
	var r store.SourceRecord
	var first, last, det int64
	var servers []byte
	if err := sc.Scan(&r.Name, &r.Protocol, &r.Version, &r.Node, &first, &last, &det, &servers); err != nil {
		return r, err
	}
	r.FirstAttached, r.LastAttached, r.DetachedAt = timeOf(first), timeOf(last), timeOf(det)
	var info quiltv1.SourceInfo
	if err := proto.Unmarshal(servers, &info); err != nil {
		return r, fmt.Errorf("decode servers: %w", err)
	}
	r.Servers = info.Servers
	return r, nil
}

// GetSource implements store.Store.
func (s *Store) GetSource(ctx context.Context, name string) (store.SourceRecord, error) {
	r, err := scanSource(s.rdb.QueryRowContext(ctx, "SELECT "+sourceCols+" FROM sources WHERE name = ?", name))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("source %q: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("sqlitestore: source %q: %w", name, err)
	}
	return r, nil
}

// Sources implements store.Store.
func (s *Store) Sources(ctx context.Context) ([]store.SourceRecord, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT "+sourceCols+" FROM sources ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: sources: %w", err)
	}
	defer rows.Close()
	var out []store.SourceRecord
	for rows.Next() {
		r, err := scanSource(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlitestore: sources: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// PutQuery implements store.Store.
func (s *Store) PutQuery(ctx context.Context, r *quiltv1.QueryRecord) error {
	if r.GetId() == "" {
		return errors.New("sqlitestore: put query record: empty id")
	}
	data, err := proto.Marshal(r)
	if err != nil {
		return fmt.Errorf("sqlitestore: put query %q: %w", r.GetId(), err)
	}
	var started int64
	if r.GetStarted() != nil {
		started = r.GetStarted().AsTime().UnixNano()
	}
	return s.exec(ctx, fmt.Sprintf("put query %q", r.GetId()),
		"INSERT INTO queries(id, started_ns, requested_by, data) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET started_ns = excluded.started_ns, requested_by = excluded.requested_by, data = excluded.data",
		r.GetId(), started, r.GetRequestedBy(), data)
}

// GetQuery implements store.Store.
func (s *Store) GetQuery(ctx context.Context, id string) (*quiltv1.QueryRecord, error) {
	var data []byte
	err := s.rdb.QueryRowContext(ctx, "SELECT data FROM queries WHERE id = ?", id).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("query %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: query %q: %w", id, err)
	}
	r := new(quiltv1.QueryRecord)
	if err := proto.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("sqlitestore: decode query %q: %w", id, err)
	}
	return r, nil
}

// ListQueries implements store.Store.
func (s *Store) ListQueries(ctx context.Context, limit int, requestedBy string) ([]*quiltv1.QueryRecord, error) {
	if limit <= 0 {
		limit = store.DefaultLimit
	}
	var rows *sql.Rows
	var err error
	if requestedBy != "" {
		rows, err = s.rdb.QueryContext(ctx, "SELECT data FROM queries WHERE requested_by = ? ORDER BY started_ns DESC, id DESC LIMIT ?", requestedBy, limit)
	} else {
		rows, err = s.rdb.QueryContext(ctx, "SELECT data FROM queries ORDER BY started_ns DESC, id DESC LIMIT ?", limit)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: list queries: %w", err)
	}
	defer rows.Close()
	var out []*quiltv1.QueryRecord
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("sqlitestore: list queries: %w", err)
		}
		r := new(quiltv1.QueryRecord)
		if err := proto.Unmarshal(data, r); err != nil {
			return nil, fmt.Errorf("sqlitestore: decode query record: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// PutChannelInfo implements store.Store.
func (s *Store) PutChannelInfo(ctx context.Context, source, server string, info *quiltv1.ChannelInfo) error {
	if source == "" || info.GetName() == "" {
		return fmt.Errorf("sqlitestore: channel info: source %q and channel name %q must not be empty", source, info.GetName())
	}
	data, err := proto.Marshal(info)
	if err != nil {
		return fmt.Errorf("sqlitestore: channel info %s/%s/%s: %w", source, server, info.GetName(), err)
	}
	return s.exec(ctx, fmt.Sprintf("put channel info %s/%s/%s", source, server, info.GetName()),
		"INSERT INTO channels(source, server, name, data) VALUES (?, ?, ?, ?) ON CONFLICT(source, server, name) DO UPDATE SET data = excluded.data",
		source, server, info.GetName(), data)
}

// ChannelInfos implements store.Store.
func (s *Store) ChannelInfos(ctx context.Context, source, server string) ([]*quiltv1.ChannelRow, error) {
	q, args := "SELECT server, data FROM channels WHERE source = ? ORDER BY server, name", []any{source}
	if server != "" {
		q, args = "SELECT server, data FROM channels WHERE source = ? AND server = ? ORDER BY server, name", []any{source, server}
	}
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: channel infos of %q: %w", source, err)
	}
	defer rows.Close()
	var out []*quiltv1.ChannelRow
	for rows.Next() {
		var srv string
		var data []byte
		if err := rows.Scan(&srv, &data); err != nil {
			return nil, fmt.Errorf("sqlitestore: channel infos of %q: %w", source, err)
		}
		info := new(quiltv1.ChannelInfo)
		if err := proto.Unmarshal(data, info); err != nil {
			return nil, fmt.Errorf("sqlitestore: decode channel info of %q: %w", source, err)
		}
		out = append(out, &quiltv1.ChannelRow{Source: source, Server: srv, Info: info})
	}
	return out, rows.Err()
}
