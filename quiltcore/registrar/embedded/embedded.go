// Package embedded is the in-process, single-node registrar: the default when
// no Consul address is configured ([registrar] address = embedded). It lives
// inside quilt-qmd; other processes on the machine reach it through the query
// master's Registrar gRPC service (registrar/remote).
//
// Semantics match registrar/consul for everything one node needs:
//   - ManualHeartbeat registrations turn critical when their TTL passes
//     without Pass, and are removed after DeregisterAfter critical.
//     Registrations heart-beaten by the registrar never expire: the
//     registering code runs in the same process as the registrar, so a
//     heart-beat could only fail together with the registrar itself.
//   - GRPCHealth is ignored (no network checks in-process).
//   - Blocking queries wake on change through a broadcast channel, not polling.
//   - The leader lock grants waiters in arrival order; KillLock invalidates a
//     holder as a lost Consul session would.
//   - The KV is kept in memory and, with Options.DataDir, in
//     DataDir/registrar-kv.json, so cluster settings survive restarts.
package embedded

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/quilt/quilt/quiltcore/registrar"
)

// KVFile is the name of the persisted KV inside Options.DataDir.
const KVFile = "registrar-kv.json"

// Options configures New.
type Options struct {
	// DataDir, when set, persists the KV in DataDir/registrar-kv.json.
	DataDir string
	Logger  *slog.Logger
	// Clock drives TTLs; nil means real time.
	Clock Clock
}

// Registrar is the embedded registrar. The zero value is not usable; call New.
type Registrar struct {
	log    *slog.Logger
	clock  Clock
	kvPath string

	ctx    context.Context // ends on Close; parents every watch
	cancel context.CancelFunc
	wg     sync.WaitGroup // watch goroutines

	mu       sync.Mutex
	closed   bool
	index    uint64        // raft-like global index, bumped on every change
	changed  chan struct{} // closed and replaced on every change
	services map[string]*service
	byID     map[string]*instance
	locks    map[string]*lockState
	kv       map[string][]byte
}

type service struct {
	index     uint64 // global index of this service's last change
	instances map[string]*instance
}

type instance struct {
	registrar.Instance
	reg registrar.Registration
	// seq identifies the armed TTL/deregister timers; a timer whose seq is
	// stale fired after Pass or Deregister raced with it and is ignored.
	seq        uint64
	ttlTimer   Timer
	deregTimer Timer
}

type lockState struct {
	holder  *lock
	waiters []*lock // FIFO: granted in arrival order
}

var (
	_ registrar.Registrar         = (*Registrar)(nil)
	_ registrar.IndexedDiscoverer = (*Registrar)(nil)
)

