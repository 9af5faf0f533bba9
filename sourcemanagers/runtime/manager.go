package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/registrar"
	"github.com/quilt/quilt/quiltcore/transport"
	"google.golang.org/grpc"
)

// Options configure a Manager. Config and Drivers are required; everything
// else has a default.
type Options struct {
	// Config is the parsed smd.d/NAME.cfg.
	Config *config.SourceManager
	// Drivers are the protocols this binary knows; the one whose Protocol()
	// matches Config.Protocol runs the servers.
	Drivers []Driver

	// Registrar finds the leader query master under LeaderKey. Target,
	// when set, is dialed instead (tests: a bufconn target).
	Registrar registrar.Registrar
	LeaderKey string // default "quilt/qmd/leader"
	Target    string
	// DialOptions are passed to grpc.NewClient (credentials, a bufconn
	// dialer). Without any, the link dials with insecure credentials.
	DialOptions []grpc.DialOption
	Link        LinkOptions

	Logger *slog.Logger
	Clock  Clock // default SystemClock
	// Dialer opens stream sessions' connections (default
	// transport.SocketDialer); tests pass the fixture.
	Dialer transport.Dialer
	// HTTP is given to client drivers (default http.DefaultClient).
	HTTP *http.Client

	// Node names this machine in Hello (default os.Hostname()); InstanceID
	// identifies the process (default a fresh ULID).
	Node, InstanceID string

	// WelcomeWait bounds how long a session waits, at start, for the query
	// master's stored cursors (default DefaultWelcomeWait).
	WelcomeWait time.Duration
}

// DefaultWelcomeWait is how long sessions wait for the first Welcome.
const DefaultWelcomeWait = 30 * time.Second

// DefaultMaxInFlight is LinkOptions.MaxInFlight by default: less than the
// query master's per-stream batch queue (16), so its reader never waits for
// the store, and few enough that action results sent on the same stream
// wait behind little event data (with 8 the relay benchmark's blast was
// slower than with 4 or 2: its results queued behind up to 8 full batches),
// yet enough that the store has the next batch when it is done with one.
const DefaultMaxInFlight = 4

// LinkOptions shape the stream to the query master ([source_managers] in
// quilt.cfg).
type LinkOptions struct {
	// BufferEvents bounds unacknowledged events kept for replay; when full,
	// sessions stop reading (default 100000).
	BufferEvents int
	// BatchSize and BatchDelay: an event goes up at once when nothing sent
	// is unacknowledged; else it waits in the open batch until the ack
	// comes, the batch holds BatchSize events or its first event is
	// BatchDelay old (defaults 512, 5ms).
	BatchSize  int
	BatchDelay time.Duration
	// MaxInFlight bounds the batches sent and not yet acknowledged (default
	// DefaultMaxInFlight); more wait in the buffer.
	MaxInFlight int
	// Heartbeat is sent when nothing else was for this long (default 5s;
	// Welcome may ask for another).
	Heartbeat time.Duration
	// ReconnectMin/Max bound the backoff between attempts to attach
	// (defaults 100ms, 10s).
	ReconnectMin, ReconnectMax time.Duration
}

