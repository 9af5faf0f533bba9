// Package quilt is the Go client library for a quilt cluster: it finds the
// leader query master through the registrar (or takes an explicit
// address), runs queries, follows the event stream with automatic
// reconnect and re-subscribe, and sends actions.
//
//	c, err := quilt.Dial(ctx, quilt.Options{ConfigDir: "/etc/quilt", Identity: "mybot"})
//	defer c.Close()
//	for res, err := range c.Query(ctx, &quiltv1.QueryRequest{Kind: "lastseen", Filter: ...}) { ... }
//	err = c.Subscribe(ctx, quilt.SubscribeOptions{Filter: f}, func(e *quiltv1.Event) error { ... })
//	res, err := c.Send(ctx, "irc", "libera", "#chan", "hello", quiltv1.SendStyle_SEND_STYLE_MESSAGE)
//	as := c.ActStream(ctx) // pipelined: as.Send(ref, action, 0), outcomes on as.Outcomes()
//
// Leader following: a call answered FAILED_PRECONDITION ("not leader") or
// UNAVAILABLE makes the client look the leader up again and retry (unary
// calls a few times, Subscribe until its context ends). See the example
// bots in clients/examples.
package quilt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"os"
	"os/user"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/registrar/open"
)

// ErrNoMaster wraps every failure to find a query master, so callers (and
// quiltctl's exit codes) can tell "nothing to talk to" from other errors.
var ErrNoMaster = errors.New("no query master")

// Options say how to find the query master.
type Options struct {
	// ConfigDir holds quilt.cfg ([registrar], [query_master]); empty means
	// $QUILT_CFG_DIR, else /etc/quilt. A missing quilt.cfg is the defaults.
	ConfigDir string
	// Master is the query master's host:port; set, discovery is skipped.
	Master string
	// Registrar, when set, is used to find the leader instead of the one
	// quilt.cfg names (tests, programs that already hold one).
	Registrar registrar.Registrar
	// LeaderKey overrides [query_master] leader_key.
	LeaderKey string
	// DialOptions for the query master connection (default plaintext).
	DialOptions []grpc.DialOption
	// Identity is recorded as requested_by (default user@host).
	Identity string
	Logger   *slog.Logger
}

// Client talks to the leader query master. Safe for concurrent use.
type Client struct {
	opts      Options
	log       *slog.Logger
	reg       registrar.Registrar
	ownReg    bool
	leaderKey string
	where     string // how the master is found, for errors

	mu   sync.Mutex
	addr string
	conn *grpc.ClientConn
	qm   quiltv1.QueryMasterClient
}