// New opens an embedded registrar, loading the persisted KV when
// opts.DataDir holds one.
func New(opts Options) (*Registrar, error) {
	r := &Registrar{
		log:      opts.Logger,
		clock:    opts.Clock,
		index:    1,
		changed:  make(chan struct{}),
		services: map[string]*service{},
		byID:     map[string]*instance{},
		locks:    map[string]*lockState{},
		kv:       map[string][]byte{},
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = r.log.With("registrar", "embedded")
	if r.clock == nil {
		r.clock = realClock{}
	}
	if opts.DataDir != "" {
		r.kvPath = filepath.Join(opts.DataDir, KVFile)
		if err := r.loadKV(); err != nil {
			return nil, err
		}
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// bump records a change of svc (nil: no service, e.g. a lock) and wakes every
// blocked query. Callers hold mu.
func (r *Registrar) bump(svc *service) {
	r.index++
	if svc != nil {
		svc.index = r.index
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// service returns the state of name, creating it so that even an unknown
// service has a non-zero index to block on. Callers hold mu.
func (r *Registrar) service(name string) *service {
	svc := r.services[name]
	if svc == nil {
		svc = &service{index: r.index, instances: map[string]*instance{}}
		r.services[name] = svc
	}
	return svc
}

// Register implements registrar.Registrar. Registering an id again replaces
// the earlier registration, as Consul does.
func (r *Registrar) Register(ctx context.Context, reg registrar.Registration) (registrar.Registered, error) {
	if err := registrar.CheckRegistration(reg); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if reg.TTL == 0 {
		reg.TTL = registrar.DefaultTTL
	}
	if reg.DeregisterAfter == 0 {
		reg.DeregisterAfter = registrar.DefaultDeregisterAfter
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registrar.ErrClosed
	}
	if old := r.byID[reg.ID]; old != nil {
		r.remove(old)
	}
	in := &instance{
		Instance: registrar.Instance{
			Name:    reg.Name,
			ID:      reg.ID,
			Address: reg.Address,
			Tags:    slices.Clone(reg.Tags),
			Meta:    maps.Clone(reg.Meta),
			Health:  registrar.HealthPassing,
		},
		reg: reg,
	}
	svc := r.service(reg.Name)
	svc.instances[reg.ID] = in
	r.byID[reg.ID] = in
	r.armTTL(in)
	r.bump(svc)
	r.log.Debug("registered", "service", reg.Name, "id", reg.ID, "address", reg.Address)
	return &registered{r: r, in: in}, nil
}

// armTTL (re)starts the TTL timer of a manually heart-beaten instance.
// Callers hold mu.
func (r *Registrar) armTTL(in *instance) {
	r.stopTimers(in)
	in.seq++
	if !in.reg.ManualHeartbeat {
		return
	}
	seq := in.seq
	in.ttlTimer = r.clock.AfterFunc(in.reg.TTL, func() { r.expire(in, seq) })
}

func (r *Registrar) stopTimers(in *instance) {
	if in.ttlTimer != nil {
		in.ttlTimer.Stop()
		in.ttlTimer = nil
	}
	if in.deregTimer != nil {
		in.deregTimer.Stop()
		in.deregTimer = nil
	}
}

// expire marks an instance critical when its TTL passed without Pass and
// schedules its removal.
func (r *Registrar) expire(in *instance, seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || in.seq != seq || r.byID[in.ID] != in {
		return
	}
	in.Health = registrar.HealthCritical
	in.ttlTimer = nil
	r.bump(r.services[in.Name])
	r.log.Info("TTL expired; instance critical", "service", in.Name, "id", in.ID, "ttl", in.reg.TTL)
	in.deregTimer = r.clock.AfterFunc(in.reg.DeregisterAfter, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.closed || in.seq != seq || r.byID[in.ID] != in {
			return
		}
		r.log.Info("critical too long; deregistered", "service", in.Name, "id", in.ID, "after", in.reg.DeregisterAfter)
		r.remove(in)
	})
}

// remove drops an instance. Callers hold mu.
func (r *Registrar) remove(in *instance) {
	r.stopTimers(in)
	in.seq++
	delete(r.byID, in.ID)
	svc := r.services[in.Name]
	delete(svc.instances, in.ID)
	r.bump(svc)
}

type registered struct {
	r  *Registrar
	in *instance
}

func (h *registered) ID() string { return h.in.ID }

func (h *registered) Pass(ctx context.Context) error {
	r := h.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return registrar.ErrClosed
	}
	if r.byID[h.in.ID] != h.in {
		return fmt.Errorf("%w: instance %q is no longer registered", registrar.ErrNotFound, h.in.ID)
	}
	r.armTTL(h.in)
	if h.in.Health != registrar.HealthPassing {
		h.in.Health = registrar.HealthPassing
		r.bump(r.services[h.in.Name])
	}
	return nil
}

func (h *registered) Deregister(ctx context.Context) error {
	r := h.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID[h.in.ID] == h.in {
		r.remove(h.in)
		r.log.Debug("deregistered", "service", h.in.Name, "id", h.in.ID)
	}
	return nil
}

// Discover implements registrar.Registrar.
func (r *Registrar) Discover(ctx context.Context, service string, passingOnly bool) ([]registrar.Instance, error) {
	list, _, err := r.DiscoverIndex(ctx, service, passingOnly, 0, 0)
	return list, err
}

// DiscoverIndex implements registrar.IndexedDiscoverer: it blocks while the
// service's index equals waitIndex, up to wait (0: no limit but ctx).
func (r *Registrar) DiscoverIndex(ctx context.Context, name string, passingOnly bool, waitIndex uint64, wait time.Duration) ([]registrar.Instance, uint64, error) {
	var timeout <-chan time.Time
	if waitIndex != 0 && wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	r.mu.Lock()
	for {
		if r.closed {
			r.mu.Unlock()
			return nil, 0, registrar.ErrClosed
		}
		svc := r.service(name)
		if waitIndex == 0 || svc.index != waitIndex {
			break
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-timeout:
			waitIndex = 0 // answer with whatever is current
		}
		r.mu.Lock()
	}
	defer r.mu.Unlock()
	svc := r.services[name]
	list := make([]registrar.Instance, 0, len(svc.instances))
	for _, in := range svc.instances {
		if passingOnly && in.Health != registrar.HealthPassing {
			continue
		}
		c := in.Instance
		c.Tags = slices.Clone(c.Tags)
		c.Meta = maps.Clone(c.Meta)
		list = append(list, c)
	}
	registrar.SortInstances(list)
	return list, svc.index, nil
}

// Watch implements registrar.Registrar. The channel also closes on Close.
func (r *Registrar) Watch(ctx context.Context, service string, passingOnly bool) <-chan []registrar.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		ch := make(chan []registrar.Instance)
		close(ch)
		return ch
	}
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.ctx, cancel)
	r.wg.Add(1)
	fetch := func(ctx context.Context, waitIndex uint64) ([]registrar.Instance, uint64, error) {
		return r.DiscoverIndex(ctx, service, passingOnly, waitIndex, registrar.WatchWait)
	}
	return registrar.WatchLoop(wctx, r.log, service, fetch, func() {
		stop()
		cancel()
		r.wg.Done()
	})
}

