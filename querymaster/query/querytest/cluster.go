// Package querytest runs an in-process quilt cluster for tests and
// benchmarks of the query layer, the client library and quiltctl: a leading
// query master (core + query layer) on 127.0.0.1:0 with the SQLite store and
// the embedded registrar served on the same listener (as quilt-qmd does),
// and source managers running the real runtime with the `test` protocol
// driver, each configured by an smd.d file in the cluster's config dir.
//
// The config dir (Cluster.Dir) holds a quilt.cfg whose [query_master]
// listen is the master's address, so the client library and quiltctl find
// the leader exactly as on a real machine.
package querytest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	quiltv1 "github.com/quilt/quilt/proto/quilt/v1"
	"github.com/quilt/quilt/querymaster"
	"github.com/quilt/quilt/querymaster/query"
	"github.com/quilt/quilt/quiltcore/config"
	"github.com/quilt/quilt/quiltcore/registrar/embedded"
	"github.com/quilt/quilt/quiltcore/registrar/remote"
	"github.com/quilt/quilt/quiltcore/store"
	"github.com/quilt/quilt/quiltcore/store/sqlitestore"
	"github.com/quilt/quilt/sourcemanagers/runtime"
	"github.com/quilt/quilt/sourcemanagers/testdriver"
)

// Source describes one test source manager.
type Source struct {
	Name string
	// Servers: name → channels joined at connect (default {"main": {"#test"}}).
	Servers map[string][]string
	Users   int // users per server (default 3)
	// Script, when set, is run on every server after connecting (see
	// testdriver).
	Script string
	// Rate, when > 0, makes every server emit that many messages per
	// second into its channels (testdriver's rate): ingest load.
	Rate int
}

// Options shape a cluster.
type Options struct {
	Sources []Source
	// Patterns: file name → content, written to Dir/patterns.d. Nil copies
	// the shipped etc/quilt/patterns.d when ShippedPatterns names it.
	Patterns        map[string]string
	ShippedPatterns string
	SourceTimeout   time.Duration
	// Store, when set, is used instead of a fresh store: the real SQLite
	// store in a temp dir, or MemStore when env QUILT_TEST_STORE=memory.
	Store  store.Store
	Logger *slog.Logger
}

// Cluster is a running in-process cluster.
type Cluster struct {
	t     testing.TB
	opts  Options
	Dir   string // config dir: quilt.cfg, smd.d/, patterns.d/
	Addr  string // the master's host:port
	Store store.Store

	mu       sync.Mutex
	master   *querymaster.Master
	Query    *query.Server
	srv      *grpc.Server
	stopRun  context.CancelFunc
	runDone  chan struct{}
	managers map[string]*managerRun
	drivers  map[string][]runtime.Driver
}

