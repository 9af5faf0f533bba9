package querymaster

import (
	"context"
	"errors"

	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/version"
)

// Defaults for zero Options fields. DefaultSubscriberBuffer is the config's
// subscriber_buffer default too, so embedded masters (tests, benchmarks)
// behave like quilt-qmd.
const (
	DefaultSubscriberBuffer = 4096
	DefaultActTimeout       = 30 * time.Second
	DefaultSourceTimeout    = 5 * time.Second
	DefaultHeartbeat        = 5 * time.Second
	DefaultSourceTTL        = 15 * time.Second
	DefaultMasterTTL        = 10 * time.Second
	DefaultBatchQueue       = 16
	DefaultLeaderKey        = registrar.LeaderKeyQueryMaster
)

// LeaderHealthService is a grpc.health.v1 service name that is SERVING only
// while this query master holds the leader lock. The overall health ("")
// and quilt.v1.QueryMaster are SERVING on standbys too: a standby is a
// healthy process, it just does not lead. Clients find the leader through
// the leader key, not through health.
const LeaderHealthService = "quilt.v1.QueryMaster/leader"

// Options configure a Master. Zero values take the defaults above.
type Options struct {
	Store store.Store
	// Registrar registers the master and attached source managers and
	// holds the leader lock. Nil: the master leads as soon as Run starts and
	// registers nothing (tests).
	Registrar registrar.Registrar
	// RegistrarKind is "consul" or "embedded", for Status.
	RegistrarKind string
	// Node names this machine; the master's id is quilt-qmd-<Node>.
	Node string
	// Advertise is the host:port others dial to reach this master.
	Advertise   string
	ServiceName string // registrar service name (default quilt-qmd)
	LeaderKey   string
	// SubscriberBuffer bounds the events queued for one Subscribe stream;
	// a subscriber that falls further behind gets the events it missed from
	// the store, and one 64 times further behind is cut off.
	SubscriberBuffer int
	// ActTimeout bounds Act when the request gives no timeout.
	ActTimeout time.Duration
	// SourceTimeout is the default per-source deadline of live queries.
	SourceTimeout time.Duration
	// Heartbeat is sent down idle streams and suggested to source managers.
	Heartbeat time.Duration
	// SourceTTL is the TTL of an attached source manager's registration; it
	// is passed while the stream has been heard from within the TTL.
	SourceTTL time.Duration
	// DeregisterAfter removes registrations left critical this long.
	DeregisterAfter time.Duration
	// BatchQueue bounds event batches received but not yet stored, per
	// stream; beyond it gRPC flow control pushes back on the source manager.
	BatchQueue int
	// KnownSources lists configured source manager names (smd.d) when the
	// master can see the config dir; Act tells "unknown" from "detached"
	// with them. May be nil.
	KnownSources func() []string
	Logger       *slog.Logger
}