func (o *LinkOptions) defaults() {
	if o.BufferEvents <= 0 {
		o.BufferEvents = 100000
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 512
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.BatchDelay < 0 {
		o.BatchDelay = 0
	} else if o.BatchDelay == 0 {
		o.BatchDelay = 5 * time.Millisecond
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 5 * time.Second
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = 100 * time.Millisecond
	}
	if o.ReconnectMax < o.ReconnectMin {
		o.ReconnectMax = max(10*time.Second, o.ReconnectMin)
	}
}

// Manager is a running source manager: its servers, their sessions, the
// connection cycle and the link to the query master.
type Manager struct {
	name     string
	protocol string
	driver   Driver
	opts     Options
	log      *slog.Logger
	clock    Clock
	dialer   transport.Dialer
	link     sink

	flag chan struct{} // cap 1: run the connection cycle now
	wg   sync.WaitGroup

	mu      sync.Mutex
	cfg     *config.SourceManager
	servers map[string]*Server
	order   []string // config order, for listings
	cursors map[string]map[string]string
	runCtx  context.Context

	// welcomed is closed by the first Welcome: sessions wait for it (up to
	// WelcomeWait) so they start from the cursors the query master stored,
	// not from none.
	welcomed     chan struct{}
	welcomedOnce sync.Once
}

// sink is where the runtime sends what goes up the link; the link
// implements it, unit tests substitute their own.
type sink interface {
	publish(ctx context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error
	status(st *quiltv1.ServerStatus)
}

// New checks opts and builds a Manager; nothing runs until Run.
func New(opts Options) (*Manager, error) {
	if opts.Config == nil {
		return nil, errors.New("runtime: Options.Config is nil")
	}
	var drv Driver
	for _, d := range opts.Drivers {
		if d.Protocol() == string(opts.Config.Protocol) {
			drv = d
		}
	}
	if drv == nil {
		return nil, fmt.Errorf("%s: protocol %q: no driver in this binary", opts.Config.Path, opts.Config.Protocol)
	}
	switch drv.(type) {
	case StreamDriver, ClientDriver:
	default:
		return nil, fmt.Errorf("runtime: driver %q is neither a StreamDriver nor a ClientDriver", drv.Protocol())
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = SystemClock{}
	}
	if opts.Dialer == nil {
		opts.Dialer = transport.SocketDialer{}
	}
	if opts.HTTP == nil {
		opts.HTTP = http.DefaultClient
	}
	if opts.LeaderKey == "" {
		opts.LeaderKey = "quilt/qmd/leader"
	}
	if opts.Node == "" {
		opts.Node, _ = os.Hostname()
	}
	if opts.InstanceID == "" {
		opts.InstanceID = ulid.Make().String()
	}
	opts.Link.defaults()
	m := &Manager{
		name:     opts.Config.Name,
		protocol: string(opts.Config.Protocol),
		driver:   drv,
		opts:     opts,
		log:      opts.Logger.With("source", opts.Config.Name),
		clock:    opts.Clock,
		dialer:   opts.Dialer,
		flag:     make(chan struct{}, 1),
		cfg:      opts.Config,
		servers:  map[string]*Server{},
		cursors:  map[string]map[string]string{},
		welcomed: make(chan struct{}),
	}
	for i := range opts.Config.Servers {
		sc := &opts.Config.Servers[i]
		m.servers[sc.Name] = newServer(m, sc)
		m.order = append(m.order, sc.Name)
	}
	if opts.Registrar != nil || opts.Target != "" {
		m.link = newLink(m)
	}
	return m, nil
}

// Name is the source manager's name (its smd.d file).
func (m *Manager) Name() string { return m.name }

// Run runs the connection cycle and the link until ctx ends, then
// disconnects every server. Events not yet acknowledged by the query
// master are lost with the process; Run logs how many.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.runCtx != nil {
		m.mu.Unlock()
		return errors.New("runtime: Run called twice")
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.runCtx = runCtx
	m.mu.Unlock()

	var linkDone chan struct{}
	linkCtx, stopLink := context.WithCancel(context.WithoutCancel(ctx))
	if l, ok := m.link.(*link); ok {
		linkDone = make(chan struct{})
		go func() { defer close(linkDone); l.run(linkCtx) }()
	}
	m.cycleLoop(ctx)

	// Shutdown: end every session (their DISCONNECTED events go into the
	// buffer), then the link.
	for _, s := range m.Servers() {
		s.mu.Lock()
		if s.conn != nil {
			s.conn.stop(errStopped)
		}
		s.mu.Unlock()
	}
	m.wg.Wait()
	cancel()
	stopLink()
	if linkDone != nil {
		<-linkDone
		if n := m.link.(*link).pending(); n > 0 {
			m.log.Warn("stopping with unacknowledged events; they are lost", "events", n)
		}
	}
	return nil
}

// Servers returns the servers in configuration order.
func (m *Manager) Servers() []*Server {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Server, 0, len(m.order))
	for _, n := range m.order {
		if s := m.servers[n]; s != nil {
			out = append(out, s)
		}
	}
	return out
}