type managerRun struct {
	m      *runtime.Manager
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs a cluster until the test ends and waits until every source is
// attached with its servers connected.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
		if os.Getenv("QUILT_TEST_LOG") != "" {
			o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
	}
	dir := t.TempDir()
	c := &Cluster{t: t, opts: o, Dir: dir, managers: map[string]*managerRun{}}
	for _, d := range []string{"smd.d", "patterns.d", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	switch {
	case o.Store != nil:
		c.Store = o.Store
	case os.Getenv("QUILT_TEST_STORE") != "memory":
		st, err := sqlitestore.Open(filepath.Join(dir, "data"), sqlitestore.Options{Logger: o.Logger, Synchronous: "normal"})
		if err != nil {
			t.Fatalf("querytest: sqlite store: %v", err)
		}
		c.Store = st
		t.Cleanup(func() { st.Close() })
	default:
		c.Store = NewMemStore()
	}
	c.writePatterns()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Addr = lis.Addr().String()
	cfg := fmt.Sprintf("[registrar]\naddress = embedded\n\n[query_master]\nlisten = %s\nsource_timeout = %s\n\n[mongodb]\ndata_dir = %s\n",
		c.Addr, orDur(o.SourceTimeout, 2*time.Second), filepath.Join(dir, "data"))
	if err := os.WriteFile(filepath.Join(dir, config.FileName), []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}
	c.startMaster(lis)
	t.Cleanup(c.Stop)
	for _, s := range o.Sources {
		c.AddSource(s)
	}
	c.WaitAttached(10*time.Second, c.SourceNames()...)
	return c
}

func orDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (c *Cluster) writePatterns() {
	dst := filepath.Join(c.Dir, "patterns.d")
	if c.opts.Patterns == nil && c.opts.ShippedPatterns != "" {
		files, _ := filepath.Glob(filepath.Join(c.opts.ShippedPatterns, "*"+query.PatternExt))
		if len(files) == 0 {
			c.t.Fatalf("querytest: no *.pattern in %s", c.opts.ShippedPatterns)
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				c.t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), data, 0o640); err != nil {
				c.t.Fatal(err)
			}
		}
	}
	for name, content := range c.opts.Patterns {
		if err := os.WriteFile(filepath.Join(dst, name), []byte(content), 0o640); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *Cluster) startMaster(lis net.Listener) {
	reg, err := embedded.New(embedded.Options{Logger: c.opts.Logger})
	if err != nil {
		c.t.Fatal(err)
	}
	m, err := querymaster.New(querymaster.Options{
		Store: c.Store, Registrar: reg, RegistrarKind: "embedded", Node: "test",
		Advertise: c.Addr, LeaderKey: c.leaderKey(), SourceTimeout: c.opts.SourceTimeout, Logger: c.opts.Logger,
		KnownSources: func() []string { return c.SourceNames() },
	})
	if err != nil {
		c.t.Fatal(err)
	}
	qs, err := query.New(query.Options{Master: m, Store: c.Store, PatternsDir: filepath.Join(c.Dir, "patterns.d"), Logger: c.opts.Logger})
	if err != nil {
		c.t.Fatal(err)
	}
	srv := grpc.NewServer()
	query.Register(srv, qs)
	quiltv1.RegisterRegistrarServer(srv, remote.NewServer(reg))
	go srv.Serve(lis)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx)
		reg.Close()
	}()
	c.mu.Lock()
	c.master, c.Query, c.srv, c.stopRun, c.runDone = m, qs, srv, cancel, done
	c.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for !m.IsLeader() {
		if time.Now().After(deadline) {
			c.t.Fatal("querytest: the master did not lead within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Master returns the current query master.
func (c *Cluster) Master() *querymaster.Master {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.master
}

// StopMaster stops the query master (its streams end; source managers and
// clients start reconnecting).
func (c *Cluster) StopMaster() {
	c.mu.Lock()
	m, qs, srv, stop, done := c.master, c.Query, c.srv, c.stopRun, c.runDone
	c.master, c.srv = nil, nil
	c.mu.Unlock()
	if m == nil {
		return
	}
	m.Shutdown()
	stop()
	<-done
	srv.Stop()
	// History is written beside the answers: let the last records land
	// before the store closes or a new master reads it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := qs.Close(ctx); err != nil {
		c.t.Errorf("querytest: query history still being written after 5s: %v", err)
	}
}

// RestartMaster stops the master and starts a new one on the same address
// over the same store.
func (c *Cluster) RestartMaster() {
	c.StopMaster()
	var lis net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if lis, err = net.Listen("tcp", c.Addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("querytest: relisten on %s: %v", c.Addr, err)
	}
	c.startMaster(lis)
}

// AddSource writes smd.d/NAME.cfg and runs its source manager.
func (c *Cluster) AddSource(s Source) *runtime.Manager {
	if s.Servers == nil {
		s.Servers = map[string][]string{"main": {"#test"}}
	}
	if s.Users == 0 {
		s.Users = 3
	}
	var b strings.Builder
	fmt.Fprintf(&b, "protocol = test\ndescription = querytest source %s\n", s.Name)
	names := make([]string, 0, len(s.Servers))
	for n := range s.Servers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "\n[server %s]\nusers = %d\n", n, s.Users)
		if s.Rate > 0 {
			fmt.Fprintf(&b, "rate = %d\n", s.Rate)
		}
		if len(s.Servers[n]) > 0 {
			fmt.Fprintf(&b, "channels = %s\n", strings.Join(s.Servers[n], ", "))
		}
		if s.Script != "" {
			p := filepath.Join(c.Dir, s.Name+"-"+n+".script")
			if err := os.WriteFile(p, []byte(s.Script), 0o640); err != nil {
				c.t.Fatal(err)
			}
			fmt.Fprintf(&b, "script = %s\n", p)
		}
	}
	path := filepath.Join(c.Dir, "smd.d", s.Name+".cfg")
	if err := os.WriteFile(path, []byte(b.String()), 0o640); err != nil {
		c.t.Fatal(err)
	}
	return c.StartSource(s.Name)
}

// AddSourceFile writes smd.d/NAME.cfg with any protocol and runs it with
// the given drivers (for example irc.Driver{} against a real ngircd).
func (c *Cluster) AddSourceFile(name, content string, drivers ...runtime.Driver) *runtime.Manager {
	path := filepath.Join(c.Dir, "smd.d", name+".cfg")
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	if c.drivers == nil {
		c.drivers = map[string][]runtime.Driver{}
	}
	c.drivers[name] = drivers
	c.mu.Unlock()
	return c.StartSource(name)
}

