// Package consul is the registrar on a Consul agent
// (github.com/hashicorp/consul/api).
//
// Registrations are agent services with a TTL check registered passing
// (Consul starts TTL checks critical otherwise) and heart-beaten at TTL/3,
// plus DeregisterCriticalServiceAfter so a dead process leaves the catalog
// (Consul enforces at least one minute and reaps every 30 s). Discovery and
// watches are blocking health queries. The leader lock is a session (TTL 10 s,
// Consul's minimum; lock-delay 1 s instead of Consul's 15 s default; behavior
// release) acquiring quilt/<key> with the holder's id and address as the
// value. The acquire loop is hand-rolled rather than api.Lock because
// api.Lock waits a fixed 5 s after a lock-delay refusal, which would make
// failover take 6 s instead of about one. When the holder id is one of this
// registrar's registrations with a grpc.health.v1 check (the query master),
// the session is bound to that check: a holder killed with -9 loses the lock
// within about 2 s (two failed probes 1 s apart), not the 10-20 s Consul
// takes to expire a session nobody renews.
//
// All quilt keys (KV and locks) live under quilt/ in Consul's KV.
package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/quilt/quilt/quiltcore/registrar"
)

// Defaults for Options.
const (
	DefaultSessionTTL     = 10 * time.Second
	DefaultLockDelay      = time.Second
	DefaultConnectTimeout = 5 * time.Second
	// GRPCCheckInterval is how often Consul probes a grpc.health.v1 check.
	// The holder's leader-lock session is bound to that check, so this
	// (times GRPCCheckFailures) bounds how long a killed leader keeps the
	// lock: the session TTL alone would keep it 10-20 s.
	GRPCCheckInterval = time.Second
	// GRPCCheckFailures consecutive failed probes make the check critical,
	// so one slow probe on a loaded host does not cost the leader its lock.
	GRPCCheckFailures = 2
)

// Options configures New.
type Options struct {
	// Address of the agent: host:port, http://host:port or https://host:port.
	Address string
	// Token is the ACL token; TokenFile, when set, is read instead. Neither
	// is logged nor put in errors.
	Token      string
	TokenFile  string
	Datacenter string
	TLS        registrar.TLSOptions
	Logger     *slog.Logger
	// SessionTTL of leader-lock sessions; 0: 10 s (Consul rejects less).
	SessionTTL time.Duration
	// LockDelay: how long Consul refuses a lock after its holder's session
	// died, so the old holder can notice first; 0: 1 s.
	LockDelay time.Duration
	// ConnectTimeout bounds New's check that the agent answers and has a
	// cluster leader; 0: 5 s.
	ConnectTimeout time.Duration
}

// UnreachableError says the agent could not be reached. It wraps
// registrar.ErrUnreachable and the cause.
type UnreachableError struct {
	Addr string
	Err  error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("consul at %s unreachable: %v; set [registrar] address or use `embedded`", e.Addr, e.Err)
}

func (e *UnreachableError) Unwrap() []error { return []error{registrar.ErrUnreachable, e.Err} }

// Registrar is the Consul registrar.
type Registrar struct {
	opts      Options
	client    *api.Client
	transport *http.Transport
	log       *slog.Logger

	ctx    context.Context // ends on Close; parents every background goroutine
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	regs   map[*registered]struct{}
	locks  map[*lock]struct{}
}

var (
	_ registrar.Registrar         = (*Registrar)(nil)
	_ registrar.IndexedDiscoverer = (*Registrar)(nil)
)