type lock struct {
	r                *Registrar
	key, holder, adr string
	granted          chan struct{} // closed when the lock is ours
	lost             chan struct{} // closed when it no longer is
	lostOnce         sync.Once
}

func (l *lock) Lost() <-chan struct{} { return l.lost }

func (l *lock) Release(ctx context.Context) error {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	l.r.release(l, "released")
	return nil
}

// release takes l off key (holder or waiter), hands the key to the next
// waiter and closes l's Lost. Callers hold mu.
func (r *Registrar) release(l *lock, why string) {
	ls := r.locks[l.key]
	if ls != nil {
		if ls.holder == l {
			ls.holder = nil
			r.log.Info("leader lock lost", "key", l.key, "holder", l.holder, "why", why)
			if len(ls.waiters) > 0 {
				next := ls.waiters[0]
				ls.waiters = ls.waiters[1:]
				ls.holder = next
				close(next.granted)
				r.log.Info("leader lock acquired", "key", l.key, "holder", next.holder)
			}
			r.bump(nil)
		} else {
			ls.waiters = slices.DeleteFunc(ls.waiters, func(w *lock) bool { return w == l })
		}
	}
	l.lostOnce.Do(func() { close(l.lost) })
}

// Lock implements registrar.Registrar; waiters are served in arrival order.
func (r *Registrar) Lock(ctx context.Context, key, holderID, address string) (registrar.Lock, error) {
	if err := registrar.CheckKey(key); err != nil {
		return nil, err
	}
	if holderID == "" {
		return nil, fmt.Errorf("%w: lock %q without a holder id", registrar.ErrInvalid, key)
	}
	l := &lock{r: r, key: key, holder: holderID, adr: address, granted: make(chan struct{}), lost: make(chan struct{})}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, registrar.ErrClosed
	}
	ls := r.locks[key]
	if ls == nil {
		ls = &lockState{}
		r.locks[key] = ls
	}
	if ls.holder == nil {
		ls.holder = l
		close(l.granted)
		r.bump(nil)
		r.mu.Unlock()
		r.log.Info("leader lock acquired", "key", key, "holder", holderID)
		return l, nil
	}
	ls.waiters = append(ls.waiters, l)
	r.mu.Unlock()

	select {
	case <-l.granted:
		return l, nil
	case <-ctx.Done():
	case <-r.ctx.Done():
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-l.granted:
		// Granted while we were giving up: keep it rather than drop a lock
		// another contender could have had.
		if ctx.Err() == nil && !r.closed {
			return l, nil
		}
	default:
	}
	r.release(l, "gave up")
	if r.closed {
		return nil, registrar.ErrClosed
	}
	return nil, fmt.Errorf("lock %q: %w: %w", key, registrar.ErrLockHeld, ctx.Err())
}

