// Package query is the query layer of the query master: the Query,
// ListQueries, GetQuery and ListPatterns RPCs of quilt.v1.QueryMaster.
//
// A query is one of the kinds below, or a named pattern from the patterns
// dir that expands to one. Live kinds fan a LiveQuery out to the attached
// source managers through the core's Router, with a per-source deadline;
// every source asked ends in rows or a SourceProblem (timeout, detached,
// error), never silently missing. History kinds read the store. Every query
// gets a ULID and is recorded in the store's query history, running first,
// then done, failed or cancelled.
//
// Mount it with Register, which serves the core Master's RPCs and this
// package's on one QueryMaster service.
package query

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/quiltcore/store"
)

// Query kinds.
const (
	KindPresence = "presence"
	KindMembers  = "members"
	KindChannels = "channels"
	KindServers  = "servers"
	KindEvents   = "events"
	KindLastSeen = "lastseen"
	KindSources  = "sources"
)

// Kinds lists every query kind, live ones first.
var Kinds = []string{KindPresence, KindMembers, KindChannels, KindServers, KindEvents, KindLastSeen, KindSources}

var liveKinds = map[string]quiltv1.LiveQueryKind{
	KindPresence: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_PRESENCE,
	KindMembers:  quiltv1.LiveQueryKind_LIVE_QUERY_KIND_MEMBERS,
	KindChannels: quiltv1.LiveQueryKind_LIVE_QUERY_KIND_CHANNELS,
	KindServers:  quiltv1.LiveQueryKind_LIVE_QUERY_KIND_SERVERS,
}

// DefaultHistoryLimit is how many ListQueries returns when asked for 0.
const DefaultHistoryLimit = 20

// Options configure a Server.
type Options struct {
	Master *querymaster.Master
	Store  store.Store
	// PatternsDir holds *.pattern files ([patterns] dir). It is read on
	// every Query and ListPatterns, so edits apply without a restart.
	PatternsDir string
	Logger      *slog.Logger
	// Now is the clock for "since 2h" and durations (tests); default
	// time.Now.
	Now func() time.Time
}

// Server is the QueryMaster service: the core Master's RPCs (Subscribe,
// Act, ListSources, ControlServer, Status) plus the query layer's.
type Server struct {
	*querymaster.Master
	opts Options
	log  *slog.Logger

	rec  recorder
	srcs sourceCache

	mu       sync.Mutex
	patterns map[string]*Pattern
	patErr   error
	patStamp string
}