// StartSource runs the source manager of smd.d/NAME.cfg.
func (c *Cluster) StartSource(name string) *runtime.Manager {
	c.mu.Lock()
	drivers := c.drivers[name]
	c.mu.Unlock()
	if drivers == nil {
		drivers = []runtime.Driver{testdriver.Driver{}}
	}
	cfg, err := config.LoadSourceManager(filepath.Join(c.Dir, "smd.d", name+".cfg"))
	if err != nil {
		c.t.Fatalf("querytest: %v", err)
	}
	m, err := runtime.New(runtime.Options{
		Config: cfg, Drivers: drivers, Target: c.Addr,
		Logger: c.opts.Logger, Node: "node-" + name,
		Link: runtime.LinkOptions{ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond, BatchDelay: time.Millisecond},
	})
	if err != nil {
		c.t.Fatalf("querytest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mr := &managerRun{m: m, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(mr.done); m.Run(ctx) }()
	c.mu.Lock()
	c.managers[name] = mr
	c.mu.Unlock()
	return m
}

// StopSource stops a source manager (it detaches).
func (c *Cluster) StopSource(name string) {
	c.mu.Lock()
	mr := c.managers[name]
	delete(c.managers, name)
	c.mu.Unlock()
	if mr != nil {
		mr.cancel()
		<-mr.done
	}
}

// Manager returns a running source manager, or nil.
func (c *Cluster) Manager(name string) *runtime.Manager {
	c.mu.Lock()
	defer c.mu.Unlock()
	if mr := c.managers[name]; mr != nil {
		return mr.m
	}
	return nil
}

// SourceNames lists the configured sources (smd.d files).
func (c *Cluster) SourceNames() []string {
	files, _ := filepath.Glob(filepath.Join(c.Dir, "smd.d", "*.cfg"))
	var out []string
	for _, f := range files {
		out = append(out, strings.TrimSuffix(filepath.Base(f), ".cfg"))
	}
	return out
}

// WaitAttached waits until the named sources are attached with every
// server connected.
func (c *Cluster) WaitAttached(d time.Duration, names ...string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		m := c.Master()
		ok := m != nil
		if ok {
			attached := map[string]bool{}
			for _, n := range m.Router().Attached() {
				attached[n] = true
			}
			for _, n := range names {
				// The runtime's own view of its servers: the master's copy
				// may lag (status updates sent before Hello are dropped).
				rm := c.Manager(n)
				if !attached[n] || rm == nil {
					ok = false
					break
				}
				for _, sv := range rm.Servers() {
					if sv.Status().GetState() != quiltv1.ServerState_SERVER_STATE_CONNECTED {
						ok = false
					}
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("querytest: sources %v not attached and connected within %s", names, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitEvents waits until the store holds at least n events matching f.
func (c *Cluster) WaitEvents(d time.Duration, f *quiltv1.EventFilter, n int64) {
	c.t.Helper()
	if err := c.WaitEventsErr(d, f, n); err != nil {
		c.t.Fatal(err)
	}
}

// WaitEventsErr is WaitEvents returning the failure (for callers off the
// test goroutine, such as testscript commands).
func (c *Cluster) WaitEventsErr(d time.Duration, f *quiltv1.EventFilter, n int64) error {
	deadline := time.Now().Add(d)
	for {
		got, err := c.Store.CountEvents(context.Background(), f)
		if err == nil && got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("querytest: %d events matching %v stored within %s, want %d (err %v)", got, f, d, n, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Raw sends a testdriver script command (join, msg, quit...) to a server of
// a source, through the master like any client would.
func (c *Cluster) Raw(source, server, cmd string) {
	c.t.Helper()
	if err := c.RawErr(source, server, cmd); err != nil {
		c.t.Fatal(err)
	}
}

// RawErr is Raw returning the failure.
func (c *Cluster) RawErr(source, server, cmd string) error {
	res, err := c.Master().Act(context.Background(), &quiltv1.ActRequest{Action: &quiltv1.Action{
		Source: source, Server: server, Kind: quiltv1.ActionKind_ACTION_KIND_RAW, Text: cmd}, TimeoutSeconds: 5})
	if err != nil || !res.GetOk() {
		return fmt.Errorf("querytest: raw %q on %s/%s: %v %s", cmd, source, server, err, res.GetError())
	}
	return nil
}

// Stop stops the sources, then the master.
func (c *Cluster) Stop() {
	for _, n := range c.SourceNames() {
		c.StopSource(n)
	}
	c.StopMaster()
}

// leaderKey is the [query_master] leader_key of the cluster's quilt.cfg, so
// clients that read it find this master.
func (c *Cluster) leaderKey() string {
	cfg, err := config.Load(c.Dir)
	if err != nil {
		c.t.Fatalf("querytest: %v", err)
	}
	return cfg.QueryMaster.LeaderKey
}

// Events waits until the store holds at least n events matching f, then
// returns every match, oldest first (at most 1000).
func (c *Cluster) Events(d time.Duration, n int64, f *quiltv1.EventFilter) []*quiltv1.Event {
	c.t.Helper()
	c.WaitEvents(d, f, n)
	page, err := c.Store.QueryEvents(context.Background(), store.EventQuery{Filter: f, OldestFirst: true, Limit: 1000})
	if err != nil {
		c.t.Fatalf("querytest: %v", err)
	}
	return page.Events
}

// Act routes a to source/server through the master, as a client's Act
// would, and fails the test when it cannot be routed or gets no result in
// time. A result with ok=false is returned for the caller to judge.
func (c *Cluster) Act(source, server string, a *quiltv1.Action, timeout time.Duration) *quiltv1.ActionResult {
	c.t.Helper()
	a.Source, a.Server = source, server
	res, err := c.Master().Router().Act(context.Background(), a, timeout)
	if err != nil {
		c.t.Fatalf("querytest: act %v on %s/%s: %v", a.Kind, source, server, err)
	}
	return res
}