// New connects to the agent and checks that it answers and has a cluster
// leader, retrying until ConnectTimeout. Settings come from opts only: the
// CONSUL_HTTP_* environment is ignored so quilt.cfg is the one source.
func New(ctx context.Context, opts Options) (*Registrar, error) {
	if opts.Address == "" || registrar.IsEmbedded(opts.Address) {
		return nil, fmt.Errorf("%w: consul registrar needs an agent address, got %q", registrar.ErrInvalid, opts.Address)
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = DefaultSessionTTL
	}
	if opts.SessionTTL < 10*time.Second {
		return nil, fmt.Errorf("%w: consul session TTL %v is below Consul's minimum of 10s", registrar.ErrInvalid, opts.SessionTTL)
	}
	if opts.LockDelay <= 0 {
		opts.LockDelay = DefaultLockDelay
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	cfg := api.DefaultConfig()
	cfg.Address = opts.Address
	cfg.Scheme = "http"
	if opts.TLS.Enabled() {
		cfg.Scheme = "https"
	}
	cfg.Datacenter = opts.Datacenter
	cfg.Token = opts.Token
	cfg.TokenFile = opts.TokenFile
	cfg.HttpAuth = nil
	cfg.Namespace, cfg.Partition = "", ""
	cfg.TLSConfig = api.TLSConfig{
		Address:            opts.TLS.ServerName,
		CAFile:             opts.TLS.CAFile,
		CertFile:           opts.TLS.CertFile,
		KeyFile:            opts.TLS.KeyFile,
		InsecureSkipVerify: opts.TLS.InsecureSkipVerify,
	}
	transport := cfg.Transport
	client, err := api.NewClient(cfg)
	if err != nil {
		// api errors about the token file name the file, never its contents.
		return nil, fmt.Errorf("consul at %s: %w", opts.Address, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registrar{
		opts:      opts,
		client:    client,
		transport: transport,
		log:       log.With("registrar", "consul", "consul", opts.Address),
		regs:      map[*registered]struct{}{},
		locks:     map[*lock]struct{}{},
	}
	if err := r.ping(ctx); err != nil {
		transport.CloseIdleConnections()
		return nil, err
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// ping waits for the agent to answer with a cluster leader: a daemon started
// together with its agent should not fail because it won the race.
func (r *Registrar) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.ConnectTimeout)
	defer cancel()
	var last error
	for {
		leader, err := r.client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		switch {
		case err == nil && leader != "":
			return nil
		case err == nil:
			last = errors.New("the agent has no cluster leader")
		default:
			if se, ok := errors.AsType[api.StatusError](err); ok && (se.Code == http.StatusForbidden || se.Code == http.StatusUnauthorized) {
				return fmt.Errorf("consul at %s refused the ACL token (HTTP %d)", r.opts.Address, se.Code)
			}
			last = err
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return &UnreachableError{Addr: r.opts.Address, Err: last}
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// wrap turns transport failures into UnreachableError and leaves HTTP-level
// errors (ACL, bad request) as they are, prefixed with what failed.
func (r *Registrar) wrap(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if _, ok := errors.AsType[*url.Error](err); ok {
		return fmt.Errorf("%s: %w", what, &UnreachableError{Addr: r.opts.Address, Err: err})
	}
	if se, ok := errors.AsType[api.StatusError](err); ok && se.Code >= 500 && strings.Contains(se.Body, "No cluster leader") {
		return fmt.Errorf("%s: %w", what, &UnreachableError{Addr: r.opts.Address, Err: err})
	}
	return fmt.Errorf("%s: consul at %s: %w", what, r.opts.Address, err)
}

func isStatus(err error, code int) bool {
	se, ok := errors.AsType[api.StatusError](err)
	return ok && se.Code == code
}

func wopts(ctx context.Context) *api.WriteOptions { return (&api.WriteOptions{}).WithContext(ctx) }
func qopts(ctx context.Context) *api.QueryOptions { return (&api.QueryOptions{}).WithContext(ctx) }

// track adds a background goroutine unless the registrar is closed.
func (r *Registrar) track() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	return true
}

// ---- registration ----

func ttlCheckID(id string) string  { return id + ":ttl" }
func grpcCheckID(id string) string { return id + ":grpc" }

type registered struct {
	r       *Registrar
	reg     registrar.Registration
	svc     *api.AgentServiceRegistration
	cancel  context.CancelFunc // stops the heart-beat
	done    chan struct{}      // closed when the heart-beat ended
	mu      sync.Mutex
	removed bool
}

func (h *registered) ID() string { return h.reg.ID }

// Register implements registrar.Registrar. It returns once the instance is
// visible in the catalog (or after 2 s), so a Discover right after it sees it.
func (r *Registrar) Register(ctx context.Context, reg registrar.Registration) (registrar.Registered, error) {
	if err := registrar.CheckRegistration(reg); err != nil {
		return nil, err
	}
	if reg.TTL == 0 {
		reg.TTL = registrar.DefaultTTL
	}
	if reg.DeregisterAfter == 0 {
		reg.DeregisterAfter = registrar.DefaultDeregisterAfter
	}
	host, port, err := splitAddress(reg.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: registration %q: %v", registrar.ErrInvalid, reg.ID, err)
	}
	svc := &api.AgentServiceRegistration{
		ID: reg.ID, Name: reg.Name, Address: host, Port: port, Tags: reg.Tags, Meta: reg.Meta,
		Checks: api.AgentServiceChecks{{
			CheckID:                        ttlCheckID(reg.ID),
			Name:                           "quilt heart-beat",
			TTL:                            reg.TTL.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: reg.DeregisterAfter.String(),
		}},
	}
	if reg.GRPCHealth != "" {
		svc.Checks = append(svc.Checks, &api.AgentServiceCheck{
			CheckID:                        grpcCheckID(reg.ID),
			Name:                           "grpc.health.v1",
			GRPC:                           reg.GRPCHealth,
			Interval:                       GRPCCheckInterval.String(),
			Timeout:                        GRPCCheckInterval.String(),
			FailuresBeforeCritical:         GRPCCheckFailures,
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: reg.DeregisterAfter.String(),
		})
	}
	if err := r.client.Agent().ServiceRegisterOpts(svc, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
		return nil, r.wrap(ctx, "register "+reg.ID, err)
	}
	h := &registered{r: r, reg: reg, svc: svc, done: make(chan struct{})}
	var hctx context.Context
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		close(h.done)
		h.Deregister(ctx)
		return nil, registrar.ErrClosed
	}
	hctx, h.cancel = context.WithCancel(r.ctx)
	r.regs[h] = struct{}{}
	if reg.ManualHeartbeat {
		close(h.done)
	} else {
		r.wg.Add(1)
		go h.heartbeat(hctx)
	}
	r.mu.Unlock()
	r.log.Debug("registered", "service", reg.Name, "id", reg.ID, "address", reg.Address, "ttl", reg.TTL)
	r.awaitVisible(ctx, reg.Name, reg.ID)
	return h, nil
}

// awaitVisible waits briefly for the agent's anti-entropy sync to put id in
// the catalog.
func (r *Registrar) awaitVisible(ctx context.Context, service, id string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var index uint64
	for ctx.Err() == nil {
		list, next, err := r.DiscoverIndex(ctx, service, false, index, time.Second)
		if err != nil {
			return
		}
		for _, in := range list {
			if in.ID == id {
				return
			}
		}
		index = next
	}
}

// splitAddress accepts host:port, or a bare host (port 0, which Discover
// turns back into the bare host): a source manager listens nowhere and is
// registered with its node name only.
func splitAddress(addr string) (string, int, error) {
	if addr == "" {
		return "", 0, nil
	}
	if !strings.Contains(addr, ":") {
		return addr, 0, nil
	}
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q is not host:port: %v", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("address %q has a bad port", addr)
	}
	return host, port, nil
}

// heartbeat passes the TTL check every TTL/3. If the agent forgot the check
// (it restarted without its state), it registers the instance again.
func (h *registered) heartbeat(ctx context.Context) {
	r := h.r
	defer r.wg.Done()
	defer close(h.done)
	t := time.NewTicker(h.reg.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := r.client.Agent().UpdateTTLOpts(ttlCheckID(h.reg.ID), "", api.HealthPassing, qopts(ctx))
		if err == nil || ctx.Err() != nil {
			continue
		}
		if isStatus(err, http.StatusNotFound) || strings.Contains(err.Error(), "Unknown check") || strings.Contains(err.Error(), "does not have associated TTL") {
			r.log.Warn("agent lost the registration; registering again", "id", h.reg.ID)
			err = r.client.Agent().ServiceRegisterOpts(h.svc, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn("heart-beat failed", "id", h.reg.ID, "err", r.wrap(ctx, "heart-beat", err))
		}
	}
}

func (h *registered) Pass(ctx context.Context) error {
	err := h.r.client.Agent().UpdateTTLOpts(ttlCheckID(h.reg.ID), "", api.HealthPassing, qopts(ctx))
	if err != nil && (isStatus(err, http.StatusNotFound) || strings.Contains(err.Error(), "Unknown check")) {
		return fmt.Errorf("%w: instance %q is no longer registered", registrar.ErrNotFound, h.reg.ID)
	}
	return h.r.wrap(ctx, "pass "+h.reg.ID, err)
}

func (h *registered) Deregister(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.removed {
		return nil
	}
	if h.cancel != nil {
		h.cancel()
	}
	<-h.done
	err := h.r.client.Agent().ServiceDeregisterOpts(h.reg.ID, qopts(ctx))
	if err != nil && !isStatus(err, http.StatusNotFound) {
		return h.r.wrap(ctx, "deregister "+h.reg.ID, err)
	}
	h.removed = true
	h.r.mu.Lock()
	delete(h.r.regs, h)
	h.r.mu.Unlock()
	h.r.log.Debug("deregistered", "id", h.reg.ID)
	return nil
}

// ---- discovery ----

// Discover implements registrar.Registrar.
func (r *Registrar) Discover(ctx context.Context, service string, passingOnly bool) ([]registrar.Instance, error) {
	list, _, err := r.DiscoverIndex(ctx, service, passingOnly, 0, 0)
	return list, err
}

// DiscoverIndex implements registrar.IndexedDiscoverer with a blocking
// health query.
func (r *Registrar) DiscoverIndex(ctx context.Context, service string, passingOnly bool, waitIndex uint64, wait time.Duration) ([]registrar.Instance, uint64, error) {
	if r.isClosed() {
		return nil, 0, registrar.ErrClosed
	}
	q := &api.QueryOptions{WaitIndex: waitIndex, WaitTime: wait}
	entries, meta, err := r.client.Health().Service(service, "", passingOnly, q.WithContext(ctx))
	if err != nil {
		return nil, 0, r.wrap(ctx, "discover "+service, err)
	}
	list := make([]registrar.Instance, 0, len(entries))
	for _, e := range entries {
		host := e.Service.Address
		if host == "" {
			host = e.Node.Address
		}
		addr := host
		if e.Service.Port != 0 {
			addr = net.JoinHostPort(host, strconv.Itoa(e.Service.Port))
		}
		health := e.Checks.AggregatedStatus()
		if health == api.HealthMaint {
			health = registrar.HealthCritical
		}
		list = append(list, registrar.Instance{
			Name: e.Service.Service, ID: e.Service.ID, Address: addr,
			Tags: e.Service.Tags, Meta: e.Service.Meta, Health: health,
		})
	}
	registrar.SortInstances(list)
	return list, meta.LastIndex, nil
}

// Watch implements registrar.Registrar with blocking queries; it also ends
// on Close.
func (r *Registrar) Watch(ctx context.Context, service string, passingOnly bool) <-chan []registrar.Instance {
	if !r.track() {
		ch := make(chan []registrar.Instance)
		close(ch)
		return ch
	}
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.ctx, cancel)
	fetch := func(ctx context.Context, waitIndex uint64) ([]registrar.Instance, uint64, error) {
		return r.DiscoverIndex(ctx, service, passingOnly, waitIndex, registrar.WatchWait)
	}
	return registrar.WatchLoop(wctx, r.log, service, fetch, func() {
		stop()
		cancel()
		r.wg.Done()
	})
}

func (r *Registrar) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// ---- KV ----

// KVGet implements registrar.Registrar (key under quilt/).
func (r *Registrar) KVGet(ctx context.Context, key string) ([]byte, error) {
	if err := registrar.CheckKey(key); err != nil {
		return nil, err
	}
	if r.isClosed() {
		return nil, registrar.ErrClosed
	}
	pair, _, err := r.client.KV().Get(registrar.KeyPrefix+key, qopts(ctx))
	if err != nil {
		return nil, r.wrap(ctx, "get "+key, err)
	}
	if pair == nil {
		return nil, fmt.Errorf("%w: key %q", registrar.ErrNotFound, key)
	}
	if pair.Value == nil {
		return []byte{}, nil
	}
	return pair.Value, nil
}

// KVPut implements registrar.Registrar (key under quilt/).
func (r *Registrar) KVPut(ctx context.Context, key string, value []byte) error {
	if err := registrar.CheckKey(key); err != nil {
		return err
	}
	if r.isClosed() {
		return registrar.ErrClosed
	}
	_, err := r.client.KV().Put(&api.KVPair{Key: registrar.KeyPrefix + key, Value: value}, wopts(ctx))
	return r.wrap(ctx, "put "+key, err)
}

// ---- leader lock ----

// leaderValue is stored at a held lock key.
type leaderValue struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

// Leader implements registrar.Registrar.
func (r *Registrar) Leader(ctx context.Context, key string) (registrar.Leader, error) {
	if err := registrar.CheckKey(key); err != nil {
		return registrar.Leader{}, err
	}
	if r.isClosed() {
		return registrar.Leader{}, registrar.ErrClosed
	}
	pair, _, err := r.client.KV().Get(registrar.KeyPrefix+key, qopts(ctx))
	if err != nil {
		return registrar.Leader{}, r.wrap(ctx, "leader "+key, err)
	}
	if pair == nil || pair.Session == "" {
		return registrar.Leader{}, fmt.Errorf("%w: no leader for %q", registrar.ErrNotFound, key)
	}
	var v leaderValue
	if err := json.Unmarshal(pair.Value, &v); err != nil {
		return registrar.Leader{}, fmt.Errorf("leader %q: value at %s%s is not a quilt leader record: %w", key, registrar.KeyPrefix, key, err)
	}
	return registrar.Leader{ID: v.ID, Address: v.Address}, nil
}

// KillLock destroys the session holding key, as if its holder had died: the
// holder's Lost closes and a waiting contender takes over after the
// lock-delay. Tests use it; operators can use it to force a failover.
func (r *Registrar) KillLock(ctx context.Context, key string) error {
	if err := registrar.CheckKey(key); err != nil {
		return err
	}
	pair, _, err := r.client.KV().Get(registrar.KeyPrefix+key, qopts(ctx))
	if err != nil {
		return r.wrap(ctx, "kill lock "+key, err)
	}
	if pair == nil || pair.Session == "" {
		return fmt.Errorf("%w: no holder of lock %q", registrar.ErrNotFound, key)
	}
	_, err = r.client.Session().Destroy(pair.Session, wopts(ctx))
	return r.wrap(ctx, "kill lock "+key, err)
}

type lock struct {
	r       *Registrar
	key     string // full Consul key, quilt/...
	holder  string
	session string
	value   []byte

	ctx    context.Context // ends when the lock is lost, released or closed
	cancel context.CancelFunc

	lost     chan struct{}
	lostOnce sync.Once
	mu       sync.Mutex
	cause    error // why it was lost
}

func (l *lock) Lost() <-chan struct{} { return l.lost }

// lose records why, closes Lost and stops the lock's goroutines.
func (l *lock) lose(why error) {
	l.lostOnce.Do(func() {
		l.mu.Lock()
		l.cause = why
		l.mu.Unlock()
		close(l.lost)
		l.cancel()
		l.r.mu.Lock()
		delete(l.r.locks, l)
		l.r.mu.Unlock()
		l.r.log.Info("leader lock lost", "key", l.key, "holder", l.holder, "why", why)
	})
}

// Release implements registrar.Lock: it closes Lost, then releases the key
// and destroys the session so a standby need not wait for the lock-delay.
func (l *lock) Release(ctx context.Context) error {
	l.lose(errors.New("released"))
	return l.destroy(ctx)
}

func (l *lock) destroy(ctx context.Context) error {
	kv := l.r.client.KV()
	if _, _, err := kv.Release(&api.KVPair{Key: l.key, Session: l.session}, wopts(ctx)); err != nil {
		l.r.log.Debug("release failed", "key", l.key, "err", err)
	}
	_, err := l.r.client.Session().Destroy(l.session, wopts(ctx))
	if err != nil && !isStatus(err, http.StatusNotFound) {
		return l.r.wrap(ctx, "release "+l.key, err)
	}
	return nil
}

// Lock implements registrar.Registrar. The session is renewed from the start,
// since waiting for a lock can outlast the session TTL. Lost closes when the
// key no longer names this session (session invalidated, key released) or
// when renewals fail for SessionTTL/2, before Consul could give the lock to
// someone else.
func (r *Registrar) Lock(ctx context.Context, key, holderID, address string) (registrar.Lock, error) {
	if err := registrar.CheckKey(key); err != nil {
		return nil, err
	}
	if holderID == "" {
		return nil, fmt.Errorf("%w: lock %q without a holder id", registrar.ErrInvalid, key)
	}
	value, _ := json.Marshal(leaderValue{ID: holderID, Address: address})
	entry := &api.SessionEntry{
		Name:      "quilt lock " + key + " for " + holderID,
		TTL:       r.opts.SessionTTL.String(),
		LockDelay: r.opts.LockDelay,
		Behavior:  api.SessionBehaviorRelease,
	}
	if check := r.holderCheck(holderID); check != "" {
		// A holder killed with -9 stops renewing, but Consul only expires
		// a session after up to twice its TTL (10 s minimum): 20 s without
		// a leader. Bound to the holder's gRPC health check, the session
		// is invalidated as soon as the agent finds the holder gone.
		entry.NodeChecks = []string{"serfHealth"}
		entry.ServiceChecks = []api.ServiceCheck{{ID: check}}
	}
	sid, _, err := r.client.Session().Create(entry, wopts(ctx))
	if err != nil {
		return nil, r.wrap(ctx, "lock "+key+": create session", err)
	}
	l := &lock{r: r, key: registrar.KeyPrefix + key, holder: holderID, session: sid, value: value, lost: make(chan struct{})}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.client.Session().Destroy(sid, wopts(ctx))
		return nil, registrar.ErrClosed
	}
	l.ctx, l.cancel = context.WithCancel(r.ctx)
	r.locks[l] = struct{}{}
	r.wg.Add(1)
	r.mu.Unlock()
	go l.renew()

	err = l.acquire(ctx)
	if err == nil {
		if r.track() {
			go l.monitor()
		} else {
			l.lose(registrar.ErrClosed)
		}
		r.log.Info("leader lock acquired", "key", l.key, "holder", holderID)
		return l, nil
	}
	// Gave up: drop the session so it does not linger until its TTL.
	l.lose(err)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	l.destroy(dctx)
	return nil, err
}

// acquire loops until the key is ours, ctx ends or the session dies.
func (l *lock) acquire(ctx context.Context) error {
	r := l.r
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(l.ctx, cancel)()
	backoff := 100 * time.Millisecond
	sleep := func(d time.Duration) bool {
		select {
		case <-wctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	giveUp := func() error {
		if ctx.Err() != nil {
			return fmt.Errorf("lock %q: %w: %w", l.key, registrar.ErrLockHeld, ctx.Err())
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if r.isClosed() {
			return registrar.ErrClosed
		}
		return fmt.Errorf("lock %q: session lost while waiting: %w", l.key, l.cause)
	}
	for {
		ok, _, err := r.client.KV().Acquire(&api.KVPair{Key: l.key, Value: l.value, Session: l.session}, wopts(wctx))
		if wctx.Err() != nil {
			return giveUp()
		}
		if ok {
			return nil
		}
		if err != nil {
			r.log.Warn("lock acquire failed; retrying", "key", l.key, "err", r.wrap(wctx, "acquire", err))
			if !sleep(backoff) {
				return giveUp()
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		// Someone holds it, or the lock-delay of a dead holder runs: block
		// on the key until it is free.
		var index uint64
		for {
			q := &api.QueryOptions{WaitIndex: index, WaitTime: registrar.WatchWait}
			pair, meta, err := r.client.KV().Get(l.key, q.WithContext(wctx))
			if wctx.Err() != nil {
				return giveUp()
			}
			if err != nil {
				if !sleep(backoff) {
					return giveUp()
				}
				backoff = min(2*backoff, 5*time.Second)
				index = 0
				continue
			}
			if pair == nil || pair.Session == "" {
				if index == 0 {
					// Free right after a refused acquire: the lock-delay.
					if !sleep(min(l.r.opts.LockDelay/4, 250*time.Millisecond)) {
						return giveUp()
					}
				}
				break
			}
			if meta.LastIndex < index || meta.LastIndex == 0 {
				index = 0
			} else {
				index = meta.LastIndex
			}
		}
	}
}

// holderCheck is the gRPC health check of this registrar's live
// registration with id holderID (the query master locks under its own
// service id), or "".
func (r *Registrar) holderCheck(holderID string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for h := range r.regs {
		if h.reg.ID == holderID && h.reg.GRPCHealth != "" {
			return grpcCheckID(holderID)
		}
	}
	return ""
}

// renew keeps the session alive at SessionTTL/3 (1 s after a failure).
func (l *lock) renew() {
	r := l.r
	defer r.wg.Done()
	ttl := r.opts.SessionTTL
	interval := ttl / 3
	lastOK := time.Now()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-time.After(interval):
		}
		entry, _, err := r.client.Session().Renew(l.session, wopts(l.ctx))
		if l.ctx.Err() != nil {
			return
		}
		if err == nil && entry == nil {
			l.lose(fmt.Errorf("session %s invalidated", l.session))
			return
		}
		if err != nil {
			if time.Since(lastOK) >= ttl/2 {
				l.lose(fmt.Errorf("session not renewed for %v: %w", time.Since(lastOK).Round(time.Millisecond), r.wrap(l.ctx, "renew", err)))
				return
			}
			interval = time.Second
			continue
		}
		lastOK, interval = time.Now(), ttl/3
	}
}

// monitor blocks on the key and declares the lock lost the moment the key
// stops naming this session.
func (l *lock) monitor() {
	r := l.r
	defer r.wg.Done()
	var index uint64
	backoff := 100 * time.Millisecond
	for {
		q := &api.QueryOptions{WaitIndex: index, WaitTime: registrar.WatchWait}
		pair, meta, err := r.client.KV().Get(l.key, q.WithContext(l.ctx))
		if l.ctx.Err() != nil {
			return
		}
		if err != nil {
			// Unreachable: the renew loop decides when that means lost.
			select {
			case <-l.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			index = 0
			continue
		}
		backoff = 100 * time.Millisecond
		if pair == nil || pair.Session != l.session {
			l.lose(errors.New("the key no longer names our session (session invalidated or key released)"))
			return
		}
		if meta.LastIndex < index || meta.LastIndex == 0 {
			index = 0
		} else {
			index = meta.LastIndex
		}
	}
}

// ---- lifecycle ----

// Close releases held locks (so a standby takes over without waiting for the
// session TTL), deregisters the instances it registered, stops heart-beats
// and watches, and closes idle connections. Best effort, 5 s at most.
func (r *Registrar) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	locks := make([]*lock, 0, len(r.locks))
	for l := range r.locks {
		locks = append(locks, l)
	}
	regs := make([]*registered, 0, len(r.regs))
	for h := range r.regs {
		regs = append(regs, h)
	}
	r.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, l := range locks {
		if err := l.Release(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, h := range regs {
		if err := h.Deregister(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	r.cancel()
	r.wg.Wait()
	r.transport.CloseIdleConnections()
	return errors.Join(errs...)
}