// New builds the query layer over a Master and its store.
func New(o Options) (*Server, error) {
	if o.Master == nil || o.Store == nil {
		return nil, errors.New("query: Options.Master and Options.Store are required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{Master: o.Master, opts: o, log: o.Logger.With("component", "query")}
	s.rec.s = s
	return s, nil
}

// Register mounts QueryMaster (this Server), SourceLink (the core Master)
// and grpc.health.v1 on s. Use it instead of Master.Register.
func Register(s grpc.ServiceRegistrar, srv *Server) {
	quiltv1.RegisterQueryMasterServer(s, srv)
	quiltv1.RegisterSourceLinkServer(s, srv.Master)
	healthpb.RegisterHealthServer(s, srv.Master.Health())
}

var _ quiltv1.QueryMasterServer = (*Server)(nil)

// leader refuses work on a standby the way the core does, naming the
// leader so clients re-resolve.
func (s *Server) leader(ctx context.Context) error {
	if s.Master.IsLeader() {
		return nil
	}
	st, _ := s.Master.Status(ctx, &quiltv1.StatusRequest{})
	if st.GetLeaderAddress() != "" {
		return status.Errorf(codes.FailedPrecondition, "not leader: %s is a standby; the leader is at %s", s.Master.ID(), st.GetLeaderAddress())
	}
	return status.Errorf(codes.FailedPrecondition, "not leader: %s is not leading and no leader is known yet; retry shortly", s.Master.ID())
}

// loadPatterns rereads the patterns dir when a file changed (names, sizes
// and mtimes), so a broken edit is reported and a fixed one picked up.
func (s *Server) loadPatterns() (map[string]*Pattern, error) {
	stamp := dirStamp(s.opts.PatternsDir)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.patterns != nil && stamp == s.patStamp {
		return s.patterns, s.patErr
	}
	ps, err := LoadPatterns(s.opts.PatternsDir)
	if err != nil {
		s.log.Warn("patterns", "dir", s.opts.PatternsDir, "err", err)
	}
	s.patterns, s.patErr, s.patStamp = ps, err, stamp
	return ps, err
}

// ListPatterns lists the patterns that parsed, sorted by name.
func (s *Server) ListPatterns(ctx context.Context, _ *quiltv1.ListPatternsRequest) (*quiltv1.ListPatternsResponse, error) {
	ps, _ := s.loadPatterns()
	resp := &quiltv1.ListPatternsResponse{}
	for _, n := range sortedKeys(ps) {
		resp.Patterns = append(resp.Patterns, ps[n].Proto())
	}
	return resp, nil
}

// ListQueries lists recent query history, newest first.
func (s *Server) ListQueries(ctx context.Context, req *quiltv1.ListQueriesRequest) (*quiltv1.ListQueriesResponse, error) {
	if err := s.leader(ctx); err != nil {
		return nil, err
	}
	if err := s.rec.flush(ctx); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	limit := int(req.GetLimit())
	if limit <= 0 {
		limit = DefaultHistoryLimit
	}
	recs, err := s.opts.Store.ListQueries(ctx, limit, req.GetRequestedBy())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: listing query history: %v", err)
	}
	return &quiltv1.ListQueriesResponse{Queries: recs}, nil
}

// GetQuery returns one query history record.
func (s *Server) GetQuery(ctx context.Context, req *quiltv1.GetQueryRequest) (*quiltv1.QueryRecord, error) {
	if err := s.leader(ctx); err != nil {
		return nil, err
	}
	if req.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "id is empty; list recent ids with `quiltctl history`")
	}
	if err := s.rec.flush(ctx); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	r, err := s.opts.Store.GetQuery(ctx, req.GetId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no query %q in history; list recent ids with `quiltctl history`", req.GetId())
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: query %s: %v", req.GetId(), err)
	}
	return r, nil
}

// resolve turns a request (kind or pattern) into the request to run.
func (s *Server) resolve(req *quiltv1.QueryRequest) (*quiltv1.QueryRequest, error) {
	if req.GetPattern() == "" {
		if req.GetKind() == "" {
			return nil, status.Errorf(codes.InvalidArgument, "kind is empty: give one of %s, or a pattern", strings.Join(Kinds, ", "))
		}
		if len(req.GetVars()) > 0 {
			return nil, status.Error(codes.InvalidArgument, "vars are given without a pattern")
		}
		r := proto.Clone(req).(*quiltv1.QueryRequest)
		if r.Filter == nil {
			r.Filter = &quiltv1.EventFilter{}
		}
		return r, nil
	}
	if req.GetKind() != "" {
		return nil, status.Errorf(codes.InvalidArgument, "give kind %q or pattern %q, not both", req.GetKind(), req.GetPattern())
	}
	ps, perr := s.loadPatterns()
	p := ps[req.GetPattern()]
	if p == nil {
		names := sortedKeys(ps)
		msg := fmt.Sprintf("unknown pattern %q; patterns: %s", req.GetPattern(), strings.Join(names, ", "))
		if len(names) == 0 {
			msg = fmt.Sprintf("unknown pattern %q: no patterns are defined in %s", req.GetPattern(), s.opts.PatternsDir)
		}
		if perr != nil {
			msg += fmt.Sprintf(" (some pattern files failed to load: %v)", perr)
		}
		return nil, status.Error(codes.InvalidArgument, msg)
	}
	r, err := p.Expand(req.GetVars(), s.opts.Now())
	if err != nil {
		return nil, err
	}
	mergeRequest(r, req)
	return r, nil
}