func (o *Options) defaults() {
	if o.ServiceName == "" {
		o.ServiceName = registrar.ServiceQueryMaster
	}
	if o.LeaderKey == "" {
		o.LeaderKey = DefaultLeaderKey
	}
	if o.SubscriberBuffer <= 0 {
		o.SubscriberBuffer = DefaultSubscriberBuffer
	}
	if o.ActTimeout <= 0 {
		o.ActTimeout = DefaultActTimeout
	}
	if o.SourceTimeout <= 0 {
		o.SourceTimeout = DefaultSourceTimeout
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.SourceTTL <= 0 {
		o.SourceTTL = DefaultSourceTTL
	}
	if o.BatchQueue <= 0 {
		o.BatchQueue = DefaultBatchQueue
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Master is the query master: the SourceLink and QueryMaster gRPC services
// over one store, a router to the attached source managers, the subscriber
// hub and the leader loop.
//
// Goroutines: Run owns leadership (lock, step down). Each Attach stream has
// a reader (the gRPC handler's own goroutine plus one Recv loop), one writer
// (the only caller of Send on that stream), one storer (stores batches in
// order and sends their acks) and one keeper (heartbeats and registrar TTL).
// The hub is called from the storers and never blocks on a subscriber.
type Master struct {
	quiltv1.UnimplementedQueryMasterServer
	quiltv1.UnimplementedSourceLinkServer

	opts    Options
	id      string
	log     *slog.Logger
	started time.Time
	router  *Router
	hub     *hub
	health  *health.Server
	// caughtUp counts events sent to slow subscribers from the store.
	caughtUp atomic.Uint64

	mu sync.Mutex
	// epoch is live while this master leads; its cancellation (with the
	// cause errNotLeader) ends every stream that needs a leader.
	epoch       context.Context
	cancelEpoch context.CancelCauseFunc
}

// New checks o and builds a Master. It does nothing on the network until
// Run.
func New(o Options) (*Master, error) {
	if o.Store == nil {
		return nil, errors.New("querymaster: Options.Store is nil")
	}
	if o.Node == "" {
		return nil, errors.New("querymaster: Options.Node is empty")
	}
	o.defaults()
	m := &Master{
		opts:    o,
		id:      registrar.QueryMasterID(o.Node),
		started: time.Now(),
		health:  health.NewServer(),
	}
	m.log = o.Logger.With("component", "querymaster", "master_id", m.id)
	m.hub = newHub(o.SubscriberBuffer, m.log)
	m.router = newRouter(m)
	m.health.SetServingStatus(LeaderHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	return m, nil
}

// ID is quilt-qmd-<node>, the master's registrar id and lock holder id.
func (m *Master) ID() string { return m.id }

// Router is the master's view of attached source managers; the query layer
// sends live queries through it.
func (m *Master) Router() *Router { return m.router }

// Health is the grpc.health.v1 server Register mounts.
func (m *Master) Health() *health.Server { return m.health }

// Register mounts QueryMaster, SourceLink and grpc.health.v1 on s.
func (m *Master) Register(s grpc.ServiceRegistrar) {
	quiltv1.RegisterQueryMasterServer(s, m)
	quiltv1.RegisterSourceLinkServer(s, m)
	healthpb.RegisterHealthServer(s, m.health)
}

// errNotLeader is the cause epochs are cancelled with; streams turn it into
// FAILED_PRECONDITION.
var errNotLeader = errors.New("not leader")

// IsLeader tells whether the master currently leads.
func (m *Master) IsLeader() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.epoch != nil
}

// Lead makes the master act as leader without a lock. Run calls it after
// acquiring the lock; tests without a registrar may call it directly.
func (m *Master) Lead() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.epoch != nil {
		return
	}
	m.epoch, m.cancelEpoch = context.WithCancelCause(context.Background())
	m.health.SetServingStatus(LeaderHealthService, healthpb.HealthCheckResponse_SERVING)
	m.log.Info("leading")
}

// StepDown stops acting as leader at once: every Attach and Subscribe
// stream ends with FAILED_PRECONDITION, and new ones are refused until Lead.
func (m *Master) StepDown(why string) {
	m.mu.Lock()
	cancel := m.cancelEpoch
	m.epoch, m.cancelEpoch = nil, nil
	m.mu.Unlock()
	if cancel == nil {
		return
	}
	m.health.SetServingStatus(LeaderHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	m.log.Warn("stepping down", "reason", why)
	cancel(errNotLeader)
}

// leaderEpoch returns the current leadership context, or the
// FAILED_PRECONDITION error naming the leader when this master is a standby.
func (m *Master) leaderEpoch(ctx context.Context) (context.Context, error) {
	m.mu.Lock()
	epoch := m.epoch
	m.mu.Unlock()
	if epoch != nil {
		return epoch, nil
	}
	return nil, m.notLeaderError(ctx)
}

// notLeaderError names the leader so clients re-resolve instead of retrying
// here.
func (m *Master) notLeaderError(ctx context.Context) error {
	if reg := m.opts.Registrar; reg != nil {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		l, err := reg.Leader(lctx, m.opts.LeaderKey)
		if err == nil && l.ID != m.id {
			return status.Errorf(codes.FailedPrecondition,
				"not leader: %s is a standby; the leader is %s at %s (leader key %s)", m.id, l.ID, l.Address, m.opts.LeaderKey)
		}
	}
	return status.Errorf(codes.FailedPrecondition,
		"not leader: %s is not leading and no leader holds %s yet; retry shortly", m.id, m.opts.LeaderKey)
}

// leaderStatus converts a context ended by a step down into the status
// streams return.
func (m *Master) leaderStatus(ctx context.Context) error {
	cause := context.Cause(ctx)
	if errors.Is(cause, errNotLeader) {
		return m.notLeaderError(context.Background())
	}
	if st, ok := status.FromError(cause); ok && cause != nil {
		return st.Err()
	}
	return status.FromContextError(ctx.Err()).Err()
}

// Run registers the master with the registrar, then competes for the
// leader lock until ctx ends: it leads while it holds the lock, steps down
// the moment the lock is lost and goes back to waiting. Without a registrar
// it leads until ctx ends. Run returns nil when ctx ends.
func (m *Master) Run(ctx context.Context) error {
	reg := m.opts.Registrar
	if reg == nil {
		m.Lead()
		<-ctx.Done()
		m.StepDown("shutting down")
		return nil
	}
	self := m.registerSelf(ctx)
	defer func() {
		if self != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := self.Deregister(dctx); err != nil {
				m.log.Warn("deregistering the query master", "err", err)
			}
			cancel()
		}
	}()
	backoff := 250 * time.Millisecond
	for {
		lock, err := reg.Lock(ctx, m.opts.LeaderKey, m.id, m.opts.Advertise)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			m.log.Warn("leader lock", "key", m.opts.LeaderKey, "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 250 * time.Millisecond
		m.Lead()
		select {
		case <-lock.Lost():
			m.StepDown("lost the leader lock " + m.opts.LeaderKey)
		case <-ctx.Done():
			m.StepDown("shutting down")
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := lock.Release(rctx); err != nil {
				m.log.Warn("releasing the leader lock", "key", m.opts.LeaderKey, "err", err)
			}
			cancel()
			return nil
		}
	}
}

// registerSelf retries until the master is in the registrar or ctx ends.
func (m *Master) registerSelf(ctx context.Context) registrar.Registered {
	r := registrar.Registration{
		Name:            m.opts.ServiceName,
		ID:              m.id,
		Address:         m.opts.Advertise,
		Meta:            map[string]string{"version": version.Version, "node": m.opts.Node},
		TTL:             DefaultMasterTTL,
		DeregisterAfter: m.opts.DeregisterAfter,
		GRPCHealth:      m.opts.Advertise,
	}
	backoff := 250 * time.Millisecond
	for {
		h, err := m.opts.Registrar.Register(ctx, r)
		if err == nil {
			m.log.Info("registered", "service", r.Name, "id", r.ID, "addr", r.Address)
			return h
		}
		if ctx.Err() != nil {
			return nil
		}
		m.log.Warn("registering the query master", "service", r.Name, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// Shutdown marks the master NOT_SERVING and steps down, so a following
// grpc GracefulStop is not held up by long-lived streams.
func (m *Master) Shutdown() {
	m.health.Shutdown()
	m.StepDown("shutting down")
}

// Status answers on standbys too: it is how a client learns who leads.
func (m *Master) Status(ctx context.Context, _ *quiltv1.StatusRequest) (*quiltv1.StatusResponse, error) {
	r := &quiltv1.StatusResponse{
		MasterId:        m.id,
		Version:         version.Version,
		Leader:          m.IsLeader(),
		Registrar:       m.opts.RegistrarKind,
		Store:           m.opts.Store.Kind(),
		Started:         tspb(m.started),
		SourcesAttached: int32(m.router.count()),
	}
	if r.Leader {
		r.LeaderAddress = m.opts.Advertise
	} else if reg := m.opts.Registrar; reg != nil {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if l, err := reg.Leader(lctx, m.opts.LeaderKey); err == nil {
			r.LeaderAddress = l.Address
		}
	}
	return r, nil
}

// Subscribers counts open Subscribe streams (tests, status).
func (m *Master) Subscribers() int { return m.hub.count() }

// CaughtUp counts the events subscribers missed live (their queue was
// full) and were sent from the store instead.
func (m *Master) CaughtUp() uint64 { return m.caughtUp.Load() }
