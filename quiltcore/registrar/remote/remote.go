// Package remote carries the registrar over the quilt.v1.Registrar gRPC
// service. When the registrar is embedded ([registrar] address = embedded),
// the query master mounts NewServer on its gRPC listener and quilt-smd and
// quiltctl on the same machine use a Client dialled to [query_master]
// listen. The client is read-only: Discover, Watch, Leader and the KV.
// Source managers never register themselves (the query master registers them
// while their stream lives) and only query masters contend for leadership, so
// Register and Lock return ErrNotSupported.
package remote

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/registrar"
)

// ErrNotSupported is returned by the client's Register and Lock.
var ErrNotSupported = errors.New("registration goes through the query master when the registrar is embedded")

// Blocking-query bounds: a client asks the server to wait WatchWait; the
// server caps what it grants at MaxWait.
const (
	WatchWait      = 60 * time.Second
	DefaultWait    = 60 * time.Second
	MaxWait        = 5 * time.Minute
	minServerWait  = time.Second
	rpcGraceMargin = 10 * time.Second // client deadline beyond the server's wait
)

// ---- server ----

type server struct {
	quiltv1.UnimplementedRegistrarServer
	reg registrar.Registrar
}

// NewServer serves reg as quilt.v1.Registrar. Blocking Discover uses
// reg's IndexedDiscoverer when it has one (every quilt backend does) and
// otherwise a Watch, with a hash of the list as its index.
func NewServer(reg registrar.Registrar) quiltv1.RegistrarServer {
	return &server{reg: reg}
}