// check validates what the store or the sources would reject later, so
// the caller hears which field is wrong.
func check(req *quiltv1.QueryRequest) error {
	if !contains(Kinds, req.Kind) {
		return status.Errorf(codes.InvalidArgument, "unknown query kind %q; kinds: %s", req.Kind, strings.Join(Kinds, ", "))
	}
	if re := req.GetFilter().GetTextRegex(); re != "" {
		if _, err := regexp.Compile(re); err != nil {
			return status.Errorf(codes.InvalidArgument, "filter.text_regex %q: %v", re, err)
		}
	}
	if req.Limit < 0 || req.Limit > store.MaxLimit {
		return status.Errorf(codes.InvalidArgument, "limit %d: want 0..%d", req.Limit, store.MaxLimit)
	}
	if req.Kind == KindMembers && req.GetFilter().GetChannel() == "" && req.GetFilter().GetServer() == "" && len(req.GetFilter().GetSources()) == 0 {
		// Allowed, but it lists every member of every channel everywhere;
		// fine for small clusters, so not refused.
		return nil
	}
	return nil
}

// run is one query in progress: it counts rows and keeps the record.
type run struct {
	s      *Server
	stream quiltv1.QueryMaster_QueryServer
	rec    *quiltv1.QueryRecord
	hist   *entry
	start  time.Time
}

func (r *run) send(res *quiltv1.QueryResult) error {
	if err := r.stream.Send(res); err != nil {
		return err
	}
	switch res.Result.(type) {
	case *quiltv1.QueryResult_Header, *quiltv1.QueryResult_Done, *quiltv1.QueryResult_Problem:
	default:
		r.rec.Rows++
	}
	return nil
}

func (r *run) problem(p *quiltv1.SourceProblem) error {
	r.rec.Problems = append(r.rec.Problems, p)
	return r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Problem{Problem: p}})
}

// Query runs a query and streams its answer: a header, rows, problems,
// done. The query is recorded in history whatever happens after it got an
// id.
func (s *Server) Query(req *quiltv1.QueryRequest, stream quiltv1.QueryMaster_QueryServer) error {
	ctx := stream.Context()
	if err := s.leader(ctx); err != nil {
		return err
	}
	start := time.Now()
	rec := &quiltv1.QueryRecord{
		Id:          ulid.Make().String(),
		Kind:        req.GetKind(),
		Pattern:     req.GetPattern(),
		Vars:        req.GetVars(),
		RequestedBy: req.GetRequestedBy(),
		Started:     timestamppb.New(start),
		State:       quiltv1.QueryState_QUERY_STATE_RUNNING,
		Request:     req,
	}
	r := &run{s: s, stream: stream, rec: rec, start: start}
	resolved, err := s.resolve(req)
	if err == nil {
		err = check(resolved)
	}
	if err != nil {
		// Refused queries are recorded too: history shows what people
		// tried and why it failed.
		r.hist = s.rec.begin(rec.Id, nil)
		r.finish(err)
		return err
	}
	rec.Kind = resolved.Kind
	// History is written beside the query, never before or after it on
	// the answer path (see recorder).
	r.hist = s.rec.begin(rec.Id, cloneRecord(rec))
	err = s.execute(ctx, r, resolved)
	r.finish(err)
	return err
}