// Server returns the named server, or nil.
func (m *Manager) Server(name string) *Server {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.servers[name]
}

// Pending returns how many events wait for the query master's ack.
func (m *Manager) Pending() int {
	if l, ok := m.link.(*link); ok {
		return l.pending()
	}
	return 0
}

// Reload replaces the smd.d settings (SIGHUP). Added servers are created,
// removed ones disconnected and dropped, changed ones reconnected with the
// new settings; the cycle runs at once. A protocol change needs a restart.
func (m *Manager) Reload(cfg *config.SourceManager) error {
	if cfg.Protocol != m.cfg.Protocol {
		return fmt.Errorf("%s: protocol changed from %q to %q: restart quilt-smd to apply", cfg.Path, m.cfg.Protocol, cfg.Protocol)
	}
	if cfg.Name != m.name {
		return fmt.Errorf("%s: name %q differs from the running %q", cfg.Path, cfg.Name, m.name)
	}
	m.mu.Lock()
	m.cfg = cfg
	seen := map[string]bool{}
	var order []string
	for i := range cfg.Servers {
		sc := &cfg.Servers[i]
		seen[sc.Name] = true
		order = append(order, sc.Name)
		s := m.servers[sc.Name]
		if s == nil {
			m.servers[sc.Name] = newServer(m, sc)
			m.log.Info("reload: server added", "server", sc.Name)
			continue
		}
		s.mu.Lock()
		s.removed = false
		if !sameConnection(s.cfg, sc) {
			s.reconnect = true
			m.log.Info("reload: server settings changed; reconnecting", "server", sc.Name)
		}
		s.cfg = sc
		s.mu.Unlock()
	}
	for n, s := range m.servers {
		if !seen[n] {
			s.mu.Lock()
			s.removed = true
			s.mu.Unlock()
			order = append(order, n) // listed until it is gone
			m.log.Info("reload: server removed", "server", n)
		}
	}
	m.order = order
	m.mu.Unlock()
	m.flagCycle()
	return nil
}

// sameConnection reports whether a and b differ only in what applies
// without reconnecting (enabled, channels, throttle).
func sameConnection(a, b *config.Server) bool {
	x, y := *a, *b
	x.Line, y.Line = 0, 0
	x.Enabled, y.Enabled = false, false
	x.Channels, y.Channels = nil, nil
	x.Throttle, y.Throttle = 0, 0
	x.ThrottleBurst, y.ThrottleBurst = 0, 0
	return reflect.DeepEqual(x, y)
}

func (m *Manager) fileEnabled() bool {
	// cfg is swapped under m.mu by Reload; Enabled is read often, so take
	// the pointer under the lock.
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.Enabled
}

// flagCycle asks the connection cycle to run now.
func (m *Manager) flagCycle() {
	select {
	case m.flag <- struct{}{}:
	default:
	}
}

func (m *Manager) publish(ctx context.Context, evs []*quiltv1.Event, cursors []*quiltv1.Cursor) error {
	if m.link == nil {
		return nil
	}
	return m.link.publish(ctx, evs, cursors)
}

func (m *Manager) statusChanged(s *Server) {
	if m.link != nil {
		m.link.status(s.Status())
	}
}

// statuses lists every server's status, in order.
func (m *Manager) statuses() []*quiltv1.ServerStatus {
	var out []*quiltv1.ServerStatus
	for _, s := range m.Servers() {
		out = append(out, s.Status())
	}
	return out
}