// Dial resolves the leader and connects. It fails with an error wrapping
// ErrNoMaster when no query master can be found.
func Dial(ctx context.Context, o Options) (*Client, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Identity == "" {
		o.Identity = DefaultIdentity()
	}
	c := &Client{opts: o, log: o.Logger, leaderKey: o.LeaderKey}
	if o.Master != "" {
		c.where = "given with --master or Options.Master"
	} else {
		cfg, err := config.Load(config.Dir(o.ConfigDir))
		if err != nil {
			return nil, err
		}
		if c.leaderKey == "" {
			c.leaderKey = cfg.QueryMaster.LeaderKey
		}
		c.reg = o.Registrar
		if c.reg == nil {
			rc := cfg.Registrar
			ro := registrar.Options{Address: rc.Address, Datacenter: rc.Datacenter, Logger: o.Logger,
				TLS: registrar.TLSOptions{CAFile: rc.TLSCAFile, CertFile: rc.TLSCertFile, KeyFile: rc.TLSKeyFile, InsecureSkipVerify: rc.TLSSkipVerify, Enable: rc.TLS}}
			if rc.Token.IsSet() {
				ro.Token = rc.Token.Reveal()
			}
			if rc.Embedded {
				ro.Address = ""
				ro.QueryMaster = cfg.QueryMaster.Listen
				c.where = fmt.Sprintf("via the embedded registrar of the query master at %s ([query_master] listen in %s)", cfg.QueryMaster.Listen, cfg.File)
			} else {
				c.where = fmt.Sprintf("via consul at %s ([registrar] address in %s)", rc.Address, cfg.File)
			}
			reg, err := open.New(ctx, ro, o.DialOptions...)
			if err != nil {
				return nil, fmt.Errorf("%w found %s: %v", ErrNoMaster, c.where, err)
			}
			c.reg, c.ownReg = reg, true
		} else {
			c.where = "via the given registrar"
		}
	}
	if c.leaderKey == "" {
		c.leaderKey = registrar.LeaderKeyQueryMaster
	}
	if err := c.connect(ctx, ""); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// DefaultIdentity is user@host, what requested_by says by default.
func DefaultIdentity() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// Identity is what the client puts in requested_by.
func (c *Client) Identity() string { return c.opts.Identity }

// Address is the query master currently used.
func (c *Client) Address() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// resolve finds the leader's address.
func (c *Client) resolve(ctx context.Context) (string, error) {
	if c.opts.Master != "" {
		return c.opts.Master, nil
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := c.reg.Leader(lctx, c.leaderKey)
	if err != nil {
		if errors.Is(err, registrar.ErrNotFound) {
			return "", fmt.Errorf("%w found %s: no leader holds %s; is quilt-qmd running? see `quiltctl status -h`", ErrNoMaster, c.where, c.leaderKey)
		}
		return "", fmt.Errorf("%w found %s: %v; is quilt-qmd running? see `quiltctl status -h`", ErrNoMaster, c.where, err)
	}
	return l.Address, nil
}

// connect (re)dials the leader unless already connected to it. stale is
// the address that just failed ("" on first connect).
func (c *Client) connect(ctx context.Context, stale string) error {
	addr, err := c.resolve(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && c.addr == addr && stale != addr {
		return nil
	}
	if c.conn != nil && c.addr == addr && c.opts.Master == "" {
		// Same address as the one that failed: keep the connection, gRPC
		// reconnects it; a new leader will show up under the key.
		return nil
	}
	dopts := c.opts.DialOptions
	if len(dopts) == 0 {
		dopts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(addr, dopts...)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrNoMaster, addr, err)
	}
	if c.conn != nil {
		c.conn.Close()
	}
	c.conn, c.addr, c.qm = conn, addr, quiltv1.NewQueryMasterClient(conn)
	c.log.Debug("query master", "addr", addr)
	return nil
}

func (c *Client) client() (quiltv1.QueryMasterClient, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.qm, c.addr
}

// Close releases the connection and the registrar the client opened.
func (c *Client) Close() error {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	if c.ownReg && c.reg != nil {
		c.reg.Close()
	}
	return nil
}

// Retryable tells whether err means "ask the leader again": a standby
// answered, or the master went away.
func Retryable(err error) bool {
	switch status.Code(err) {
	case codes.FailedPrecondition:
		return strings.Contains(status.Convert(err).Message(), "not leader")
	case codes.Unavailable:
		return true
	}
	return false
}

// NoMaster tells whether err means no query master could be reached.
func NoMaster(err error) bool {
	return errors.Is(err, ErrNoMaster) || status.Code(err) == codes.Unavailable && !strings.Contains(status.Convert(err).Message(), "store")
}

// unaryAttempts bounds how often a unary call follows a leader change.
const unaryAttempts = 4

// call runs fn against the leader, re-resolving on Retryable errors.
func call[T any](ctx context.Context, c *Client, fn func(quiltv1.QueryMasterClient) (T, error)) (T, error) {
	return callIf(ctx, c, Retryable, fn)
}

// notLeader is the one error after which an action surely did not run.
func notLeader(err error) bool {
	return status.Code(err) == codes.FailedPrecondition && strings.Contains(status.Convert(err).Message(), "not leader")
}

func callIf[T any](ctx context.Context, c *Client, retry func(error) bool, fn func(quiltv1.QueryMasterClient) (T, error)) (T, error) {
	var zero T
	var err error
	for attempt := 0; attempt < unaryAttempts; attempt++ {
		qm, addr := c.client()
		var res T
		res, err = fn(qm)
		if err == nil || !retry(err) || ctx.Err() != nil {
			return res, c.explain(err, addr)
		}
		if attempt+1 == unaryAttempts {
			break
		}
		if rerr := c.connect(ctx, addr); rerr != nil {
			return zero, rerr
		}
		if err := sleep(ctx, time.Duration(attempt+1)*200*time.Millisecond); err != nil {
			return zero, err
		}
	}
	qm, addr := c.client()
	_ = qm
	return zero, c.explain(err, addr)
}

// explain wraps a transport failure so the caller learns where the client
// looked and what to do.
func (c *Client) explain(err error, addr string) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	if st.Code() == codes.Unavailable && (strings.Contains(st.Message(), "connection refused") || strings.Contains(st.Message(), "connection error") || strings.Contains(st.Message(), "dial")) {
		return fmt.Errorf("%w reachable at %s (%s): %s; is quilt-qmd running? see `quiltctl status -h`", ErrNoMaster, addr, c.where, st.Message())
	}
	return err
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status asks the query master who it is and whether it leads.
func (c *Client) Status(ctx context.Context) (*quiltv1.StatusResponse, error) {
	return call(ctx, c, func(qm quiltv1.QueryMasterClient) (*quiltv1.StatusResponse, error) {
		return qm.Status(ctx, &quiltv1.StatusRequest{})
	})
}

// Sources lists source managers (attached, and detached ones the store
// knows when includeDetached).
func (c *Client) Sources(ctx context.Context, includeDetached bool) ([]*quiltv1.SourceInfo, error) {
	r, err := call(ctx, c, func(qm quiltv1.QueryMasterClient) (*quiltv1.ListSourcesResponse, error) {
		return qm.ListSources(ctx, &quiltv1.ListSourcesRequest{IncludeDetached: includeDetached})
	})
	return r.GetSources(), err
}

// Patterns lists the configured query patterns.
func (c *Client) Patterns(ctx context.Context) ([]*quiltv1.Pattern, error) {
	r, err := call(ctx, c, func(qm quiltv1.QueryMasterClient) (*quiltv1.ListPatternsResponse, error) {
		return qm.ListPatterns(ctx, &quiltv1.ListPatternsRequest{})
	})
	return r.GetPatterns(), err
}

// History lists recent queries, newest first (requestedBy "" : everyone's).
func (c *Client) History(ctx context.Context, limit int, requestedBy string) ([]*quiltv1.QueryRecord, error) {
	r, err := call(ctx, c, func(qm quiltv1.QueryMasterClient) (*quiltv1.ListQueriesResponse, error) {
		return qm.ListQueries(ctx, &quiltv1.ListQueriesRequest{Limit: int32(limit), RequestedBy: requestedBy})
	})
	return r.GetQueries(), err
}

// HistoryRecord returns one query history record.
func (c *Client) HistoryRecord(ctx context.Context, id string) (*quiltv1.QueryRecord, error) {
	return call(ctx, c, func(qm quiltv1.QueryMasterClient) (*quiltv1.QueryRecord, error) {
		return qm.GetQuery(ctx, &quiltv1.GetQueryRequest{Id: id})
	})
}

// ControlServer enables, disables or reconnects a server.
func (c *Client) ControlServer(ctx context.Context, source, server string, op quiltv1.ServerControlOp) (*quiltv1.ControlServerResponse, error) {
	return call(ctx, c, func(qm quiltv1.QueryMasterClient) (*quiltv1.ControlServerResponse, error) {
		return qm.ControlServer(ctx, &quiltv1.ControlServerRequest{Source: source, Server: server, Op: op, RequestedBy: c.opts.Identity})
	})
}

// Act sends an action and waits for its result (timeout 0: the master's
// default). An action the source manager refused comes back as a result
// with Ok false, not as an error. Act is re-sent by itself only when a
// standby refused it; after UNAVAILABLE or DEADLINE_EXCEEDED the action
// may or may not have run, and the caller decides (see the relay example,
// which looks for the echo of its message before sending again).
func (c *Client) Act(ctx context.Context, a *quiltv1.Action, timeout time.Duration) (*quiltv1.ActionResult, error) {
	if a.RequestedBy == "" {
		a.RequestedBy = c.opts.Identity
	}
	return callIf(ctx, c, notLeader, func(qm quiltv1.QueryMasterClient) (*quiltv1.ActionResult, error) {
		return qm.Act(ctx, &quiltv1.ActRequest{Action: a, TimeoutSeconds: int32((timeout + time.Second - 1) / time.Second)})
	})
}

// Send is Act for a SEND of text to target (channel or user).
func (c *Client) Send(ctx context.Context, source, server, target, text string, style quiltv1.SendStyle) (*quiltv1.ActionResult, error) {
	return c.Act(ctx, &quiltv1.Action{Source: source, Server: server, Kind: quiltv1.ActionKind_ACTION_KIND_SEND,
		Target: target, Text: text, Style: style}, 0)
}

// Query runs a query and yields its results in order (header, rows,
// problems, done). The stream is not retried once a result arrived; a
// query refused by a standby before any result is re-sent to the leader.
func (c *Client) Query(ctx context.Context, req *quiltv1.QueryRequest) iter.Seq2[*quiltv1.QueryResult, error] {
	return func(yield func(*quiltv1.QueryResult, error) bool) {
		if req.RequestedBy == "" {
			req.RequestedBy = c.opts.Identity
		}
		for attempt := 0; ; attempt++ {
			qm, addr := c.client()
			stream, err := qm.Query(ctx, req)
			got := false
			for err == nil {
				var res *quiltv1.QueryResult
				res, err = stream.Recv()
				if err == nil {
					got = true
					if !yield(res, nil) {
						return
					}
				}
			}
			if errors.Is(err, io.EOF) {
				return
			}
			if got || !Retryable(err) || attempt+1 >= unaryAttempts || ctx.Err() != nil {
				yield(nil, c.explain(err, addr))
				return
			}
			if rerr := c.connect(ctx, addr); rerr != nil {
				yield(nil, rerr)
				return
			}
			if err := sleep(ctx, time.Duration(attempt+1)*200*time.Millisecond); err != nil {
				yield(nil, err)
				return
			}
		}
	}
}

// Answer is a whole query answer.
type Answer struct {
	Header   *quiltv1.QueryHeader
	Rows     []*quiltv1.QueryResult
	Problems []*quiltv1.SourceProblem
	Done     *quiltv1.QueryDone
}

// QueryAll runs a query and collects its answer.
func (c *Client) QueryAll(ctx context.Context, req *quiltv1.QueryRequest) (*Answer, error) {
	a := &Answer{}
	for res, err := range c.Query(ctx, req) {
		if err != nil {
			return a, err
		}
		switch r := res.Result.(type) {
		case *quiltv1.QueryResult_Header:
			a.Header = r.Header
		case *quiltv1.QueryResult_Problem:
			a.Problems = append(a.Problems, r.Problem)
		case *quiltv1.QueryResult_Done:
			a.Done = r.Done
		default:
			a.Rows = append(a.Rows, res)
		}
	}
	return a, nil
}