func (r *run) finish(err error) {
	r.rec.Duration = durationpb.New(time.Since(r.start))
	switch {
	case err == nil:
		r.rec.State = quiltv1.QueryState_QUERY_STATE_DONE
	case status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled):
		r.rec.State = quiltv1.QueryState_QUERY_STATE_CANCELLED
		r.rec.Error = err.Error()
	default:
		r.rec.State = quiltv1.QueryState_QUERY_STATE_FAILED
		r.rec.Error = status.Convert(err).Message()
	}
	r.hist.end(cloneRecord(r.rec))
	r.s.log.Debug("query", "query_id", r.rec.Id, "kind", r.rec.Kind, "pattern", r.rec.Pattern,
		"rows", r.rec.Rows, "problems", len(r.rec.Problems), "duration", r.rec.Duration.AsDuration(), "err", err)
}

func (s *Server) execute(ctx context.Context, r *run, req *quiltv1.QueryRequest) error {
	hdr := &quiltv1.QueryHeader{QueryId: r.rec.Id, Kind: req.Kind}
	var next string
	switch {
	case liveKinds[req.Kind] != quiltv1.LiveQueryKind_LIVE_QUERY_KIND_UNSPECIFIED:
		sources, err := s.liveSources(ctx, req.GetFilter().GetSources())
		if err != nil {
			return err
		}
		hdr.Sources = sources
		if err := r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Header{Header: hdr}}); err != nil {
			return err
		}
		if err := s.live(ctx, r, req, sources); err != nil {
			return err
		}
	case req.Kind == KindEvents:
		if err := r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Header{Header: hdr}}); err != nil {
			return err
		}
		page, err := s.opts.Store.QueryEvents(ctx, store.EventQuery{
			Filter: req.Filter, Limit: int(req.Limit), OldestFirst: req.OldestFirst, PageToken: req.PageToken})
		if err != nil {
			return storeErr("events", err)
		}
		for _, e := range page.Events {
			if err := r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Event{Event: e}}); err != nil {
				return err
			}
		}
		next = page.NextPageToken
	case req.Kind == KindLastSeen:
		if err := r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Header{Header: hdr}}); err != nil {
			return err
		}
		limit := int(req.Limit)
		if limit == 0 {
			limit = store.DefaultLimit
		}
		rows, err := s.opts.Store.LastSeen(ctx, store.LastSeenQuery{User: req.Filter.GetUser(), Sources: req.Filter.GetSources(), Limit: limit})
		if err != nil {
			return storeErr("lastseen", err)
		}
		for _, row := range rows {
			if err := r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_LastSeen{LastSeen: row}}); err != nil {
				return err
			}
		}
	case req.Kind == KindSources:
		if err := r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Header{Header: hdr}}); err != nil {
			return err
		}
		resp, err := s.Master.ListSources(ctx, &quiltv1.ListSourcesRequest{IncludeDetached: true})
		if err != nil {
			return err
		}
		want := req.GetFilter().GetSources()
		for _, si := range resp.Sources {
			if len(want) > 0 && !contains(want, si.Name) {
				continue
			}
			if err := r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Source{Source: si}}); err != nil {
				return err
			}
		}
	}
	return r.send(&quiltv1.QueryResult{Result: &quiltv1.QueryResult_Done{Done: &quiltv1.QueryDone{
		Rows: r.rec.Rows, Duration: durationpb.New(time.Since(r.start)), NextPageToken: next}}})
}

func storeErr(what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err
	}
	if strings.Contains(err.Error(), "page token") {
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	}
	return status.Errorf(codes.Unavailable, "store: %s: %v", what, err)
}

// liveSources is who a live query asks: the named sources (each must be
// known), else every source attached to this master since it started plus
// every source the store knows, so a detached one shows up as a problem
// instead of silently missing.
func (s *Server) liveSources(ctx context.Context, named []string) ([]string, error) {
	if len(named) > 0 {
		for _, n := range named {
			ok, err := s.Master.Router().Known(ctx, n)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, status.Errorf(codes.NotFound, "unknown source %q (attached: %s); see `quiltctl sources`", n, strings.Join(s.Master.Router().Attached(), ", "))
			}
		}
		return named, nil
	}
	set := map[string]bool{}
	for _, n := range s.Master.Router().Seen() {
		set[n] = true
	}
	for _, n := range s.srcs.names(ctx, s) {
		set[n] = true
	}
	return sortedKeys(set), nil
}