// applyWelcome stores the query master's overrides and cursors.
func (m *Manager) applyWelcome(w *quiltv1.Welcome) {
	want := map[string]*quiltv1.DesiredServer{}
	for _, d := range w.GetDesired() {
		want[d.Server] = d
	}
	m.mu.Lock()
	// What this process published is at least as new as what the store
	// holds (unacknowledged batches are still in the link's buffer), so a
	// later Welcome only fills in cursors this process has not set.
	for _, c := range w.GetCursors() {
		if m.cursors[c.Server] == nil {
			m.cursors[c.Server] = map[string]string{}
		}
		if _, ok := m.cursors[c.Server][c.Name]; !ok {
			m.cursors[c.Server][c.Name] = c.Value
		}
	}
	m.mu.Unlock()
	m.welcomedOnce.Do(func() { close(m.welcomed) })
	for _, s := range m.Servers() {
		s.mu.Lock()
		if d := want[s.name]; d != nil {
			en := d.Enabled
			s.override = &en
			if d.Reconnect {
				s.reconnect = true
			}
		} else {
			s.override = nil
		}
		s.mu.Unlock()
	}
	m.flagCycle()
}

// control carries out an operator's enable/disable/reconnect.
func (m *Manager) control(c *quiltv1.ServerControl) {
	s := m.Server(c.GetServer())
	if s == nil {
		m.log.Warn("server control for an unknown server", "server", c.GetServer(), "op", c.GetOp().String())
		return
	}
	s.mu.Lock()
	switch c.GetOp() {
	case quiltv1.ServerControlOp_SERVER_CONTROL_OP_ENABLE:
		t := true
		s.override = &t
	case quiltv1.ServerControlOp_SERVER_CONTROL_OP_DISABLE:
		f := false
		s.override = &f
	case quiltv1.ServerControlOp_SERVER_CONTROL_OP_RECONNECT:
		s.reconnect = true
	}
	s.mu.Unlock()
	s.log.Info("server control", "op", c.GetOp().String(), "by", c.GetRequestedBy())
	m.flagCycle()
}

// noteCursors remembers cursors as they are published, so a session that
// reconnects within this process resumes where the last one stopped.
func (m *Manager) noteCursors(cursors []*quiltv1.Cursor) {
	if len(cursors) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cursors {
		if m.cursors[c.Server] == nil {
			m.cursors[c.Server] = map[string]string{}
		}
		m.cursors[c.Server][c.Name] = c.Value
	}
}

// awaitWelcome blocks a new session until the query master's first Welcome
// (and with it the stored cursors) has arrived, at most WelcomeWait. Without
// a link there is nothing to wait for.
func (m *Manager) awaitWelcome(ctx context.Context, s *Server) {
	if _, ok := m.link.(*link); !ok {
		return
	}
	select {
	case <-m.welcomed:
		return
	default:
	}
	wait := m.opts.WelcomeWait
	if wait <= 0 {
		wait = DefaultWelcomeWait
	}
	s.log.Info("waiting for the query master's stored cursors before connecting", "max", wait)
	t := m.clock.NewTimer(wait)
	defer t.Stop()
	select {
	case <-m.welcomed:
	case <-t.C():
		s.log.Warn("no query master within the wait: connecting without stored cursors (a protocol that resumes from them starts from now)", "waited", wait)
	case <-ctx.Done():
	}
}

func (m *Manager) cursorsFor(server string) map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]string{}
	for k, v := range m.cursors[server] {
		out[k] = v
	}
	return out
}

// backoff is the wait before connecting after failures in a row.
func backoff(sc *config.Server, failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	lo, hi, f := sc.ReconnectMin, sc.ReconnectMax, sc.ReconnectFactor
	if lo <= 0 {
		lo = time.Second
	}
	if hi < lo {
		hi = lo
	}
	if f < 1 {
		f = 1
	}
	d := float64(lo) * math.Pow(f, float64(failures-1))
	if d > float64(hi) {
		return hi
	}
	return time.Duration(d)
}

// runCtxOr is the context sessions derive from: Run's own, which shutdown
// does not cancel before it has stopped them with errStopped.
func (m *Manager) runCtxOr(ctx context.Context) context.Context {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runCtx != nil {
		return m.runCtx
	}
	return ctx
}