// KillLock invalidates the current holder of key as if its session died: its
// Lost closes and the next waiter gets the lock. Tests use it; an operator
// would too, to force a failover.
func (r *Registrar) KillLock(key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls := r.locks[key]
	if ls == nil || ls.holder == nil {
		return fmt.Errorf("%w: no holder of lock %q", registrar.ErrNotFound, key)
	}
	r.release(ls.holder, "session invalidated")
	return nil
}

// Leader implements registrar.Registrar.
func (r *Registrar) Leader(ctx context.Context, key string) (registrar.Leader, error) {
	if err := registrar.CheckKey(key); err != nil {
		return registrar.Leader{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return registrar.Leader{}, registrar.ErrClosed
	}
	ls := r.locks[key]
	if ls == nil || ls.holder == nil {
		return registrar.Leader{}, fmt.Errorf("%w: no leader for %q", registrar.ErrNotFound, key)
	}
	return registrar.Leader{ID: ls.holder.holder, Address: ls.holder.adr}, nil
}

// KVGet implements registrar.Registrar.
func (r *Registrar) KVGet(ctx context.Context, key string) ([]byte, error) {
	if err := registrar.CheckKey(key); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registrar.ErrClosed
	}
	v, ok := r.kv[key]
	if !ok {
		return nil, fmt.Errorf("%w: key %q", registrar.ErrNotFound, key)
	}
	return slices.Clone(v), nil
}

// KVPut implements registrar.Registrar; with a DataDir the whole KV is
// rewritten atomically before KVPut returns.
func (r *Registrar) KVPut(ctx context.Context, key string, value []byte) error {
	if err := registrar.CheckKey(key); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return registrar.ErrClosed
	}
	old, had := r.kv[key]
	r.kv[key] = slices.Clone(value)
	if err := r.saveKV(); err != nil {
		if had {
			r.kv[key] = old
		} else {
			delete(r.kv, key)
		}
		return err
	}
	return nil
}

func (r *Registrar) loadKV() error {
	b, err := os.ReadFile(r.kvPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("embedded registrar: read KV: %w", err)
	}
	if err := json.Unmarshal(b, &r.kv); err != nil {
		return fmt.Errorf("embedded registrar: %s is not a KV file: %w", r.kvPath, err)
	}
	if r.kv == nil {
		r.kv = map[string][]byte{}
	}
	return nil
}

// saveKV writes the KV to a temporary file and renames it over the old one,
// so a crash leaves either the old or the new settings, never half of them.
// Callers hold mu.
func (r *Registrar) saveKV() error {
	if r.kvPath == "" {
		return nil
	}
	b, err := json.Marshal(r.kv)
	if err != nil {
		return fmt.Errorf("embedded registrar: encode KV: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(r.kvPath), KVFile+".*")
	if err != nil {
		return fmt.Errorf("embedded registrar: write KV: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, r.kvPath)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("embedded registrar: write KV %s: %w", r.kvPath, err)
	}
	return nil
}

// Close stops every timer and watch, closes every held lock's Lost and makes
// later calls fail with registrar.ErrClosed. The persisted KV stays.
func (r *Registrar) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	for _, in := range r.byID {
		r.stopTimers(in)
	}
	for _, ls := range r.locks {
		if ls.holder != nil {
			ls.holder.lostOnce.Do(func() { close(ls.holder.lost) })
		}
	}
	close(r.changed) // wake blocked queries; they see closed
	r.changed = make(chan struct{})
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	return nil
}