// sourcesFresh is how long the store's source list serves live queries
// before it is read again (in the background; queries keep using the
// previous list meanwhile). The store only learns a source when one
// attaches to a master, and the router's Seen covers every source that
// attached to this one, so the list only lags for sources attached to
// another master, or removed.
const sourcesFresh = 2 * time.Second

// sourceCache keeps the store's source names off the live query path: a
// store read per query cost a reader connection and a cgo round trip.
type sourceCache struct {
	mu      sync.Mutex
	list    []string
	at      time.Time
	loading bool
}

func (c *sourceCache) names(ctx context.Context, s *Server) []string {
	c.mu.Lock()
	list, at, loading := c.list, c.at, c.loading
	stale := at.IsZero() || time.Since(at) >= sourcesFresh
	if stale && !at.IsZero() && !loading {
		c.loading = true
		go func() {
			// Not the query's ctx: the refresh outlives the query.
			rctx, cancel := context.WithTimeout(context.Background(), historyPutTimeout)
			defer cancel()
			c.load(rctx, s)
		}()
	}
	c.mu.Unlock()
	if !at.IsZero() {
		return list
	}
	// First use: nothing to serve yet, so read now.
	return c.load(ctx, s)
}

func (c *sourceCache) load(ctx context.Context, s *Server) []string {
	recs, err := s.opts.Store.Sources(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loading = false
	if err != nil {
		s.log.Warn("store: listing sources for live queries; asking sources seen attached only", "err", err)
		return c.list
	}
	list := make([]string, 0, len(recs))
	for _, r := range recs {
		list = append(list, r.Name)
	}
	c.list, c.at = list, time.Now()
	return list
}

// live fans the query out and streams rows as sources answer; rows of one
// source stay together in the order that source sent them.
func (s *Server) live(ctx context.Context, r *run, req *quiltv1.QueryRequest, sources []string) error {
	if len(sources) == 0 {
		return nil
	}
	f := req.GetFilter()
	lq := &quiltv1.LiveQuery{Kind: liveKinds[req.Kind], Server: f.GetServer(), Channel: f.GetChannel(), User: f.GetUser()}
	per := req.GetSourceTimeout().AsDuration()
	if req.GetSourceTimeout() == nil {
		per = 0
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var problems []*quiltv1.SourceProblem
	for sr := range s.Master.Router().LiveQuery(ctx, sources, lq, per) {
		if sr.Problem != nil {
			problems = append(problems, sr.Problem)
			continue
		}
		for _, res := range liveRows(sr.Reply) {
			if err := r.send(res); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	// Problems go last, after every row, so a table shows rows then what
	// is missing.
	sort.Slice(problems, func(i, j int) bool { return problems[i].Source < problems[j].Source })
	for _, p := range problems {
		if err := r.problem(p); err != nil {
			return err
		}
	}
	return nil
}

func liveRows(rep *quiltv1.LiveReply) []*quiltv1.QueryResult {
	var out []*quiltv1.QueryResult
	for _, x := range rep.GetPresence() {
		out = append(out, &quiltv1.QueryResult{Result: &quiltv1.QueryResult_Presence{Presence: x}})
	}
	for _, x := range rep.GetMembers() {
		out = append(out, &quiltv1.QueryResult{Result: &quiltv1.QueryResult_Member{Member: x}})
	}
	for _, x := range rep.GetChannels() {
		out = append(out, &quiltv1.QueryResult{Result: &quiltv1.QueryResult_Channel{Channel: x}})
	}
	for _, x := range rep.GetServers() {
		out = append(out, &quiltv1.QueryResult{Result: &quiltv1.QueryResult_Server{Server: x}})
	}
	return out
}

func tspb(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