func (s *server) Discover(ctx context.Context, req *quiltv1.DiscoverRequest) (*quiltv1.DiscoverResponse, error) {
	if req.GetService() == "" {
		return nil, status.Error(codes.InvalidArgument, "discover: empty service name")
	}
	wait := DefaultWait
	if ws := req.GetWaitSeconds(); ws > 0 {
		wait = time.Duration(ws) * time.Second
	}
	wait = min(max(wait, minServerWait), MaxWait)
	waitIndex := req.GetWaitIndex()
	var (
		list  []registrar.Instance
		index uint64
		err   error
	)
	if d, ok := s.reg.(registrar.IndexedDiscoverer); ok {
		list, index, err = d.DiscoverIndex(ctx, req.GetService(), req.GetPassingOnly(), waitIndex, wait)
	} else {
		list, index, err = s.watchDiscover(ctx, req.GetService(), req.GetPassingOnly(), waitIndex, wait)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &quiltv1.DiscoverResponse{Index: index, Instances: make([]*quiltv1.ServiceInstance, len(list))}
	for i, in := range list {
		resp.Instances[i] = &quiltv1.ServiceInstance{
			Name: in.Name, Id: in.ID, Address: in.Address, Tags: in.Tags, Meta: in.Meta, Health: in.Health,
		}
	}
	return resp, nil
}

// watchDiscover emulates a blocking query on a registrar without indexes.
func (s *server) watchDiscover(ctx context.Context, service string, passingOnly bool, waitIndex uint64, wait time.Duration) ([]registrar.Instance, uint64, error) {
	if waitIndex == 0 {
		list, err := s.reg.Discover(ctx, service, passingOnly)
		return list, listIndex(list), err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var last []registrar.Instance
	for list := range s.reg.Watch(wctx, service, passingOnly) {
		if idx := listIndex(list); idx != waitIndex {
			return list, idx, nil
		}
		last = list
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if last == nil {
		list, err := s.reg.Discover(ctx, service, passingOnly)
		return list, listIndex(list), err
	}
	return last, waitIndex, nil
}

// listIndex is a content hash standing in for a modify index; never 0, which
// would not block.
func listIndex(list []registrar.Instance) uint64 {
	registrar.SortInstances(list)
	h := fnv.New64a()
	for _, in := range list {
		fmt.Fprintf(h, "%q %q %q %q %q|", in.Name, in.ID, in.Address, in.Health, in.Tags)
		keys := make([]string, 0, len(in.Meta))
		for k := range in.Meta {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(h, "%q=%q,", k, in.Meta[k])
		}
	}
	return h.Sum64() | 1
}

func (s *server) Leader(ctx context.Context, req *quiltv1.LeaderRequest) (*quiltv1.LeaderResponse, error) {
	l, err := s.reg.Leader(ctx, req.GetKey())
	if errors.Is(err, registrar.ErrNotFound) {
		return &quiltv1.LeaderResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &quiltv1.LeaderResponse{HolderId: l.ID, Address: l.Address}, nil
}

func (s *server) KVGet(ctx context.Context, req *quiltv1.KVGetRequest) (*quiltv1.KVGetResponse, error) {
	v, err := s.reg.KVGet(ctx, req.GetKey())
	if errors.Is(err, registrar.ErrNotFound) {
		return &quiltv1.KVGetResponse{}, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &quiltv1.KVGetResponse{Value: v, Found: true}, nil
}

func (s *server) KVPut(ctx context.Context, req *quiltv1.KVPutRequest) (*quiltv1.KVPutResponse, error) {
	if err := s.reg.KVPut(ctx, req.GetKey(), req.GetValue()); err != nil {
		return nil, toStatus(err)
	}
	return &quiltv1.KVPutResponse{}, nil
}

// toStatus maps registrar errors to gRPC codes in one place.
func toStatus(err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, registrar.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, registrar.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, registrar.ErrUnreachable), errors.Is(err, registrar.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

// ---- client ----

// Options configures a Client.
type Options struct {
	Logger *slog.Logger
	// DialOptions for Dial; none means plaintext (the query master's
	// listener on the same machine).
	DialOptions []grpc.DialOption
}

// Client is a read-only registrar.Registrar over quilt.v1.Registrar.
type Client struct {
	rc     quiltv1.RegistrarClient
	conn   *grpc.ClientConn // owned when made by Dial
	target string
	log    *slog.Logger

	ctx    context.Context // ends on Close; parents every watch
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
}

var (
	_ registrar.Registrar         = (*Client)(nil)
	_ registrar.IndexedDiscoverer = (*Client)(nil)
)

// Dial makes a client for the query master at target (host:port). Like
// grpc.NewClient it does not connect until the first call.
func Dial(target string, opts Options) (*Client, error) {
	dopts := opts.DialOptions
	if len(dopts) == 0 {
		dopts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("registrar at query master %s: %w", target, err)
	}
	c := New(conn, target, opts)
	c.conn = conn
	return c, nil
}

// New makes a client on an existing connection, which Close leaves open.
// target only names the peer in errors.
func New(cc grpc.ClientConnInterface, target string, opts Options) *Client {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{rc: quiltv1.NewRegistrarClient(cc), target: target, log: log.With("registrar", "remote", "query_master", target)}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// fromStatus maps gRPC errors back to registrar errors.
func (c *Client) fromStatus(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	st := status.Convert(err)
	switch st.Code() {
	case codes.NotFound:
		return fmt.Errorf("%s: %w", what, registrar.ErrNotFound)
	case codes.InvalidArgument:
		return fmt.Errorf("%s: %w: %s", what, registrar.ErrInvalid, st.Message())
	case codes.Unavailable:
		return fmt.Errorf("%s: query master at %s unreachable: %s: %w", what, c.target, st.Message(), registrar.ErrUnreachable)
	default:
		return fmt.Errorf("%s: query master at %s: %s", what, c.target, st.Message())
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Register is not supported remotely: see ErrNotSupported.
func (c *Client) Register(context.Context, registrar.Registration) (registrar.Registered, error) {
	return nil, ErrNotSupported
}

// Lock is not supported remotely: see ErrNotSupported.
func (c *Client) Lock(context.Context, string, string, string) (registrar.Lock, error) {
	return nil, ErrNotSupported
}

// Discover implements registrar.Registrar.
func (c *Client) Discover(ctx context.Context, service string, passingOnly bool) ([]registrar.Instance, error) {
	list, _, err := c.DiscoverIndex(ctx, service, passingOnly, 0, 0)
	return list, err
}

// DiscoverIndex implements registrar.IndexedDiscoverer with Discover's
// wait_index (wait rounds up to whole seconds).
func (c *Client) DiscoverIndex(ctx context.Context, service string, passingOnly bool, waitIndex uint64, wait time.Duration) ([]registrar.Instance, uint64, error) {
	if c.isClosed() {
		return nil, 0, registrar.ErrClosed
	}
	req := &quiltv1.DiscoverRequest{Service: service, PassingOnly: passingOnly, WaitIndex: waitIndex}
	if waitIndex != 0 {
		if wait <= 0 {
			wait = DefaultWait
		}
		req.WaitSeconds = int32((wait + time.Second - 1) / time.Second)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+rpcGraceMargin)
		defer cancel()
	}
	resp, err := c.rc.Discover(ctx, req)
	if err != nil {
		return nil, 0, c.fromStatus(ctx, "discover "+service, err)
	}
	list := make([]registrar.Instance, len(resp.GetInstances()))
	for i, in := range resp.GetInstances() {
		list[i] = registrar.Instance{
			Name: in.GetName(), ID: in.GetId(), Address: in.GetAddress(),
			Tags: in.GetTags(), Meta: in.GetMeta(), Health: in.GetHealth(),
		}
	}
	return list, resp.GetIndex(), nil
}

// Watch implements registrar.Registrar by looping blocking Discovers; it
// also ends on Close.
func (c *Client) Watch(ctx context.Context, service string, passingOnly bool) <-chan []registrar.Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		ch := make(chan []registrar.Instance)
		close(ch)
		return ch
	}
	c.wg.Add(1)
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.ctx, cancel)
	fetch := func(ctx context.Context, waitIndex uint64) ([]registrar.Instance, uint64, error) {
		return c.DiscoverIndex(ctx, service, passingOnly, waitIndex, WatchWait)
	}
	return registrar.WatchLoop(wctx, c.log, service, fetch, func() {
		stop()
		cancel()
		c.wg.Done()
	})
}

// Leader implements registrar.Registrar.
func (c *Client) Leader(ctx context.Context, key string) (registrar.Leader, error) {
	if err := registrar.CheckKey(key); err != nil {
		return registrar.Leader{}, err
	}
	if c.isClosed() {
		return registrar.Leader{}, registrar.ErrClosed
	}
	resp, err := c.rc.Leader(ctx, &quiltv1.LeaderRequest{Key: key})
	if err != nil {
		return registrar.Leader{}, c.fromStatus(ctx, "leader "+key, err)
	}
	if resp.GetHolderId() == "" {
		return registrar.Leader{}, fmt.Errorf("%w: no leader for %q", registrar.ErrNotFound, key)
	}
	return registrar.Leader{ID: resp.GetHolderId(), Address: resp.GetAddress()}, nil
}

// KVGet implements registrar.Registrar.
func (c *Client) KVGet(ctx context.Context, key string) ([]byte, error) {
	if err := registrar.CheckKey(key); err != nil {
		return nil, err
	}
	if c.isClosed() {
		return nil, registrar.ErrClosed
	}
	resp, err := c.rc.KVGet(ctx, &quiltv1.KVGetRequest{Key: key})
	if err != nil {
		return nil, c.fromStatus(ctx, "get "+key, err)
	}
	if !resp.GetFound() {
		return nil, fmt.Errorf("%w: key %q", registrar.ErrNotFound, key)
	}
	if resp.GetValue() == nil {
		return []byte{}, nil
	}
	return resp.GetValue(), nil
}

// KVPut implements registrar.Registrar.
func (c *Client) KVPut(ctx context.Context, key string, value []byte) error {
	if err := registrar.CheckKey(key); err != nil {
		return err
	}
	if c.isClosed() {
		return registrar.ErrClosed
	}
	if _, err := c.rc.KVPut(ctx, &quiltv1.KVPutRequest{Key: key, Value: value}); err != nil {
		return c.fromStatus(ctx, "put "+key, err)
	}
	return nil
}

// Close ends watches and, for a Dial'ed client, the connection.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	if c.conn != nil {
		return c.conn.Close()
	}
	return nil
}
